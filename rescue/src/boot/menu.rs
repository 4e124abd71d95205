//! The console menu of the rescue system: plain numbered text that works on a
//! serial line and a VGA console alike. It talks to the machine only through
//! `Backend` and to the person only through a BufRead/Write pair, so tests script it.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Result;

use crate::boot::cmdline::{Config, Mode};
use crate::cmd::cli::{Command, RestoreArgs};
use crate::exit;

/// What the cable side looks like right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No USB4/Thunderbolt (or stream) support: why.
    NoFabric(String),
    /// Fabric up, nobody on the other end.
    Waiting,
    /// A peer offering a stream service.
    Found { name: String, service: String },
}

impl Peer {
    /// The status line: what we are waiting for.
    pub(crate) fn status_line(&self) -> String {
        match self {
            Peer::NoFabric(why) => format!("cable: not available ({why})"),
            Peer::Waiting => {
                "cable: waiting - plug the cable into the other machine and start rescue there"
                    .into()
            }
            Peer::Found { name, service } => format!("cable: peer found: {name} ({service})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Reboot,
    PowerOff,
}

/// Everything the menu and the boot flow need from the machine.
pub trait Backend {
    fn hostname(&self) -> String;
    /// How peers see this machine on the cable (its USB4 host UUID), if known.
    fn identity(&mut self) -> Option<String> {
        None
    }
    /// The `rescue disks` table.
    fn disks_table(&mut self) -> String;
    /// Names of the disks a backup would send by default.
    fn disk_names(&mut self) -> Vec<String>;
    fn peer(&mut self) -> Peer;
    /// Runs a command as `rescue::cmd::run` would; returns its exit code.
    fn run(&mut self, cmd: Command) -> Result<u8>;
    /// Finds and mounts the image store; returns the directory.
    fn mount_store(&mut self, spec: &str) -> Result<PathBuf>;
    /// Unmounts what `mount_store` mounted (the dracut hook: the boot goes on).
    fn unmount_store(&mut self) -> Result<()> {
        Ok(())
    }
    /// Reboots or powers off; returns only on failure.
    fn power(&mut self, p: Power) -> Result<()>;
}

/// Why the menu returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MenuEnd {
    /// The input ended (no keyboard, console closed).
    Eof,
}

/// Runs a command and prints the machine-readable result lines
/// (`RESCUE: <what> finished: OK`, `RESCUE: <what> failed: ...`, `RESCUE: done rc=N`).
pub(crate) fn run_and_report(
    out: &mut dyn Write,
    b: &mut dyn Backend,
    what: &str,
    cmd: Command,
) -> u8 {
    let _ = writeln!(out, "RESCUE: {what} started");
    let _ = out.flush();
    let rc = match b.run(cmd) {
        Ok(exit::OK) => {
            let _ = writeln!(out, "RESCUE: {what} finished: OK");
            exit::OK
        }
        Ok(rc) => {
            let _ = writeln!(out, "RESCUE: {what} failed: {} (exit {rc})", describe(rc));
            rc
        }
        Err(e) => {
            let rc = exit::code_of(&e);
            let _ = writeln!(out, "RESCUE: {what} failed: {} (exit {rc})", one_line(&e));
            rc
        }
    };
    let _ = writeln!(out, "RESCUE: done rc={rc}");
    let _ = out.flush();
    rc
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// The meaning of an exit code (rescue/src/exit.rs), for the console.
pub(crate) fn describe(rc: u8) -> &'static str {
    match rc {
        exit::OK => "OK",
        exit::USAGE => "usage error",
        exit::UNREADABLE => "completed, but some sectors could not be read",
        exit::VERIFY_FAILED => "verification found a mismatch",
        exit::PEER_GONE => "the other machine went away (run again to resume)",
        exit::REFUSED => "refused for safety",
        exit::INTERRUPTED => "interrupted",
        _ => "error",
    }
}

/// The interactive menu.
pub(crate) struct Menu<'a, R: BufRead, W: Write> {
    input: R,
    out: W,
    backend: &'a mut dyn Backend,
    config: Config,
    /// The last restore stopped because the peer went away: offer to continue it.
    restore_cut: bool,
}

impl<'a, R: BufRead, W: Write> Menu<'a, R, W> {
    pub fn new(input: R, out: W, backend: &'a mut dyn Backend, config: Config) -> Self {
        Menu {
            input,
            out,
            backend,
            config,
            restore_cut: false,
        }
    }

    /// The restore that ran before the menu stopped because the peer went away.
    pub(crate) fn restore_was_cut(&mut self) {
        self.restore_cut = true;
    }

