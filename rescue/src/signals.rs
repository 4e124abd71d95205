//! SIGINT/SIGTERM handling for the command-line tool: a thread waits for the
//! signal, removes the ConfigFS groups this process created, and exits. (Signal
//! handlers cannot safely do that work; a waiting thread can.)

use nix::sys::signal::{SigSet, Signal};

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
