//! SIGINT/SIGTERM handling. The command-line tool: a thread waits for the
//! signal, removes the ConfigFS groups this process created, and exits (signal
//! handlers cannot safely do that work; a waiting thread can). PID 1 must never
//! exit, so there Ctrl-C only raises a flag that the running flow notices and
//! returns from with exit code 130.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static CANCEL: AtomicBool = AtomicBool::new(false);

/// Whether the user asked to stop (PID-1 mode).
pub fn cancelled() -> bool {
    CANCEL.load(Ordering::SeqCst)
}

/// Clears the flag before the next flow starts (PID-1 mode).
pub fn reset() {
    CANCEL.store(false, Ordering::SeqCst);
}

extern "C" fn on_sigint(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    CANCEL.store(true, Ordering::SeqCst);
}

/// PID-1 mode: Ctrl-C on the console cancels the running flow instead of
/// killing the process.
pub fn install_cancel() {
    let act = SigAction::new(
        SigHandler::Handler(on_sigint),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let _ = sigaction(Signal::SIGINT, &act);
    }
}

/// Blocks the signals in this thread (and every thread spawned later) and
/// starts the thread that handles them. Call first thing in main.
pub fn install() {
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
                crate::fabric::link::teardown_all();
                eprintln!("rescue: interrupted by {sig}; stream set-up removed. Run the same command again to resume.");
                std::process::exit(i32::from(crate::exit::INTERRUPTED));
            }
        });
}
