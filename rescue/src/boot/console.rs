//! The console for PID 1: stdin/stdout/stderr on the kernel's active console
//! device, made our controlling terminal so the terminal driver delivers Ctrl-C
//! (SIGINT) to us, in cooked mode with echo so line-based menus work on serial
//! and VGA consoles alike.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{Context, Result};
use nix::sys::termios::{self, InputFlags, LocalFlags, OutputFlags, SetArg};

use crate::root::Root;

/// The device behind /dev/console: the last entry of
/// /sys/class/tty/console/active (the one /dev/console writes to). `tty0` means
/// "the current virtual terminal", which cannot be a controlling terminal for
/// everybody; use tty1 as getty would.
pub(crate) fn console_device(root: &Root) -> Option<String> {
    let active = root.read_attr("/sys/class/tty/console/active")?;
    let last = active.split_whitespace().last()?.to_string();
    Some(if last == "tty0" { "tty1".into() } else { last })
}

/// Whether the console is a serial line (plain text only, no screen control).
pub(crate) fn is_serial(dev: &str) -> bool {
    [
        "ttyS", "ttyAMA", "ttyUSB", "ttyACM", "hvc", "ttyMSM", "ttymxc",
    ]
    .iter()
    .any(|p| dev.starts_with(p))
}

/// Makes `fd` our controlling terminal; we must be a session leader without one.
fn set_controlling_tty(fd: &OwnedFd) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument (1 = steal from another session) and
    // touches no memory of ours; the descriptor is valid for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 1) };
    nix::errno::Errno::result(r).context("TIOCSCTTY")?;
    Ok(())
}

/// Sets up stdin/stdout/stderr for PID 1. Returns the device used.
pub(crate) fn setup(root: &Root) -> Result<PathBuf> {
    // A new session so the terminal can become ours (fails harmlessly if we lead one).
    let _ = nix::unistd::setsid();
    let candidates: Vec<PathBuf> = console_device(root)
        .map(|d| root.path(format!("/dev/{d}")))
        .into_iter()
        .chain(std::iter::once(root.path("/dev/console")))
        .collect();
    let mut last_err = None;
    for dev in candidates {
        let file = match OpenOptions::new().read(true).write(true).open(&dev) {
            Ok(f) => f,
            Err(e) => {
                last_err = Some(anyhow::Error::from(e).context(format!("open {}", dev.display())));
                continue;
            }
        };
        let fd: OwnedFd = file.into();
        // Best effort: /dev/console itself may refuse to become a controlling tty.
        let _ = set_controlling_tty(&fd);
        let _ = nix::unistd::tcsetpgrp(&fd, nix::unistd::getpgrp());
        if let Ok(mut t) = termios::tcgetattr(&fd) {
            t.input_flags |= InputFlags::ICRNL;
            t.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
            t.local_flags |=
                LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ECHOE | LocalFlags::ISIG;
            let _ = termios::tcsetattr(&fd, SetArg::TCSANOW, &t);
        }
        nix::unistd::dup2_stdin(&fd).context("dup2 stdin")?;
        nix::unistd::dup2_stdout(&fd).context("dup2 stdout")?;
        nix::unistd::dup2_stderr(&fd).context("dup2 stderr")?;
        return Ok(dev);
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no console device")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_primary_console() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("sys/class/tty/console");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("active"), "tty0 ttyS0\n").expect("w");
        let r = Root::new(t.path());
        assert_eq!(console_device(&r).as_deref(), Some("ttyS0"));
        std::fs::write(d.join("active"), "ttyS0 tty0\n").expect("w");
        assert_eq!(console_device(&r).as_deref(), Some("tty1"));
        assert!(is_serial("ttyS0") && !is_serial("tty1"));
    }
}
