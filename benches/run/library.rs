//! The library's path, as a CI runner uses it: `Template::start` with the sandbox's VMM
//! spawned for it against one taken from a `VmmPool` (pre-spawned, listening), and a
//! whole sandbox taken from a `SandboxPool` (started ahead; the replacement started
//! after the job, or beside it as soon as one is taken); each round a sandbox
//! started (or taken), `true` run in it, the sandbox stopped; timed in this process
//! from the call to the exit code, and to the end of the stop.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk::sandbox::{Refill, SandboxPool, Template, VmmPool};
use husk::{RunSpec, Sandbox, SandboxImage, Stdio};

use crate::common::crun::ms;
use crate::stages::spread;

/// One sandbox: start, `true`, stop; (ms to started, ms to the exit code).
fn once(template: &Template, builder: husk::SandboxBuilder) -> (f64, f64) {
    let began = Instant::now();
    let sandbox = template
        .start(builder.config().clone())
        .expect("start a sandbox from the template");
    run_true(sandbox, began)
}

/// `true` in `sandbox`, then its stop; (ms to started, ms to the exit code) from `began`.
fn run_true(sandbox: Sandbox, began: Instant) -> (f64, f64) {
    let started = ms(began.elapsed());
    let spec = RunSpec {
        args: vec!["true".into()],
        ..RunSpec::default()
    };
    let (stdio, _, _) = Stdio::capture();
    let status = sandbox.run(&spec, stdio).expect("run true");
    let done = ms(began.elapsed());
    assert_eq!(status.code, Some(0), "true failed: {status:?}");
    drop(sandbox.stop());
    (started, done)
}

/// `rounds` of each, alternating, after one warm-up of each.
pub fn pool_rounds(work: &Path, rounds: usize) {
    std::env::set_var("HUSK_BIN", work.join("husk"));
    let store = husk::image::ImageStore::open(None).expect("open the bench's store");
    let image = SandboxImage::from_store(&store.resolve("busybox").expect("the busybox image"));
    let builder =
        || Sandbox::builder(image.clone(), work.join("vmlinux")).agent(work.join("husk-agent"));
    let template = Template::for_config(builder().config()).expect("the template");
    let pool = Arc::new(VmmPool::new(1, builder().config()).expect("a VMM pool"));
    let after_end = SandboxPool::new(1, builder().config()).expect("a sandbox pool");
    let on_take =
        SandboxPool::with_refill(1, builder().config(), Refill::OnTake).expect("a sandbox pool");
    let pooled = || builder().pool(pool.clone());
    let mut spawned = Vec::new();
    let (mut taken, mut started, mut beside) = (Vec::new(), Vec::new(), Vec::new());
    once(&template, builder());
    once(&template, pooled());
    // Steady state of a runner between jobs: every pool has refilled.
    let settled = || {
        assert!(
            pool.wait_ready(1, Duration::from_secs(30)),
            "the VMM pool refills"
        );
        for sandboxes in [&after_end, &on_take] {
            assert!(
                sandboxes.wait_ready(1, Duration::from_secs(60)),
                "the sandbox pool refills"
            );
        }
    };
    let from = |sandboxes: &SandboxPool| {
        let began = Instant::now();
        let sandbox = sandboxes.take().expect("a started sandbox waits");
        run_true(sandbox, began)
    };
    for _ in 0..rounds {
        settled();
        spawned.push(once(&template, builder()));
        settled();
        taken.push(once(&template, pooled()));
        settled();
        started.push(from(&after_end));
        settled();
        beside.push(from(&on_take));
    }
    let column = |v: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        spread(&v.iter().map(pick).collect::<Vec<_>>())
    };
    println!();
    println!("library, Template::start + run `true` + stop, {rounds} rounds (ms):");
    let rows = [
        ("VMM spawned per sandbox: started", &spawned),
        ("VMM from a pool of 1:    started", &taken),
        (
            "sandbox from a SandboxPool of 1, refilled after the job: taken",
            &started,
        ),
        (
            "the same, refilled as soon as taken (beside the job): taken",
            &beside,
        ),
    ];
    for (label, samples) in rows {
        println!(
            "  {label} {}, exit code {}",
            column(samples, |s| s.0),
            column(samples, |s| s.1)
        );
    }
}
