//! The real machine behind the menu: disks from /sys/block, the peer from the
//! Thunderbolt bus, commands through the cmd dispatcher, the store mounted from
//! its superblock, reboot(2) for power actions.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::boot::menu::{Backend, Peer, Power};
use crate::boot::modload::{Loader, ModuleSys};
use crate::boot::{drivers, store_mount};
use crate::cmd::cli::Command;
use crate::fabric::bus;
use crate::root::Root;
use crate::system::disks;

/// The running system (or a fake root in tests, where power actions refuse).
pub struct System<S: ModuleSys> {
    pub(crate) root: Root,
    pub(crate) loader: Option<Loader<S>>,
    /// The configured `rescue.peer`, preferred when several peers are connected.
    pub(crate) peer: Option<String>,
    /// Power actions are allowed outside PID 1 (the dracut hook, on the real root).
    pub(crate) may_power: bool,
}

impl<S: ModuleSys> System<S> {
    pub fn new(root: Root, loader: Option<Loader<S>>, peer: Option<String>) -> Self {
        System {
            root,
            loader,
            peer,
            may_power: false,
        }
    }
}

/// The peer as the Thunderbolt bus shows it.
pub(crate) fn peer_state(root: &Root, prefer: Option<&str>) -> Peer {
    if !root.path("/sys/bus/thunderbolt").exists() {
        return Peer::NoFabric("thunderbolt driver not loaded".into());
    }
    if !drivers::has_domain(root) {
        return Peer::NoFabric("no USB4/Thunderbolt controller found".into());
    }
    let services = bus::stream_services(root);
    let svc = prefer
        .and_then(|p| services.iter().find(|s| s.name == p))
        .or_else(|| services.first());
    match svc {
        None => Peer::Waiting,
        Some(s) => {
            let name = bus::xdomain_of(root, s)
                .and_then(|x| x.device_name.or(Some(x.name)))
                .unwrap_or_else(|| s.xdomain.clone());
            Peer::Found {
                name,
                service: s.name.clone(),
            }
        }
    }
}

impl<S: ModuleSys> Backend for System<S> {
    fn hostname(&self) -> String {
        self.root
            .read_attr("/proc/sys/kernel/hostname")
            .unwrap_or_else(|| "(unknown)".into())
    }

    fn identity(&mut self) -> Option<String> {
        let d = bus::domains(&self.root).into_iter().next()?;
        let uuid = bus::local_uuid(&self.root, d.index)?;
        Some(format!("USB4 host {uuid} (domain{})", d.index))
    }

    fn disks_table(&mut self) -> String {
        match disks::list(&self.root, false) {
            Ok(d) => disks::render_table(&d),
            Err(e) => format!("cannot list disks: {e:#}\n"),
        }
    }

    fn disk_names(&mut self) -> Vec<String> {
        disks::list(&self.root, false)
            .map(|d| d.into_iter().map(|d| d.name).collect())
            .unwrap_or_default()
    }

    fn peer(&mut self) -> Peer {
        peer_state(&self.root, self.peer.as_deref())
    }

    fn run(&mut self, cmd: Command) -> Result<u8> {
        // Ctrl-C cancels this flow (it returns 130), never init itself.
        crate::cancel::reset();
        crate::cmd::run(&self.root, cmd)
    }

    fn mount_store(&mut self, spec: &str) -> Result<PathBuf> {
        let loader = &mut self.loader;
        let mut load_fs = |fstype: &str| {
            if let Some(l) = loader.as_mut() {
                // Best effort: built-in filesystems need nothing, and mount(2) says
                // clearly when the type is unknown.
                let _ = l.load(fstype);
                if fstype == "vfat" {
                    for nls in bootfacts::needed::VFAT_CODEPAGES {
                        let _ = l.load(nls);
                    }
                }
            }
        };
        store_mount::mount_store(&self.root, spec, &mut load_fs)
    }

    fn unmount_store(&mut self) -> Result<()> {
        store_mount::unmount_store(&self.root)
    }

    fn power(&mut self, p: Power) -> Result<()> {
        let pid1 = nix::unistd::getpid().as_raw() == 1;
        if !self.root.is_host() || !(pid1 || self.may_power) {
            bail!("not the init process of this machine: not rebooting or powering off");
        }
        power(p)
    }
}

/// Syncs and reboots or powers off. Returns only on failure.
pub(crate) fn power(p: Power) -> Result<()> {
    use nix::sys::reboot::{RebootMode, reboot};
    nix::unistd::sync();
    drain_console();
    let mode = match p {
        Power::Reboot => RebootMode::RB_AUTOBOOT,
        Power::PowerOff => RebootMode::RB_POWER_OFF,
    };
    let e = reboot(mode).err();
    Err(anyhow::anyhow!(
        "reboot(2) failed: {}",
        e.map(|e| e.desc()).unwrap_or("?")
    ))
    .context("power")
}

/// Waits, 2 s at most, until what was written to the console has left it. A
/// serial console sends at its own pace and reboot(2) drops what it still
/// holds: the last lines, which say how the run ended (a scenario VM once
/// powered off in the middle of "RESCUE: backup failed: ..." and never
/// printed "RESCUE: done"). Bounded, as a console that never drains must not
/// keep the machine from powering off.
fn drain_console() {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            let _ = nix::sys::termios::tcdrain(std::io::stdout());
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
    }
}
