//! SIGINT/SIGTERM handling. The command-line tool: a thread waits for the
//! signal, removes the ConfigFS groups this process created, and exits (signal
//! handlers cannot safely do that work; a waiting thread can). PID 1 must never
//! exit, so there Ctrl-C only raises the user's interruption (`cancel`), which
//! the running flow notices and returns from with exit code 130. How to resume
//! is said only when a signal cuts a transfer, not when it stops an idle command.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use crate::cancel;

/// What to tell the user when a signal cuts the command now: set while a
/// transfer is under way, None while idle (nothing to resume).
static ADVICE: Mutex<Option<String>> = Mutex::new(None);

/// Sets (or with None clears) the advice printed when a signal cuts the command.
pub(crate) fn set_resume_advice(advice: Option<String>) {
    if let Ok(mut a) = ADVICE.lock() {
        *a = advice;
    }
}

/// A transfer under way: an interrupt until this is dropped says how to resume.
pub(crate) struct Transfer(());

/// Marks a transfer under way with the advice for resuming it.
pub(crate) fn transfer(advice: String) -> Transfer {
    set_resume_advice(Some(advice));
    Transfer(())
}

impl Drop for Transfer {
    fn drop(&mut self) {
        set_resume_advice(None);
    }
}

/// The line printed when `sig` ends the command.
fn interrupted_line(sig: &str, removed: bool, advice: Option<&str>) -> String {
    let mut m = format!("rescue: interrupted by {sig}");
    if removed {
        m.push_str("; stream set-up removed");
    }
    m.push('.');
    if let Some(a) = advice {
        m.push(' ');
        m.push_str(a);
    }
    m
}

/// Flows running that save their progress when interrupted.
static SAVING: AtomicUsize = AtomicUsize::new(0);
/// How long a signal waits for them before the process exits anyway.
const SAVE_WAIT: Duration = Duration::from_secs(60);

/// A flow that saves what it has when interrupted (serve receiving a backup
/// syncs and journals what it verified). While one lives, a signal raises the
/// user's interruption, so `Conn::next_event` reports the stream stopped, and the
/// process exits once it is dropped (at most 60 s later; a second signal
/// exits at once).
pub(crate) struct SaveOnInterrupt(());

pub(crate) fn save_on_interrupt() -> SaveOnInterrupt {
    SAVING.fetch_add(1, Ordering::SeqCst);
    SaveOnInterrupt(())
}

impl Drop for SaveOnInterrupt {
    fn drop(&mut self) {
        SAVING.fetch_sub(1, Ordering::SeqCst);
    }
}

extern "C" fn on_sigint(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    cancel::interrupt();
}

/// PID-1 mode: Ctrl-C on the console (SIGINT), or SIGTERM, cancels the running
/// flow instead of killing the process.
pub fn install_cancel() {
    let act = SigAction::new(
        SigHandler::Handler(on_sigint),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let _ = sigaction(Signal::SIGINT, &act);
        let _ = sigaction(Signal::SIGTERM, &act);
    }
}

/// Blocks the signals in this thread (and every thread spawned later) and
/// starts the thread that handles them. Call first thing in main. `teardown`
/// removes the stream set-up this process made and says whether there was any
/// (passed in, so this module needs nothing of the link's).
pub fn install(teardown: fn() -> bool) {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    if set.thread_block().is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                // Read now: the flow clears it as it returns.
                let advice = ADVICE.lock().ok().and_then(|a| a.clone());
                if SAVING.load(Ordering::SeqCst) > 0 {
                    cancel::interrupt();
                    eprintln!(
                        "rescue: {}: saving what was received before stopping (send it again to stop at once)",
                        sig.as_str()
                    );
                    let again = advice.clone();
                    let _ = std::thread::Builder::new()
                        .name("signals".into())
                        .spawn(move || {
                            if let Ok(sig) = set.wait() {
                                stop(sig.as_str(), again.as_deref(), teardown);
                            }
                        });
                    let t = Instant::now();
                    while SAVING.load(Ordering::SeqCst) > 0 && t.elapsed() < SAVE_WAIT {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                stop(sig.as_str(), advice.as_deref(), teardown);
            }
        });
}

/// Removes the stream set-up, says so, and exits with 130.
fn stop(sig: &str, advice: Option<&str>, teardown: fn() -> bool) -> ! {
    let removed = teardown();
    eprintln!("{}", interrupted_line(sig, removed, advice));
    std::process::exit(i32::from(crate::exit::INTERRUPTED));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_advice_only_while_a_transfer_runs() {
        assert_eq!(
            interrupted_line("SIGTERM", false, None),
            "rescue: interrupted by SIGTERM."
        );
        let t = transfer("Run the same command again to resume.".into());
        let advice = ADVICE.lock().unwrap().clone();
        assert_eq!(
            interrupted_line("SIGINT", true, advice.as_deref()),
            "rescue: interrupted by SIGINT; stream set-up removed. Run the same command again to resume."
        );
        drop(t);
        assert_eq!(*ADVICE.lock().unwrap(), None);
    }
}
