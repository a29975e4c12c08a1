//! What the kernel build shows on stderr: one line per stage (an indicatif spinner on a
//! terminal, plain lines otherwise), a compile counter during `make`, and notes such as
//! the log path. Notes are printed even when progress is off; stages are not.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Step;

/// How often a spinner redraws on its own, so the elapsed time moves during long tools.
const TICK: Duration = Duration::from_millis(200);

/// Number of stages shown as `[n/STAGES]`.
const STAGES: usize = 8;

/// How the stages are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Plain,
    Bars,
}

/// Progress output of one build.
#[derive(Debug)]
pub(super) struct Progress {
    mode: Mode,
    stage: usize,
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    pub(super) fn new(enabled: bool) -> Self {
        let mode = match (enabled, std::io::stderr().is_terminal()) {
            (false, _) => Mode::Off,
            (true, false) => Mode::Plain,
            (true, true) => Mode::Bars,
        };
        Progress {
            mode,
            stage: 0,
            bar: None,
            started: Instant::now(),
        }
    }

    /// Print a line on stderr, above the current bar if there is one.
    pub(super) fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Begin a stage.
    pub(super) fn start(&mut self, step: Step) {
        self.stage += 1;
        self.started = Instant::now();
        let prefix = format!("[{}/{STAGES}] {step}", self.stage);
        match self.mode {
            Mode::Off => {}
            Mode::Plain => eprintln!("{prefix}"),
            Mode::Bars => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                    .with_style(spinner_style())
                    .with_prefix(prefix);
                bar.enable_steady_tick(TICK);
                self.bar = Some(bar);
            }
        }
    }

    /// Turn the current stage into a compile counter; with `expected` objects known (from
    /// an earlier cold build) it is drawn as a bar.
    pub(super) fn count_objects(&self, expected: Option<u64>) {
        if let Some(bar) = &self.bar {
            match expected {
                Some(total) => {
                    bar.set_length(total);
                    bar.set_style(bar_style());
                }
                None => bar.set_style(counter_style()),
            }
        }
    }

    /// One more object compiled.
    pub(super) fn object_done(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            // An estimate is not a promise: grow the bar instead of stopping at 100%.
            if bar.length().is_some_and(|len| bar.position() > len) {
                bar.set_length(bar.position());
            }
        }
    }

    /// End the current stage.
    pub(super) fn finish(&mut self, ok: bool) {
        let verdict = if ok { "done" } else { "FAILED" };
        let elapsed = format!("{:.1}s", self.started.elapsed().as_secs_f64());
        match (self.mode, self.bar.take()) {
            (Mode::Bars, Some(bar)) => {
                bar.set_style(finished_style());
                bar.finish_with_message(format!("{verdict} in {elapsed}"));
            }
            (Mode::Plain, _) => eprintln!("    {verdict} in {elapsed}"),
            _ => {}
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
        .expect("static template is valid")
}

fn counter_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix}: objects compiled: {pos} [{elapsed}]")
        .expect("static template is valid")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/~{len} objects [{elapsed}]")
        .expect("static template is valid")
        .progress_chars("=> ")
}

fn finished_style() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix}: {msg}").expect("static template is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn styles_are_valid_templates() {
        let _ = (
            spinner_style(),
            counter_style(),
            bar_style(),
            finished_style(),
        );
    }

    #[test]
    fn disabled_progress_draws_no_bar() {
        let mut progress = Progress::new(false);
        progress.start(Step::Packages);
        assert!(progress.bar.is_none());
        progress.finish(true);
    }
}
