//! The library example `examples/ci_runner.rs` runs for real: five jobs, two sandboxes at
//! a time from one process, all started from one template built first, with their
//! outputs and exit codes collected; one job execs into a running service container
//! and then kills the service; then the same jobs with sandboxes started ahead by a
//! `SandboxPool`, and nothing left running after either.
mod common;

use std::path::PathBuf;

use common::run_sandbox_script;

/// The example binary cargo built next to husk (`cargo test` builds examples).
fn example() -> PathBuf {
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    let example = husk.with_file_name("examples").join("ci_runner");
    assert!(
        example.is_file(),
        "{} not built: run `cargo build --release --examples`",
        example.display()
    );
    example
}

const RUN_EXAMPLE: &str = r#"
tar xf store.tar
export HUSK_DATA_DIR=$PWD/store
mkdir consoles
./ci_runner --parallel 2 --kernel vmlinux --job-timeout 300 --console-dir consoles
echo "example-status=$?"
for f in consoles/*; do echo "== $f"; tail -n 20 "$f"; done
# Again with whole sandboxes started ahead by a SandboxPool.
./ci_runner --parallel 2 --kernel vmlinux --job-timeout 300 --sandbox-pool > pooled.out
echo "pooled-status=$?"
sed 's/^/pooled: /' pooled.out
echo "pooled-jobs=$(grep -o 'pooled_jobs=[0-9]*' pooled.out | cut -d= -f2)"
echo "pooled-failed=$(grep -o 'jobs=5 failed=[0-9]*' pooled.out | cut -d= -f3)"
i=0; while [ "$(husk_processes)" -gt 0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
echo "husk-processes-left=$(husk_processes)"
husk_processes -v
"#;

#[test]
fn ci_runner_example_runs_jobs_two_at_a_time_and_collects_results() {
    let example = example();
    let out = run_sandbox_script(RUN_EXAMPLE, &[(example.as_path(), "ci_runner")]);
    assert_eq!(out.value("example-status"), Some("0"), "{out}");
    assert!(out.stdout.contains("job=build exit=0"), "{out}");
    assert!(out.stdout.contains("job=lint exit=3"), "{out}");
    assert!(out.stdout.contains("stdout=100"), "{out}");
    assert!(out.stdout.contains("stderr=style error"), "{out}");
    assert!(out.stdout.contains("stdout=env on husk-"), "{out}");
    assert!(
        out.stdout.contains("job=service exit=5 expected=5"),
        "{out}"
    );
    assert!(
        out.stdout.contains("stdout=exec sees up as service"),
        "{out}"
    );
    assert!(out.stdout.contains("jobs=5 failed=0 parallel=2"), "{out}");
    assert!(
        out.stdout.contains("template=1cpu-256mib made_in_ms="),
        "{out}"
    );
    // Started sandboxes from a SandboxPool: the first batch takes the two it filled
    // before the jobs came; every job's result is as without it.
    assert_eq!(out.value("pooled-status"), Some("0"), "{out}");
    assert_eq!(out.value("pooled-failed"), Some("0"), "{out}");
    let pooled: u32 = out
        .value("pooled-jobs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(pooled >= 2, "{pooled} jobs took a pooled sandbox\n{out}");
    assert!(
        out.stdout.contains("pooled: job=service exit=5 expected=5"),
        "{out}"
    );
    assert_eq!(out.value("husk-processes-left"), Some("0"), "{out}");
}
