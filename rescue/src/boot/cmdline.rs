//! The `rescue.*` kernel command line options that configure PID-1 mode, and the
//! `rescue::cmd::cli::Command` each mode turns into.

use std::path::PathBuf;

use crate::boot::menu::Power;
use crate::cmd::cli::{BackupArgs, Command, RestoreArgs, ServeArgs};
use crate::session::ConnectArgs;

/// What init does once the system is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Menu,
    Backup,
    Serve,
    Restore,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Menu => "menu",
            Mode::Backup => "backup",
            Mode::Serve => "serve",
            Mode::Restore => "restore",
        }
    }
}

/// Which USB4STREAM transport to bring up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fabric {
    /// Real Thunderbolt/USB4 hardware if any, else the virtual USB4 host (VMs) if installed.
    #[default]
    Auto,
    /// Real hardware only; never load the virtual USB4 host.
    Usb4,
    /// Always load the virtual USB4 host (VM tests).
    Virtual,
}

/// What `rd.usb4rescue` tells the dracut module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Dracut {
    /// Not given: the boot goes on without rescue.
    #[default]
    Absent,
    /// A mode (`rd.usb4rescue=backup`; bare or `=1` means the menu).
    On,
    /// `rd.usb4rescue=0` (or no, off, false).
    Off,
    /// A value that is not a mode: nothing runs (a menu would stop the boot).
    Unknown,
}

/// Settings from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    pub(crate) dracut: Dracut,
    /// Run by the dracut hook, after which the boot goes on: serve stops after one
    /// session, and the peer is awaited as the commands do by default (300 s;
    /// serve: until one comes) rather than for ever. Not a command line option.
    pub(crate) from_hook: bool,
    /// `rescue.wait=SECS`: how long to wait for the peer (0: for ever).
    pub(crate) wait: Option<u64>,
    /// `rescue.streams=N` (1 to 8): as `--streams`.
    pub(crate) streams: Option<u32>,
    /// `LABEL=x`, `UUID=y` or a /dev path: where serve keeps images.
    pub(crate) store: Option<String>,
    pub(crate) disks: Vec<String>,
    pub(crate) peer: Option<String>,
    pub(crate) yes: bool,
    pub(crate) poweroff: bool,
    pub(crate) reboot: bool,
    pub fabric: Fabric,
    pub(crate) hostname: Option<String>,
    pub(crate) label: Option<String>,
    pub(crate) verify: bool,
    /// rescue.resume=1: a restore continues onto targets that hold part of it.
    pub(crate) resume: bool,
    /// rescue.grow=1: a restore onto a larger disk extends the last partition
    /// to its end (`restore --grow`).
    pub(crate) grow: bool,
    /// rescue.all_blocks=1: a backup copies every byte, free space too.
    pub(crate) all_blocks: bool,
    /// rescue.full=1: a backup sends every chunk, not only those changed since
    /// an earlier backup (`backup --full`).
    pub(crate) full: bool,
    /// `rescue.map=NAME=TARGET,...`: where restore writes each backed-up disk
    /// (needed when the disks have no serial numbers to match).
    pub(crate) map: Vec<String>,
    /// `rescue.backup=ID`: which backup restore writes (default: the newest).
    pub(crate) backup: Option<String>,
    /// `rescue.allow_restore=HOST,...|all`: serve lets peers restore these hosts'
    /// backups although they are not those machines (`serve --allow-restore`).
    pub(crate) allow_restore: Vec<String>,
    /// Options we could not understand, to show on the console rather than fail on.
    pub(crate) warnings: Vec<String>,
}

