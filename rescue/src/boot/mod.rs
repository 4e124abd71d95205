//! PID-1 mode: the init process of the rescue initramfs. Mounts the pseudo
//! filesystems, takes the console, loads drivers, reads `rescue.*` from the kernel
//! command line, runs the requested mode, then powers off, reboots or shows the
//! menu. It never exits: errors and panics end on a retry / reboot / power-off
//! prompt, because PID 1 exiting panics the kernel.
//!
//! Console markers for tests and people (one line each, starting with `RESCUE: `):
//! `starting`, `modules: ...`, `warning: ...`, `ready mode=M host=H disks=... uptime=S`,
//! `<mode> started`, `<mode> finished: OK`, `<mode> failed: REASON (exit N)`,
//! `done rc=N`, `menu`, `fatal: ...`, `powering off`, `rebooting`.
//!
//! Kernel command line: `rescue.mode=backup|serve|restore|menu`, `rescue.store=`,
//! `rescue.disks=`, `rescue.peer=`, `rescue.yes=1`, `rescue.poweroff=1`,
//! `rescue.reboot=1`, `rescue.fabric=auto|usb4|virtual`, `rescue.hostname=`,
//! `rescue.label=`, `rescue.verify=1`, `rescue.wait=SECS`, and for restore
//! `rescue.map=NAME=TARGET,...`, `rescue.backup=ID`, `rescue.resume=1` and
//! `rescue.grow=1` (see
//! `cmdline`). The dracut module runs the same flow as a normal process (`hook`).

pub(crate) mod cmdline;
pub(crate) mod console;
pub(crate) mod drivers;
pub mod hook;
pub(crate) mod hostname;
pub mod machine;
pub mod menu;
pub mod modload;
pub(crate) mod mounts;
pub mod store_mount;

use std::io::{BufRead, BufReader, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd::cli::InitArgs;
use crate::root::Root;
pub use cmdline::{Config, Fabric, Mode};
pub(crate) use drivers::DriverReport;
pub(crate) use menu::{Backend, Menu, MenuEnd, Power};
use modload::{DryRun, KernelSys, Loader, ModuleSys};

/// How long to wait for disks to appear after the drivers are in.
pub(crate) const DISK_SETTLE: Duration = Duration::from_secs(3);
/// How long to wait for USB devices between the two modalias passes.
pub(crate) const USB_SETTLE: Duration = Duration::from_secs(2);

/// What boot preparation found.
pub struct Prepared<S: ModuleSys> {
    pub config: Config,
    pub loader: Option<Loader<S>>,
    pub drivers: DriverReport,
    pub disks: Vec<String>,
    pub hostname: Option<String>,
}

/// How much of the boot flow changes the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Boot {
    /// `rescue init` outside PID 1, or a fake root: changes nothing.
    DryRun,
    /// PID 1 of the rescue initramfs: hostname (configured or derived), every
    /// driver, ConfigFS.
    Pid1,
    /// The dracut hook: a configured hostname only, the USB4STREAM stack only (udev
    /// has loaded the hardware's drivers, honouring modprobe.d), ConfigFS; the
    /// system is changed only on the real root.
    Hook,
}

/// Reads the configuration, sets the hostname, loads drivers, mounts ConfigFS and
/// waits for disks. Problems become `RESCUE: warning:` lines, never errors: a
/// rescue system with one missing driver is still useful. Only with `live` (PID 1
/// on the real root) does it change the system: hostname, ConfigFS mount.
pub fn prepare<S: ModuleSys>(
    root: &Root,
    live: bool,
    sys: S,
    out: &mut dyn Write,
    usb_settle: Duration,
    disk_settle: Duration,
) -> Prepared<S> {
    let boot = if live { Boot::Pid1 } else { Boot::DryRun };
    prepare_as(root, boot, sys, out, usb_settle, disk_settle)
}

