//! The stop sequence against fake containers that obey SIGTERM, ignore it, or outlive
//! even SIGKILL.

use std::sync::Mutex;

use super::*;

/// How fake containers answer each signal.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// End on SIGTERM.
    Obedient,
    /// End only on SIGKILL.
    IgnoresTerm,
    /// Never end (a teardown that hangs).
    Stuck,
}

/// Fake containers that record the signals they got, in order.
struct Fake {
    behaviour: Behaviour,
    running: Mutex<usize>,
    signals: Mutex<Vec<&'static str>>,
}

impl Fake {
    fn new(behaviour: Behaviour, running: usize) -> Self {
        Self {
            behaviour,
            running: Mutex::new(running),
            signals: Mutex::default(),
        }
    }

    fn got(&self, signal: &'static str, ends: bool) {
        self.signals.lock().expect("signals").push(signal);
        if ends {
            *self.running.lock().expect("running") = 0;
        }
    }

    fn signals(&self) -> Vec<&'static str> {
        self.signals.lock().expect("signals").clone()
    }
}

impl Containers for Fake {
    fn terminate(&self) {
        self.got("TERM", matches!(self.behaviour, Behaviour::Obedient));
    }

    fn kill(&self) {
        self.got("KILL", !matches!(self.behaviour, Behaviour::Stuck));
    }

    fn count(&self) -> usize {
        *self.running.lock().expect("running")
    }
}

const SHORT: Timeouts = Timeouts {
    grace: Some(Duration::from_millis(200)),
    kill_wait: Duration::from_millis(100),
};

#[test]
fn containers_that_obey_sigterm_end_before_the_grace_and_none_is_killed() {
    let fake = Fake::new(Behaviour::Obedient, 2);
    let long = Timeouts {
        grace: Some(Duration::from_secs(30)),
        ..SHORT
    };
    let started = Instant::now();
    let stopped = stop_containers(&fake, long);
    assert!(started.elapsed() < Duration::from_secs(5), "{stopped:?}");
    assert_eq!(stopped, Stopped { killed: 0, left: 0 });
    // The final SIGKILL also discards a container made ahead of its Run.
    assert_eq!(fake.signals(), ["TERM", "KILL"]);
}

#[test]
fn containers_that_ignore_sigterm_are_killed_once_the_grace_is_over() {
    let fake = Fake::new(Behaviour::IgnoresTerm, 2);
    let started = Instant::now();
    let stopped = stop_containers(&fake, SHORT);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{stopped:?}"
    );
    assert_eq!(stopped, Stopped { killed: 2, left: 0 });
    assert_eq!(fake.signals(), ["TERM", "KILL"]);
}

#[test]
fn a_stop_without_grace_kills_at_once_and_sends_no_sigterm() {
    let fake = Fake::new(Behaviour::IgnoresTerm, 1);
    let started = Instant::now();
    let stopped = stop_containers(&fake, Timeouts::SHUTDOWN);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{stopped:?}"
    );
    assert_eq!(stopped, Stopped { killed: 1, left: 0 });
    assert_eq!(fake.signals(), ["KILL"]);
}

#[test]
fn containers_that_never_end_hold_the_stop_only_for_the_grace_and_kill_wait() {
    let fake = Fake::new(Behaviour::Stuck, 3);
    let started = Instant::now();
    let stopped = stop_containers(&fake, SHORT);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(stopped, Stopped { killed: 3, left: 3 });
}

#[test]
fn ctrl_alt_del_gives_a_grace_of_a_few_seconds_and_shutdown_none() {
    assert_eq!(Timeouts::CTRL_ALT_DEL.grace, Some(CAD_GRACE));
    assert!(CAD_GRACE <= Duration::from_secs(5));
    assert_eq!(Timeouts::SHUTDOWN.grace, None);
}