/// Splits a command line into words like the kernel does: spaces separate words,
/// double quotes group (and are removed).
pub(crate) fn split(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// `a,b, c` as words; nothing for an empty or missing value.
fn list(v: Option<&str>) -> Vec<String> {
    v.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_bool(v: Option<&str>) -> Option<bool> {
    match v.map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("1") | Some("y") | Some("yes") | Some("true") | Some("on") => {
            Some(true)
        }
        Some("0") | Some("n") | Some("no") | Some("false") | Some("off") => Some(false),
        _ => None,
    }
}

impl Config {
    /// Parses the `rescue.*` words; everything else belongs to the kernel or modules.
    pub fn parse(cmdline: &str) -> Config {
        let mut c = Config::default();
        for word in split(cmdline) {
            let switch = word.starts_with("rd.usb4rescue") && !word.starts_with("rd.usb4rescue.");
            let Some(word) = c.dracut_word(word) else {
                continue;
            };
            let Some(opt) = word.strip_prefix("rescue.") else {
                continue;
            };
            let (key, val) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let nonempty = val.map(str::trim).filter(|v| !v.is_empty());
            match key {
                "mode" => match nonempty {
                    Some("menu") => c.mode = Mode::Menu,
                    Some("backup") => c.mode = Mode::Backup,
                    Some("serve") => c.mode = Mode::Serve,
                    Some("restore") => c.mode = Mode::Restore,
                    _ => {
                        if switch {
                            c.dracut = Dracut::Unknown;
                        }
                        c.warnings.push(format!(
                            "{word}: expected backup, serve, restore or menu; using menu"
                        ))
                    }
                },
                "fabric" => match nonempty {
                    Some("auto") => c.fabric = Fabric::Auto,
                    Some("usb4") => c.fabric = Fabric::Usb4,
                    Some("virtual") => c.fabric = Fabric::Virtual,
                    _ => c.warnings.push(format!(
                        "{word}: expected auto, usb4 or virtual; using auto"
                    )),
                },
                "store" => c.store = nonempty.map(str::to_string),
                "disks" => c.disks = list(nonempty),
                "peer" => c.peer = nonempty.map(str::to_string),
                "allow_restore" => c.allow_restore = list(nonempty),
                "backup" => c.backup = nonempty.map(str::to_string),
                "map" => c.map = list(nonempty),
                "hostname" => c.hostname = nonempty.map(str::to_string),
                "label" => c.label = nonempty.map(str::to_string),
                "wait" => match nonempty.map(str::parse::<u64>) {
                    Some(Ok(secs)) => c.wait = Some(secs),
                    _ => c
                        .warnings
                        .push(format!("{word}: expected seconds; ignored")),
                },
                "streams" => match nonempty.map(str::parse::<u32>) {
                    Some(Ok(n @ 1..=8)) => c.streams = Some(n),
                    _ => c
                        .warnings
                        .push(format!("{word}: expected 1 to 8 streams; ignored")),
                },
                "yes" | "poweroff" | "reboot" | "verify" | "resume" | "grow" | "all_blocks"
                | "full" => match parse_bool(val) {
                    Some(b) => match key {
                        "yes" => c.yes = b,
                        "poweroff" => c.poweroff = b,
                        "reboot" => c.reboot = b,
                        "resume" => c.resume = b,
                        "grow" => c.grow = b,
                        "all_blocks" => c.all_blocks = b,
                        "full" => c.full = b,
                        _ => c.verify = b,
                    },
                    None => c.warnings.push(format!("{word}: expected 1 or 0; ignored")),
                },
                _ => c
                    .warnings
                    .push(format!("{word}: unknown rescue option; ignored")),
            }
        }
        if c.poweroff && c.reboot {
            c.warnings
                .push("both rescue.poweroff and rescue.reboot given: powering off".into());
            c.reboot = false;
        }
        c
    }

    /// A word of the dracut module's spelling in ours: `rd.usb4rescue.*` are the
    /// same options as `rescue.*`, and `rd.usb4rescue=MODE` is `rescue.mode=MODE`;
    /// the switch itself (bare, 1, or off) is taken here and gives `None`.
    fn dracut_word(&mut self, word: String) -> Option<String> {
        let switch = word
            .strip_prefix("rd.usb4rescue")
            .filter(|r| r.is_empty() || r.starts_with('='))
            .map(|r| r.trim_start_matches('=').trim());
        match switch {
            Some("" | "1") => {
                self.dracut = Dracut::On;
                self.mode = Mode::Menu;
                None
            }
            Some("0" | "no" | "off" | "false") => {
                self.dracut = Dracut::Off;
                None
            }
            Some(mode) => {
                self.dracut = Dracut::On;
                Some(format!("rescue.mode={mode}"))
            }
            None => Some(match word.strip_prefix("rd.usb4rescue.") {
                Some(rest) => format!("rescue.{rest}"),
                None => word,
            }),
        }
    }

    /// The power action asked for at the end, with its console word.
    pub(crate) fn power(&self) -> Option<(Power, &'static str)> {
        if self.poweroff {
            Some((Power::PowerOff, "powering off"))
        } else if self.reboot {
            Some((Power::Reboot, "rebooting"))
        } else {
            None
        }
    }

    /// How to reach the peer: the configured service, waiting as long as it takes
    /// (at a rescue console the person plugs the cable in when ready) unless told
    /// otherwise; from the dracut hook the commands' own defaults apply.
    pub(crate) fn connect(&self) -> ConnectArgs {
        ConnectArgs {
            device: None,
            peer: self.peer.clone(),
            name: "backup".into(),
            streams: self.streams,
            wait: if self.from_hook {
                self.wait
            } else {
                Some(self.wait.unwrap_or(0))
            },
        }
    }

    pub(crate) fn backup_command(&self) -> Command {
        Command::Backup(BackupArgs {
            connect: self.connect(),
            label: self.label.clone(),
            fresh: false,
            all_blocks: self.all_blocks,
            full: self.full,
            chunk_kib: 1024,
            disks: self.disks.clone(),
        })
    }

    /// A serve command keeping images in `store` (the mounted store directory).
    /// With poweroff/reboot requested it stops after one session so that happens.
    pub(crate) fn serve_command(&self, store: PathBuf) -> Command {
        Command::Serve(ServeArgs {
            store,
            // The store is the filesystem init just mounted there.
            create: true,
            no_space_check: false,
            connect: self.connect(),
            once: self.from_hook || self.poweroff || self.reboot,
            allow_restore: self.allow_restore.clone(),
        })
    }

    pub(crate) fn restore_command(&self) -> Command {
        Command::Restore(RestoreArgs {
            connect: self.connect(),
            list: false,
            backup: self.backup.clone(),
            host: None,
            map: self.map.clone(),
            yes: self.yes,
            verify: self.verify,
            resume: self.resume,
            skip_damaged: false,
            damaged_map: None,
            grow: self.grow,
            zero_free: false,
            discard: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(split("a  b=\"c d\" \"e\"f"), vec!["a", "b=c d", "ef"]);
        assert!(split("  ").is_empty());
    }

    #[test]
    fn parses_everything() {
        let c = Config::parse(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 rescue.mode=backup rescue.store=LABEL=backups \
             rescue.disks=sda,nvme0n1 rescue.peer=0-1.0 rescue.yes=1 rescue.poweroff \
             rescue.fabric=virtual rescue.hostname=hostA rescue.label=\"before reinstall\" \
             rescue.verify=1",
        );
        assert_eq!(c.mode, Mode::Backup);
        assert_eq!(c.store.as_deref(), Some("LABEL=backups"));
        assert_eq!(c.disks, vec!["sda", "nvme0n1"]);
        assert_eq!(c.peer.as_deref(), Some("0-1.0"));
        assert!(c.yes && c.poweroff && !c.reboot && c.verify);
        assert_eq!(c.fabric, Fabric::Virtual);
        assert_eq!(c.hostname.as_deref(), Some("hostA"));
        assert_eq!(c.label.as_deref(), Some("before reinstall"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn bad_values_warn_and_default() {
        let c = Config::parse("rescue.mode=dance rescue.yes=maybe rescue.bogus=1 rescue.fabric=x");
        assert_eq!(c.mode, Mode::Menu);
        assert!(!c.yes);
        assert_eq!(c.fabric, Fabric::Auto);
        assert_eq!(c.warnings.len(), 4, "{:?}", c.warnings);
        assert_eq!(Config::parse("").mode, Mode::Menu);
    }

    #[test]
    fn builds_commands() {
        let c = Config::parse(
            "rescue.mode=serve rescue.poweroff=1 rescue.peer=0-1.0 rescue.allow_restore=hosta,hostc",
        );
        match c.serve_command("/run/rescue/store".into()) {
            Command::Serve(s) => {
                assert!(s.once);
                assert_eq!(s.allow_restore, vec!["hosta", "hostc"]);
                assert_eq!(s.connect.name, "backup");
                assert_eq!(s.connect.peer.as_deref(), Some("0-1.0"));
                assert_eq!(s.store, PathBuf::from("/run/rescue/store"));
            }
            other => panic!("{other:?}"),
        }
        match Config::parse("rescue.disks=sda rescue.label=x").backup_command() {
            Command::Backup(b) => {
                assert_eq!(b.disks, vec!["sda"]);
                assert_eq!(b.label.as_deref(), Some("x"));
                assert_eq!(b.chunk_kib, 1024);
            }
            other => panic!("{other:?}"),
        }
        match Config::parse(
            "rescue.yes=1 rescue.verify=1 rescue.map=vda=vdb,sda=/dev/sdb rescue.backup=b1",
        )
        .restore_command()
        {
            Command::Restore(r) => {
                assert!(r.yes && r.verify && !r.list);
                assert_eq!(r.map, vec!["vda=vdb", "sda=/dev/sdb"]);
                assert_eq!(r.backup.as_deref(), Some("b1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dracut_prefix_means_the_same() {
        let c =
            Config::parse("quiet rd.usb4rescue=backup rd.usb4rescue.label=x rd.usb4rescue.yes=1");
        assert_eq!(c.mode, Mode::Backup);
        assert_eq!(c.label.as_deref(), Some("x"));
        assert!(c.yes);
        assert_eq!(c.dracut, Dracut::On);
    }

    #[test]
    fn the_dracut_switch() {
        let d = |s: &str| {
            let c = Config::parse(s);
            (c.dracut, c.mode)
        };
        assert_eq!(d("quiet"), (Dracut::Absent, Mode::Menu));
        assert_eq!(d("rescue.mode=backup"), (Dracut::Absent, Mode::Backup));
        assert_eq!(d("rd.usb4rescue"), (Dracut::On, Mode::Menu));
        assert_eq!(d("rd.usb4rescue=1"), (Dracut::On, Mode::Menu));
        assert_eq!(d("rd.usb4rescue=serve"), (Dracut::On, Mode::Serve));
        assert_eq!(d("rd.usb4rescue=off"), (Dracut::Off, Mode::Menu));
        assert_eq!(
            d("rd.usb4rescue=0 rd.usb4rescue.yes=1"),
            (Dracut::Off, Mode::Menu)
        );
        assert_eq!(d("rd.usb4rescue=dance"), (Dracut::Unknown, Mode::Menu));
        // Not the switch: another option that shares the prefix.
        assert_eq!(d("rd.usb4rescuex=1").0, Dracut::Absent);
        // Used-block backups are the default; all_blocks turns them off.
        let all = |s: &str| match Config::parse(s).backup_command() {
            Command::Backup(b) => b.all_blocks,
            other => panic!("{other:?}"),
        };
        assert!(!all("rescue.mode=backup"));
        assert!(all("rescue.mode=backup rescue.all_blocks=1"));
        assert!(all("rd.usb4rescue=backup rd.usb4rescue.all_blocks=1"));
        let full = |s: &str| match Config::parse(s).backup_command() {
            Command::Backup(b) => b.full,
            other => panic!("{other:?}"),
        };
        assert!(!full("rescue.mode=backup"));
        assert!(full("rescue.mode=backup rescue.full=1"));
        let c = Config::parse("rd.usb4rescue=restore rd.usb4rescue.resume=1 rd.usb4rescue.grow=1");
        assert!(
            c.resume && c.grow && c.warnings.is_empty(),
            "{:?}",
            c.warnings
        );
        match c.restore_command() {
            Command::Restore(r) => assert!(r.resume && r.grow),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn waiting_for_the_peer() {
        let wait = |s: &str, from_hook: bool| {
            let c = Config {
                from_hook,
                ..Config::parse(s)
            };
            (c.connect().wait, c.warnings.len())
        };
        assert_eq!(wait("", false), (Some(0), 0));
        assert_eq!(wait("rescue.wait=30", false), (Some(30), 0));
        assert_eq!(wait("", true), (None, 0));
        assert_eq!(wait("rd.usb4rescue.wait=120", true), (Some(120), 0));
        assert_eq!(wait("rescue.wait=soon", false), (Some(0), 1));
        let streams = |s: &str| {
            let c = Config::parse(s);
            (c.connect().streams, c.warnings.len())
        };
        assert_eq!(streams(""), (None, 0));
        assert_eq!(streams("rescue.streams=2"), (Some(2), 0));
        assert_eq!(streams("rescue.streams=9"), (None, 1));
        assert_eq!(streams("rescue.streams=many"), (None, 1));
    }
}