pub(crate) fn prepare_as<S: ModuleSys>(
    root: &Root,
    boot: Boot,
    sys: S,
    out: &mut dyn Write,
    usb_settle: Duration,
    disk_settle: Duration,
) -> Prepared<S> {
    let changes = match boot {
        Boot::DryRun => false,
        Boot::Pid1 => true,
        Boot::Hook => root.is_host(),
    };
    let cmdline = root.read_attr("/proc/cmdline").unwrap_or_default();
    let config = Config::parse(&cmdline);
    for w in &config.warnings {
        let _ = writeln!(out, "RESCUE: warning: {w}");
    }

    let hostname = match boot {
        Boot::Hook => config
            .hostname
            .as_deref()
            .and_then(|h| hostname::choose(root, Some(h))),
        _ => hostname::choose(root, config.hostname.as_deref()),
    };
    if let Some(h) = &hostname
        && changes
        && let Err(e) = nix::unistd::sethostname(h)
    {
        let _ = writeln!(out, "RESCUE: warning: sethostname {h}: {e}");
    }

    let mut drivers = DriverReport::default();
    let hardware = (boot != Boot::Hook).then_some(usb_settle);
    let loader = match Loader::with_sys(root, None, sys) {
        Ok(mut l) => {
            drivers = drivers::bring_up(&mut l, root, config.fabric, hardware);
            Some(l)
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "RESCUE: warning: no module loading: {e:#}{}",
                other_kernels_hint(root)
            );
            None
        }
    };
    if drivers.loaded.is_empty() {
        let _ = writeln!(out, "RESCUE: modules: none loaded");
    } else {
        let _ = writeln!(out, "RESCUE: modules: {}", drivers.loaded.join(" "));
    }
    for w in &drivers.warnings {
        let _ = writeln!(out, "RESCUE: warning: {w}");
    }
    if changes && let Err(e) = mounts::mount_configfs() {
        let _ = writeln!(out, "RESCUE: warning: {e:#}");
    }

    let settled = modload::wait_for_disks(root, disk_settle);
    let disks: Vec<String> = settled
        .names
        .into_iter()
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    Prepared {
        config,
        loader,
        drivers,
        disks,
        hostname,
    }
}

/// When the modules directory for the running kernel is missing, the image was
/// most likely built for another kernel: say which ones it has.
fn other_kernels_hint(root: &Root) -> String {
    let mut have: Vec<String> = std::fs::read_dir(root.path("/lib/modules"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    have.sort();
    if have.is_empty() {
        String::new()
    } else {
        format!(
            " (this image has modules for {}: was it built for another kernel?)",
            have.join(", ")
        )
    }
}

/// The `RESCUE: ready` line.
pub fn ready_line(root: &Root, p: &Prepared<impl ModuleSys>) -> String {
    let uptime = root
        .read_attr("/proc/uptime")
        .and_then(|u| u.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let host = p
        .hostname
        .clone()
        .or_else(|| root.read_attr("/proc/sys/kernel/hostname"))
        .unwrap_or_else(|| "?".into());
    let fabric = if p.drivers.virtual_cable {
        "virtual"
    } else if drivers::has_domain(root) {
        "usb4"
    } else {
        "none"
    };
    format!(
        "RESCUE: ready mode={} host={host} disks={} fabric={fabric} uptime={uptime}s",
        p.config.mode.name(),
        if p.disks.is_empty() {
            "-".to_string()
        } else {
            p.disks.join(",")
        }
    )
}

/// How `after_boot` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A power action was requested and the backend accepted it (on a real
    /// machine it does not return; fakes record it).
    Power(Power),
    /// The menu's input ended.
    Menu(MenuEnd),
}

/// After boot: runs the configured mode, powers off or reboots if asked, and
/// otherwise shows the menu until its input ends. Returns the mode's exit code
/// (0 for menu mode) and how it ended.
pub fn after_boot<R: BufRead, W: Write>(
    backend: &mut dyn Backend,
    config: &Config,
    mut input: R,
    mut out: W,
) -> (u8, Ending) {
    let mut rc = crate::exit::OK;
    if config.mode != Mode::Menu {
        let mut m = Menu::new(&mut input, &mut out, &mut *backend, config.clone());
        rc = m.run_mode(config.mode);
    }
    if let Some((p, what)) = config.power() {
        let _ = writeln!(out, "RESCUE: {what}");
        let _ = out.flush();
        match backend.power(p) {
            Ok(()) => return (rc, Ending::Power(p)),
            Err(e) => {
                let _ = writeln!(out, "RESCUE: warning: {e:#}; showing the menu instead");
            }
        }
    }
    let menu_config = Config {
        mode: Mode::Menu,
        ..config.clone()
    };
    let mut menu = Menu::new(&mut input, &mut out, backend, menu_config);
    if config.mode == Mode::Restore && rc == crate::exit::PEER_GONE {
        menu.restore_was_cut();
    }
    let end = menu.run();
    (rc, Ending::Menu(end))
}

/// Standard input that takes std's stdin lock only for each read. The menu keeps
/// its input while a command runs, and commands read the console themselves (the
/// restore confirmation): holding `stdin().lock()` across them would deadlock.
pub(crate) struct ConsoleIn;

impl Read for ConsoleIn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::io::stdin().read(buf)
    }
}

