//! The one way to stop: the user's interruption (set by the signal handlers,
//! polled by every loop that waits: the link set-up, the stream opens and
//! accepts, the connection) and stop tokens for the threads of one job.
//! Stopping is a type, not a message: an `Interrupted` error (exit 130) and a
//! `Stopped` read. Depends on nothing else in rescue, so every module may use it.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Set once the user asked the running flow to stop (Ctrl-C, SIGINT/SIGTERM).
static USER: AtomicBool = AtomicBool::new(false);

/// Records that the user asked to stop. Only an atomic store, so a signal
/// handler may call it.
pub(crate) fn interrupt() {
    USER.store(true, Ordering::SeqCst);
}

/// Whether the user asked to stop.
pub(crate) fn interrupted() -> bool {
    USER.load(Ordering::SeqCst)
}

/// Clears the request before the next flow starts (PID-1 mode, where a signal
/// ends the flow, never the process).
pub(crate) fn reset() {
    USER.store(false, Ordering::SeqCst);
}

/// Fails with `Interrupted` (saying what was being done) once the user asked
/// to stop: the check in every waiting loop.
pub(crate) fn check(doing: &str) -> Result<(), Interrupted> {
    if interrupted() {
        return Err(Interrupted::new(doing));
    }
    Ok(())
}

/// A stop for the threads of one job (a connection's reader and keepalive,
/// `rescue cat`'s pump), set by its owner, and with `interruptible` by the user
/// too. A connection's is not: its owner hears of the interruption and ends the
/// job, and some of its threads must outlive it (the keepalives while serve
/// saves what it received).
#[derive(Debug, Clone, Default)]
pub(crate) struct Token {
    own: Arc<Flag>,
    user: bool,
}

/// A token's own stop, with a way to wake a thread that sleeps on it.
#[derive(Debug, Default)]
struct Flag {
    set: AtomicBool,
    lock: Mutex<()>,
    woken: Condvar,
}

impl Token {
    pub fn new() -> Token {
        Token::default()
    }

    /// A token that the user's interruption stops as well.
    pub(crate) fn interruptible() -> Token {
        Token {
            own: Arc::default(),
            user: true,
        }
    }

    pub(crate) fn stop(&self) {
        let _g = self.own.lock.lock();
        self.own.set.store(true, Ordering::SeqCst);
        self.own.woken.notify_all();
    }

    pub(crate) fn stopped(&self) -> bool {
        self.own.set.load(Ordering::SeqCst) || (self.user && interrupted())
    }

    /// Sleeps for `d`, or until the token is stopped by its owner (the
    /// user's interruption is seen at the end of `d`: a signal handler may
    /// not wake anyone). Returns whether it is stopped. A thread that sleeps
    /// this way ends as soon as it is told to, so whoever joins it (a
    /// connection's shutdown) does not wait out the sleep.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut g = self.own.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.own.set.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = match self.own.woken.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        self.stopped()
    }
}

/// The user stopped the command: exit code 130 (`exit::code_of`). The message
/// says what was being done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interrupted(String);

impl Interrupted {
    pub fn new(message: impl Into<String>) -> Interrupted {
        Interrupted(message.into())
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Whether an error chain is the user's interruption.
pub(crate) fn is_interrupted(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Interrupted>())
}

/// What a reader returns once its token is stopped: the end of a read that
/// was asked for, not a failure of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopped;

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stopped")
    }
}

impl std::error::Error for Stopped {}

impl From<Stopped> for io::Error {
    fn from(s: Stopped) -> io::Error {
        io::Error::other(s)
    }
}

/// Whether a read failed only because its token was stopped.
pub(crate) fn is_stopped(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Stopped>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_is_told_by_type_not_by_message() {
        let stopped: io::Error = Stopped.into();
        assert!(is_stopped(&stopped));
        // The same words from elsewhere are a failure, not a stop.
        assert!(!is_stopped(&io::Error::other("stopped")));
        let e =
            anyhow::Error::new(Interrupted::new("interrupted while waiting")).context("serving");
        assert!(is_interrupted(&e));
        assert_eq!(format!("{e:#}"), "serving: interrupted while waiting");
        assert!(!is_interrupted(&anyhow::anyhow!("interrupted")));
    }

    #[test]
    fn a_stop_wakes_a_sleeping_thread_at_once() {
        let t = Token::new();
        let t2 = t.clone();
        let started = Instant::now();
        let h = std::thread::spawn(move || t2.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        t.stop();
        assert!(h.join().unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the sleep was not cut short"
        );
        // Not stopped: the whole sleep, and false.
        let started = Instant::now();
        assert!(!Token::new().sleep(Duration::from_millis(30)));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_token_stops_its_own_threads_only() {
        let a = Token::new();
        let b = Token::new();
        let a2 = a.clone();
        a.stop();
        assert!(a2.stopped());
        assert!(!b.stopped());
    }
}