    /// Reads one line; None at end of input.
    fn line(&mut self) -> Option<String> {
        let _ = self.out.flush();
        let mut s = String::new();
        match self.input.read_line(&mut s) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(s.trim().to_string()),
        }
    }

    fn ask(&mut self, prompt: &str) -> Option<String> {
        let _ = write!(self.out, "{prompt} ");
        self.line()
    }

    /// y/N question; only an explicit yes counts.
    fn confirm(&mut self, prompt: &str) -> Option<bool> {
        let a = self.ask(&format!("{prompt} [y/N]"))?;
        Some(matches!(a.to_ascii_lowercase().as_str(), "y" | "yes"))
    }

    fn show(&mut self) {
        let host = self.backend.hostname();
        let table = self.backend.disks_table();
        let peer = self.backend.peer();
        let ident = self.backend.identity();
        let o = &mut self.out;
        let _ = writeln!(o);
        let _ = writeln!(o, "==== usb4rescue on {host} ====");
        if let Some(i) = ident {
            let _ = writeln!(o, "This machine on the cable: {i}");
        }
        let _ = writeln!(o, "Disks of this machine:");
        let _ = write!(o, "{table}");
        if !table.ends_with('\n') {
            let _ = writeln!(o);
        }
        let _ = writeln!(o, "{}", peer.status_line());
        let _ = writeln!(o);
        let _ = writeln!(o, "  1) Back up this machine's disks to the other machine");
        let _ = writeln!(o, "  2) Keep backups of the other machine here (serve)");
        let _ = writeln!(
            o,
            "  3) Restore a backup from the other machine onto this one"
        );
        let _ = writeln!(o, "  4) Refresh");
        let _ = writeln!(o, "  5) Reboot");
        let _ = writeln!(o, "  6) Power off");
        let _ = writeln!(o, "RESCUE: menu");
    }

    /// Shows the menu and runs choices until the input ends.
    pub(crate) fn run(&mut self) -> MenuEnd {
        loop {
            self.show();
            let Some(choice) = self.ask("Choice [1-6]:") else {
                return MenuEnd::Eof;
            };
            let done = match choice.as_str() {
                "1" | "b" | "backup" => self.backup(),
                "2" | "s" | "serve" => self.serve(),
                "3" | "r" | "restore" => self.restore(),
                "" | "4" => Some(()),
                "5" | "reboot" => self.power(Power::Reboot),
                "6" | "poweroff" => self.power(Power::PowerOff),
                other => {
                    let _ = writeln!(
                        self.out,
                        "unknown choice {other:?}: type a number from 1 to 6"
                    );
                    Some(())
                }
            };
            if done.is_none() {
                return MenuEnd::Eof;
            }
        }
    }

    /// Runs one mode as the kernel command line would, without the menu's questions.
    pub(crate) fn run_mode(&mut self, mode: Mode) -> u8 {
        let cmd = match mode {
            Mode::Menu => return exit::OK,
            Mode::Backup => self.config.backup_command(),
            Mode::Restore => self.config.restore_command(),
            Mode::Serve => {
                let Some(spec) = self.config.store.clone() else {
                    let _ = writeln!(
                        self.out,
                        "RESCUE: serve failed: no store given (boot with rescue.store=LABEL=name, UUID=id or /dev/NAME) (exit {})",
                        exit::USAGE
                    );
                    let _ = writeln!(self.out, "RESCUE: done rc={}", exit::USAGE);
                    return exit::USAGE;
                };
                match self.backend.mount_store(&spec) {
                    Ok(dir) => self.config.serve_command(dir),
                    Err(e) => {
                        let _ = writeln!(
                            self.out,
                            "RESCUE: serve failed: {} (exit {})",
                            one_line(&e),
                            exit::ERROR
                        );
                        let _ = writeln!(self.out, "RESCUE: done rc={}", exit::ERROR);
                        return exit::ERROR;
                    }
                }
            }
        };
        run_and_report(&mut self.out, self.backend, mode.name(), cmd)
    }