/// The menu's input on the console: a one-byte BufReader so it never reads past
/// the line it needs (the rest stays in std's stdin buffer for whoever reads next).
pub(crate) fn console_input() -> BufReader<ConsoleIn> {
    BufReader::with_capacity(1, ConsoleIn)
}

/// Starts a thread that reaps children, which PID 1 inherits from every orphan.
/// It would also steal exit statuses from our own `std::process` children, so it
/// runs only as PID 1, where rescue spawns none.
fn start_reaper() {
    let _ = thread::Builder::new().name("reaper".into()).spawn(|| {
        loop {
            match nix::sys::wait::waitpid(None, None) {
                Err(nix::errno::Errno::ECHILD) | Err(_) => thread::sleep(Duration::from_secs(1)),
                Ok(_) => {}
            }
        }
    });
}

/// One pass of PID 1 after the console is set up: prepare, run, menu.
fn pid1_pass(root: &Root) -> Result<()> {
    let mut out = std::io::stdout();
    let p = prepare(
        root,
        root.is_host(),
        KernelSys,
        &mut out,
        USB_SETTLE,
        DISK_SETTLE,
    );
    let _ = writeln!(out, "{}", ready_line(root, &p));
    let config = p.config.clone();
    let mut sys = machine::System::new(root.clone(), p.loader, config.peer.clone());
    after_boot(&mut sys, &config, console_input(), std::io::stdout());
    // The menu ended: its input closed (Ctrl-D). Show it again, gently.
    let menu_config = Config {
        mode: Mode::Menu,
        poweroff: false,
        reboot: false,
        ..config
    };
    loop {
        let mut m = Menu::new(
            console_input(),
            std::io::stdout(),
            &mut sys,
            menu_config.clone(),
        );
        m.run();
        thread::sleep(Duration::from_secs(1));
    }
}

/// What the person chose on the error screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FatalChoice {
    Retry,
    Power(Power),
    /// The console gave no input (closed or absent): retry after a pause.
    NoInput,
}

/// The error screen: shows what failed and asks whether to retry, reboot or power
/// off. There is no shell to drop into.
pub(crate) fn fatal_prompt<R: BufRead, W: Write>(
    mut input: R,
    mut out: W,
    msg: &str,
) -> FatalChoice {
    let _ = writeln!(out, "RESCUE: fatal: {}", msg.replace('\n', " "));
    loop {
        let _ = write!(out, "r = retry, b = reboot, p = power off [r/b/p]: ");
        let _ = out.flush();
        let mut s = String::new();
        match input.read_line(&mut s) {
            Ok(0) | Err(_) => return FatalChoice::NoInput,
            Ok(_) => {}
        }
        match s.trim() {
            "" | "r" => return FatalChoice::Retry,
            "b" => return FatalChoice::Power(Power::Reboot),
            "p" => return FatalChoice::Power(Power::PowerOff),
            other => {
                let _ = writeln!(out, "unknown choice {other:?}");
            }
        }
    }
}

/// The error screen on the real console; returns when it is time to retry.
fn fatal_screen(msg: &str) {
    let mut msg = msg.to_string();
    loop {
        match fatal_prompt(std::io::stdin().lock(), std::io::stdout(), &msg) {
            FatalChoice::Retry => return,
            FatalChoice::NoInput => {
                // No keyboard: try again later rather than spin.
                thread::sleep(Duration::from_secs(10));
                return;
            }
            FatalChoice::Power(p) => {
                if let Err(e) = machine::power(p) {
                    msg = format!("{e:#}");
                }
            }
        }
    }
}

