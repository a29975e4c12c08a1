# shellcheck shell=bash
# Helpers shared by husk's bash scripts: messages, the cache folder, apt installs and a
# tiny newc (cpio) writer for device nodes, so initramfs images can be built without root.

# Prints "PROG: message" on stderr.
note() { printf '%s: %s\n' "${PROG:-husk}" "$*" >&2; }

# Prints "PROG: error: message" on stderr and exits with status 2 (or $2... see die_with).
die() { printf '%s: error: %s\n' "${PROG:-husk}" "$*" >&2; exit 2; }

# The cache root; every slow artefact of the scripts lives below it.
husk_cache_dir() {
    printf '%s\n' "${HUSK_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-$(cd ~ && pwd)}/.cache}/husk}"
}

# apt_install PKG...: installs the Debian packages that are not installed yet, with one
# `apt-get update` and a retry if the first try fails. Fast when all are present.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
            missing+=("$pkg")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || die "packages ${missing[*]} are missing and installing them needs root"
    note "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        apt-get update >&2 || die "apt-get update failed"
        apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    fi
}

# ensure_virtiofsd: makes sure husk finds a virtiofsd (`husk run -v`), looking where
# husk looks ($HUSK_VIRTIOFSD, the cache's tools folder, /usr/libexec, PATH); when there
# is none, builds the crates.io one into <cache>/tools/bin (once, a few minutes).
ensure_virtiofsd() {
    local root
    root=$(husk_cache_dir)/tools
    [[ -n ${HUSK_VIRTIOFSD:-} && -x $HUSK_VIRTIOFSD ]] && return 0
    [[ -x $root/bin/virtiofsd || -x /usr/libexec/virtiofsd ]] && return 0
    command -v virtiofsd >/dev/null && return 0
    apt_install libseccomp-dev libcap-ng-dev
    note "building virtiofsd into $root (once)"
    cargo install --locked virtiofsd --root "$root" >&2 || die "cargo install virtiofsd failed"
}

# backports_apt CMD ARGS...: runs apt-get or apt-cache CMD on Debian's backports of this
# release only, through a private sources list and package lists in the cache, so the
# system's apt setup is left as it is. The KVM test host's kernel comes from there (see
# scripts/README.md, "Where the test host differs from hardware KVM").
backports_apt() {
    local dir codename
    dir=$(husk_cache_dir)/testhost/apt
    codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-bookworm}")
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/sources.list.d"
    printf 'deb http://deb.debian.org/debian %s-backports main\n' "$codename" >"$dir/sources.list"
    "$1" -o Dir::Etc::SourceList="$dir/sources.list" -o Dir::Etc::SourceParts="$dir/sources.list.d" \
        -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache" \
        -o APT::Sandbox::User=root "${@:2}"
}

# apt_install_backports PKG...: installs PKG from Debian's backports of this release,
# adding the backports to the system's apt sources (in
# /etc/apt/sources.list.d/husk-backports.list) if they are not there. Backports have a
# low priority, so nothing else moves to them.
apt_install_backports() {
    local codename list=/etc/apt/sources.list.d/husk-backports.list
    codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-bookworm}")
    [[ $(id -u) -eq 0 ]] || die "installing $* from ${codename}-backports needs root"
    if ! grep -rqs "^[^#]*${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        note "adding ${codename}-backports to apt's sources ($list)"
        printf 'deb http://deb.debian.org/debian %s-backports main\n' "$codename" >"$list"
    fi
    note "installing $* from ${codename}-backports"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2 || die "apt-get update failed"
    apt-get install -y --no-install-recommends -t "${codename}-backports" "$@" >&2 \
        || die "apt-get install -t ${codename}-backports $* failed"
}

# testhost_kernel_deb KPKG DIR: downloads the test host's kernel package KPKG (from the
# backports, see backports_apt) into DIR.
testhost_kernel_deb() {
    (cd "$2" && backports_apt apt-get download "$1" >&2) || die "apt-get download $1 (backports) failed"
}

# newc_node NAME MODE MAJOR MINOR: writes one newc cpio entry for a device node (MODE in
# octal with the file type bits, e.g. 020600 for a character device). Used to put
# /dev/console into an initramfs without mknod (and so without root).
newc_node() {
    local name=$1 mode=$2 major=$3 minor=$4 namesize hdr pad
    namesize=$(( ${#name} + 1 ))
    hdr=$(printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        0 $((8#$mode)) 0 0 1 0 0 0 0 "$major" "$minor" "$namesize" 0)
    printf '%s%s\0' "$hdr" "$name"
    # The header (110 bytes) plus the name and its NUL are padded to a multiple of 4.
    pad=$(( (4 - (110 + namesize) % 4) % 4 ))
    head -c "$pad" /dev/zero
}

# newc_trailer: writes the end-of-archive entry.
newc_trailer() {
    newc_node 'TRAILER!!!' 0 0 0
}

# cpio_dir DIR: writes DIR's tree as an uncompressed newc archive owned by root, with a
# /dev/console node appended (the kernel opens it for init's stdio before /init runs).
cpio_dir() {
    local dir=$1
    ( cd "$dir" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet )
    newc_node dev/console 020600 5 1
    newc_trailer
}
