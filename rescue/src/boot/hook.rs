//! `rescue init --dracut`: the boot-time flow run from the dracut module's
//! pre-mount hook, as a normal process, not PID 1. The module's shell only calls
//! this on the console; `rd.usb4rescue=MODE` and `rd.usb4rescue.*` are read here
//! (boot/cmdline.rs) like `rescue.*` in PID-1 mode. It loads ConfigFS and the
//! USB4STREAM stack (udev has already loaded the hardware's drivers, honouring
//! modprobe.d), mounts ConfigFS, sets a configured hostname, runs the mode (serve
//! stops after one session and unmounts its store), powers off or reboots if
//! asked, and otherwise returns the mode's exit code so the boot goes on.
//!
//! Console lines for people and tests: `usb4rescue: MODE started`,
//! `usb4rescue: MODE finished rc=N`, `usb4rescue: powering off`, `usb4rescue:
//! rebooting`, and one saying why nothing ran.

use std::io::{BufRead, Write};
use std::time::Duration;

use crate::boot::cmdline::{Config, Dracut, Mode};
use crate::boot::menu::{Backend, Menu};
use crate::boot::modload::{DryRun, KernelSys, ModuleSys};
use crate::boot::{Boot, DISK_SETTLE, Prepared, console, machine, prepare_as};
use crate::exit;
use crate::root::Root;

/// Whether the hook runs rescue at all, and what it says when it does not.
/// `Err` carries the exit code and the line to print.
pub fn wanted(config: &Config) -> Result<(), (u8, String)> {
    match config.dracut {
        Dracut::On => Ok(()),
        Dracut::Off => Err((exit::OK, String::new())),
        Dracut::Absent => Err((
            exit::OK,
            "usb4rescue: no rd.usb4rescue on the kernel command line: not running rescue".into(),
        )),
        Dracut::Unknown => Err((
            exit::USAGE,
            "usb4rescue: unknown rd.usb4rescue mode (backup, serve, restore or menu): \
             not running rescue"
                .into(),
        )),
    }
}

/// Boot preparation for the hook: the configuration, a configured hostname, the
/// USB4STREAM stack and ConfigFS (only on the real root), and the disks present.
pub fn prepare<S: ModuleSys>(
    root: &Root,
    sys: S,
    out: &mut dyn Write,
    disk_settle: Duration,
) -> Prepared<S> {
    prepare_as(root, Boot::Hook, sys, out, Duration::ZERO, disk_settle)
}

/// Runs the configured mode (the menu until its input ends, for menu mode), then
/// the power action if one was asked for. Returns the mode's exit code; it
/// returns at all only when the boot is to go on.
pub fn run<R: BufRead, W: Write>(
    backend: &mut dyn Backend,
    config: &Config,
    mut input: R,
    mut out: W,
) -> u8 {
    let config = Config {
        from_hook: true,
        ..config.clone()
    };
    let mode = config.mode;
    let _ = writeln!(out, "usb4rescue: {} started", mode.name());
    let _ = out.flush();
    let rc = {
        let mut m = Menu::new(&mut input, &mut out, &mut *backend, config.clone());
        match mode {
            Mode::Menu => {
                m.run();
                exit::OK
            }
            mode => m.run_mode(mode),
        }
    };
    if mode == Mode::Serve
        && let Err(e) = backend.unmount_store()
    {
        let _ = writeln!(out, "usb4rescue: warning: {e:#}");
    }
    let _ = writeln!(out, "usb4rescue: {} finished rc={rc}", mode.name());
    if let Some((p, what)) = config.power() {
        let _ = writeln!(out, "usb4rescue: {what}");
        let _ = out.flush();
        if let Err(e) = backend.power(p) {
            let _ = writeln!(out, "usb4rescue: warning: {e:#}; the boot goes on");
        }
    }
    let _ = out.flush();
    rc
}

/// `rescue init --dracut` on `root`: modules are loaded and the system changed only
/// on the real root.
pub fn command(root: &Root) -> u8 {
    let mut out = std::io::stdout();
    let cmdline = root.read_attr("/proc/cmdline").unwrap_or_default();
    if let Err((rc, why)) = wanted(&Config::parse(&cmdline)) {
        if !why.is_empty() {
            let _ = writeln!(out, "{why}");
        }
        return rc;
    }
    // Progress bars need a real terminal: a serial console gets plain lines.
    if console::console_device(root).is_some_and(|d| console::is_serial(&d)) {
        crate::xfer::progress::force_lines();
    }
    if root.is_host() {
        let p = prepare(root, KernelSys, &mut out, DISK_SETTLE);
        run_prepared(root, p)
    } else {
        let p = prepare(root, DryRun::default(), &mut out, DISK_SETTLE);
        run_prepared(root, p)
    }
}

fn run_prepared<S: ModuleSys>(root: &Root, p: Prepared<S>) -> u8 {
    let mut sys = machine::System::new(root.clone(), p.loader, p.config.peer.clone());
    // Outside PID 1 only this flow may power off: it was asked to on the command line.
    sys.may_power = root.is_host();
    run(
        &mut sys,
        &p.config,
        super::console_input(),
        std::io::stdout(),
    )
}
