//! The library example `examples/ci_runner.rs` runs for real: five jobs, two sandboxes at
//! a time from one process, all started from one template built first, with their
//! outputs and exit codes collected; one job execs into a running service container
//! and then kills the service.
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
}