/// The entry point when running as PID 1 (main.rs calls this). Never returns.
/// Called by a process that is not PID 1, it runs `command` instead (no mounts,
/// no module loading, no reboot) and exits with its code.
pub fn main() -> ! {
    let root = Root::host();
    if nix::unistd::getpid().as_raw() != 1 {
        let args = InitArgs {
            no_mount: true,
            ..Default::default()
        };
        let rc = match command(&root, &args) {
            Ok(rc) => rc,
            Err(e) => {
                eprintln!("rescue: {e:#}");
                crate::exit::code_of(&e)
            }
        };
        std::process::exit(i32::from(rc));
    }
    let mount_errors = mounts::mount_early();
    let console = console::setup(&root);
    start_reaper();
    crate::signals::install_cancel();
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "RESCUE: starting usb4rescue {} as init",
        env!("CARGO_PKG_VERSION")
    );
    for e in mount_errors {
        let _ = writeln!(out, "RESCUE: warning: {e}");
    }
    if let Err(e) = console {
        let _ = writeln!(out, "RESCUE: warning: console: {e:#}");
    }
    loop {
        let msg = match catch_unwind(AssertUnwindSafe(|| pid1_pass(&root))) {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => format!("{e:#}"),
            Err(p) => format!("panic: {}", crate::util::panic_message(p.as_ref())),
        };
        // A panic inside the error screen must not end PID 1 either.
        let _ = catch_unwind(AssertUnwindSafe(|| fatal_screen(&msg)));
    }
}

/// `rescue init`: as PID 1 this is `main()`. Otherwise (trying init mode outside
/// an initramfs) it runs the same flow without mounting (unless asked), without
/// loading modules (it prints what it would load), without changing the hostname
/// and without rebooting, and returns the mode's exit code when the menu's input
/// ends.
pub fn command(root: &Root, args: &InitArgs) -> Result<u8> {
    if args.stack_modules {
        let mut out = std::io::stdout();
        for m in std::iter::once(bootfacts::needed::CONFIGFS).chain(bootfacts::needed::STREAM_STACK)
        {
            writeln!(out, "{m}").context("stdout")?;
        }
        return Ok(crate::exit::OK);
    }
    if args.dracut {
        return Ok(hook::command(root));
    }
    if nix::unistd::getpid().as_raw() == 1 && root.is_host() {
        main();
    }
    if !args.no_mount && root.is_host() {
        for e in mounts::mount_early() {
            eprintln!("RESCUE: warning: {e}");
        }
    }
    let mut out = std::io::stdout();
    let view = root.clone();
    let p = prepare(
        &view,
        false,
        DryRun::default(),
        &mut out,
        USB_SETTLE,
        DISK_SETTLE,
    );
    if let Some(l) = &p.loader {
        writeln!(
            out,
            "RESCUE: not PID 1: would load: {}",
            l.sys().would_load.join(" ")
        )
        .context("stdout")?;
    }
    writeln!(out, "{}", ready_line(&view, &p)).context("stdout")?;
    let config = p.config.clone();
    let mut sys = machine::System::new(root.clone(), p.loader, config.peer.clone());
    let (rc, _) = after_boot(&mut sys, &config, console_input(), std::io::stdout());
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_prompt_choices() {
        let ask = |input: &str| {
            let mut out = Vec::new();
            let c = fatal_prompt(
                std::io::Cursor::new(input.to_string()),
                &mut out,
                "boom\nbad",
            );
            (c, String::from_utf8(out).unwrap_or_default())
        };
        let (c, out) = ask("x\np\n");
        assert_eq!(c, FatalChoice::Power(Power::PowerOff));
        assert!(out.starts_with("RESCUE: fatal: boom bad\n"), "{out}");
        assert!(out.contains("unknown choice \"x\""));
        assert_eq!(ask("\n").0, FatalChoice::Retry);
        assert_eq!(ask("b\n").0, FatalChoice::Power(Power::Reboot));
        assert_eq!(ask("").0, FatalChoice::NoInput);
    }
}