    fn backup(&mut self) -> Option<()> {
        let all = self.backend.disk_names();
        if all.is_empty() {
            let _ = writeln!(self.out, "No disks to back up.");
            return Some(());
        }
        let default = if self.config.disks.is_empty() {
            all.clone()
        } else {
            self.config.disks.clone()
        };
        let a = self.ask(&format!(
            "Disks to send (Enter = {}; or names separated by spaces; q = back):",
            default.join(" ")
        ))?;
        if a == "q" {
            return Some(());
        }
        let disks: Vec<String> = if a.is_empty() {
            default
        } else {
            a.split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let unknown: Vec<&String> = disks
            .iter()
            .filter(|d| !all.contains(d) && !d.starts_with('/'))
            .collect();
        if !unknown.is_empty() {
            let _ = writeln!(
                self.out,
                "Unknown disk(s): {}. Known: {}",
                unknown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                all.join(" ")
            );
            return Some(());
        }
        let label = match &self.config.label {
            Some(l) => Some(l.clone()),
            None => {
                let l = self.ask("Label for this backup (Enter = none):")?;
                (!l.is_empty()).then_some(l)
            }
        };
        let peer = match self.backend.peer() {
            Peer::Found { name, .. } => name,
            _ => "the other machine (once connected)".into(),
        };
        if !self.confirm(&format!("Send {} to {peer}?", disks.join(", ")))? {
            let _ = writeln!(self.out, "Cancelled.");
            return Some(());
        }
        let mut c = self.config.clone();
        c.disks = disks;
        c.label = label;
        run_and_report(&mut self.out, self.backend, "backup", c.backup_command());
        Some(())
    }

    fn serve(&mut self) -> Option<()> {
        let spec = match &self.config.store {
            Some(s) => s.clone(),
            None => {
                let s = self.ask(
                    "Where to keep the backups (LABEL=name, UUID=id or /dev/NAME; q = back):",
                )?;
                if s.is_empty() || s == "q" {
                    return Some(());
                }
                s
            }
        };
        let dir = match self.backend.mount_store(&spec) {
            Ok(d) => d,
            Err(e) => {
                let _ = writeln!(self.out, "Cannot use {spec}: {}", one_line(&e));
                return Some(());
            }
        };
        let _ = writeln!(
            self.out,
            "Keeping backups in {} ({spec}). Start backup or restore on the other machine.",
            dir.display()
        );
        let mut c = self.config.clone();
        // From the menu, one session, then back here.
        let mut cmd = c.serve_command(dir);
        if let Command::Serve(s) = &mut cmd {
            s.once = true;
        }
        c.store = Some(spec);
        self.config = c;
        run_and_report(&mut self.out, self.backend, "serve", cmd);
        Some(())
    }

    fn restore(&mut self) -> Option<()> {
        // The list comes from the peer through the same command the CLI uses.
        let mut list = self.config.restore_command();
        if let Command::Restore(r) = &mut list {
            r.list = true;
        }
        if let Err(e) = self.backend.run(list) {
            let _ = writeln!(self.out, "Cannot list backups: {}", one_line(&e));
            return Some(());
        }
        let id =
            self.ask("Backup to restore (Enter = newest complete one of this machine; q = back):")?;
        if id == "q" {
            return Some(());
        }
        // rescue.map is the default, not the only choice: the person at the
        // console may restore onto another disk than the boot line named.
        let default = if self.config.map.is_empty() {
            "the local disk with the same serial number".to_string()
        } else {
            self.config.map.join(" ")
        };
        let m = self.ask(&format!(
            "Where to write each disk (NAME=TARGET ..., e.g. vda=vda; Enter = {default}):"
        ))?;
        let map: Vec<String> = if m.is_empty() {
            self.config.map.clone()
        } else {
            m.split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let verify =
            self.config.verify || self.confirm("Read the disks back and verify afterwards?")?;
        let resume = self.config.resume
            || (self.restore_cut
                && self.confirm(
                    "Continue the restore that was cut off (keeps what the disks already hold)?",
                )?);
        let _ = writeln!(
            self.out,
            "Restoring OVERWRITES the disks of this machine that the backup maps to: it shows where each goes and what changes (onto a disk of another size), then asks for yes."
        );
        let base = self.config.connect();
        // Not yes: the restore asks itself, after showing its plan, so what is
        // confirmed is what it will do.
        let cmd = Command::Restore(RestoreArgs {
            connect: base,
            list: false,
            backup: (!id.is_empty()).then_some(id),
            host: None,
            map,
            yes: false,
            verify,
            resume,
            skip_damaged: false,
            damaged_map: None,
            grow: self.config.grow,
            zero_free: false,
            discard: false,
        });
        let rc = run_and_report(&mut self.out, self.backend, "restore", cmd);
        self.restore_cut = rc == exit::PEER_GONE;
        Some(())
    }

    fn power(&mut self, p: Power) -> Option<()> {
        let what = match p {
            Power::Reboot => "Reboot",
            Power::PowerOff => "Power off",
        };
        if self.confirm(&format!("{what} now?"))? {
            let _ = writeln!(self.out, "RESCUE: {}", what.to_ascii_lowercase());
            let _ = self.out.flush();
            if let Err(e) = self.backend.power(p) {
                let _ = writeln!(self.out, "{what} failed: {}", one_line(&e));
            }
        }
        Some(())
    }
}
