#!/bin/sh
# A CI job with husk, as the README shows it: pull the build image, put the checkout in
# a sandbox, let the build fetch what it needs from an HTTP server through NAT, build,
# and copy the artifacts out. The sandbox (a micro-VM) is removed however the job ends.
#
#   examples/ci-job.sh CHECKOUT IMAGE DEPS_URL OUT_DIR
#
# CHECKOUT holds ./build.sh, which runs in the sandbox in /src with DEPS_URL in its
# environment and leaves its artifacts in /src/out. IMAGE is pulled when the store lacks
# it (`busybox` is built from Debian's busybox-static). HUSK_RUN_OPTS adds options to
# `husk run` (e.g. --dns, --allow, --kernel).
set -eu
checkout=${1:?usage: ci-job.sh CHECKOUT IMAGE DEPS_URL OUT_DIR}
image=${2:?image}
deps_url=${3:?deps url}
out=${4:?out dir}
job=ci-job-$$

# shellcheck disable=SC2086 # HUSK_RUN_OPTS are words
husk run -d --name "$job" --net nat --disk 1024 ${HUSK_RUN_OPTS:-} "$image" -- sleep 3600 > /dev/null
trap 'husk rm -f "$job" > /dev/null 2>&1' EXIT
# The checkout goes in as a copy (its contents become /src).
husk cp "$checkout/." "$job:/src"
husk exec -e DEPS_URL="$deps_url" -w /src "$job" sh ./build.sh
mkdir -p "$out"
husk cp "$job:/src/out/." "$out"
echo "artifacts in $out"
