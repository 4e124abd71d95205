//! Which kernel modules PID 1 loads, and in what order: the USB4STREAM stack,
//! drivers for the hardware present (by modalias, twice, because USB devices only
//! appear once their host controller driver is in), and the virtual USB4 host.
//!
//! Virtual host rule: in a VM, `usb4vhost` (kmod/) stands in for `thunderbolt`: it
//! exports the symbols the kernel's own `thunderbolt_stream` imports and registers
//! the thunderbolt bus and ConfigFS subsystem itself, so the two never load side by
//! side. The loader treats it as providing `thunderbolt` (`Loader::stand_in`); the
//! rest is the real-hardware path: `thunderbolt_stream` with its dependencies. The
//! choice is made before either is loaded, from the hardware present:
//! `rescue.fabric=virtual` loads the virtual host; `rescue.fabric=usb4` the real
//! stack; `auto` (the default) the virtual host only when its module is installed, a
//! device it drives exists (the ivshmem PCI device 1af4:1110, matched through
//! modules.alias) and no device matches the real `thunderbolt` driver's aliases;
//! otherwise the real stack. The modalias pass never loads the one not chosen.

use std::fs;
use std::time::Duration;

use bootfacts::needed::{CONFIGFS, STREAM_STACK};

use crate::boot::cmdline::Fabric;
use crate::boot::modload::{self, Loader, ModuleSys, rescue_drivers, settle};
use crate::root::Root;

/// The virtual USB4 host module (kmod/usb4vhost.ko).
pub(crate) const VHOST: &str = bootfacts::needed::VIRTUAL_HOST;

/// What bring-up did, for the console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverReport {
    /// Modules inserted, in order.
    pub(crate) loaded: Vec<String>,
    /// Problems worth showing (none of them stops the boot).
    pub(crate) warnings: Vec<String>,
    /// Whether the virtual USB4 host was loaded.
    pub virtual_cable: bool,
}

fn real_filter(name: &str, path: &str) -> bool {
    name != VHOST && rescue_drivers(name, path)
}

fn virtual_filter(name: &str, path: &str) -> bool {
    name != "thunderbolt" && name != VHOST && rescue_drivers(name, path)
}

/// Whether any device present has a modalias that `module`'s aliases match.
fn hardware_for<S: ModuleSys>(loader: &Loader<S>, devices: &[String], module: &str) -> bool {
    devices
        .iter()
        .any(|d| loader.index().match_modalias(d).iter().any(|m| m == module))
}

/// Decides between the virtual USB4 host and the real USB4 stack (see the module doc).
pub(crate) fn use_virtual<S: ModuleSys>(loader: &Loader<S>, root: &Root, fabric: Fabric) -> bool {
    match fabric {
        Fabric::Virtual => true,
        Fabric::Usb4 => false,
        Fabric::Auto => {
            if !loader.available(VHOST) {
                return false;
            }
            let devices = modload::device_modaliases(root);
            hardware_for(loader, &devices, VHOST) && !hardware_for(loader, &devices, "thunderbolt")
        }
    }
}

/// Whether the kernel has a Thunderbolt/USB4 domain (a host controller bound).
pub(crate) fn has_domain(root: &Root) -> bool {
    fs::read_dir(root.path("/sys/bus/thunderbolt/devices"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("domain"))
        })
        .unwrap_or(false)
}

/// Loads everything the rescue system needs: the USB4STREAM stack, then (with
/// `hardware`: the bound on the wait for USB devices between the two modalias
/// passes) the drivers for the hardware present.
pub(crate) fn bring_up<S: ModuleSys>(
    loader: &mut Loader<S>,
    root: &Root,
    fabric: Fabric,
    hardware: Option<Duration>,
) -> DriverReport {
    let mut rep = DriverReport::default();
    let mut virt = use_virtual(loader, root, fabric);
    if virt && root.path("/sys/module/thunderbolt").exists() {
        // Both provide the same symbols: the kernel would refuse usb4vhost with a
        // "duplicate symbol" line in dmesg only. Say it here and use the real one.
        rep.warnings.push(format!(
            "the real thunderbolt module is loaded, so the virtual USB4 host {VHOST} cannot \
             load beside it and the virtual cable stays unused: unload it \
             (rmmod thunderbolt_stream thunderbolt) and run again, or use rescue.fabric=usb4"
        ));
        virt = false;
    }
    if virt {
        loader.stand_in("thunderbolt", VHOST);
    }
    loader.set_alias_filter(if virt { virtual_filter } else { real_filter });
    let load = |loader: &mut Loader<S>, rep: &mut DriverReport, name: &str| -> bool {
        match loader.load(name) {
            Ok(r) => {
                rep.loaded.extend(r.loaded().iter().map(|s| s.to_string()));
                rep.warnings.extend(r.warnings);
                true
            }
            Err(e) => {
                rep.warnings.push(format!("{e:#}"));
                false
            }
        }
    };
    // In a VM `thunderbolt` is the virtual host (see the module doc).
    for m in std::iter::once(CONFIGFS).chain(STREAM_STACK) {
        let ok = load(loader, &mut rep, m);
        if virt && m == "thunderbolt" {
            rep.virtual_cable = ok;
        }
    }
    let Some(usb_settle) = hardware else {
        return rep;
    };
    for pass in 0..2 {
        match loader.load_for_modaliases() {
            Ok(l) => {
                for m in l {
                    if !rep.loaded.contains(&m) {
                        rep.loaded.push(m);
                    }
                }
            }
            Err(e) => rep.warnings.push(format!("modalias pass: {e:#}")),
        }
        if pass == 0 {
            // USB devices enumerate after their host controller's driver binds.
            let usb = root.path("/sys/bus/usb/devices");
            if usb.is_dir() {
                settle::settle_dir(&usb, Duration::from_millis(300), usb_settle);
            }
        }
    }
    // Dependencies loaded through modalias show up in the failures list only.
    for (m, e) in loader.failures() {
        let w = format!("{m}: {e}");
        if !rep.warnings.contains(&w) {
            rep.warnings.push(w);
        }
    }
    rep
}
