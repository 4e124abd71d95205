//! Which kernel modules PID 1 loads, and in what order: the USB4STREAM stack,
//! drivers for the hardware present (by modalias, twice, because USB devices only
//! appear once their host controller driver is in), and the virtual cable.
//!
//! Virtual cable rule: `usb4vcable` replaces `thunderbolt` + `thunderbolt_stream`
//! (it registers the thunderbolt bus and ConfigFS subsystem itself and refuses to
//! load next to them), so the choice is made before either is loaded, from the
//! hardware present: `rescue.fabric=virtual` loads the virtual cable;
//! `rescue.fabric=usb4` loads the real stack; `auto` (the default) loads the
//! virtual cable only when its module is installed, a device it drives exists
//! (the ivshmem PCI device 1af4:1110, matched through modules.alias) and no device
//! matches the real `thunderbolt` driver's aliases; otherwise the real stack.
//! The modalias pass never loads the stack that was not chosen.

use std::fs;
use std::time::Duration;

use bootfacts::needed::CONFIGFS;

use crate::init::cmdline::Fabric;
use crate::modload::{self, Loader, ModuleSys, rescue_drivers, settle};
use crate::root::Root;

pub const VCABLE: &str = bootfacts::needed::VIRTUAL_CABLE;

/// What bring-up did, for the console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverReport {
    /// Modules inserted, in order.
    pub loaded: Vec<String>,
    /// Problems worth showing (none of them stops the boot).
    pub warnings: Vec<String>,
    /// Whether the virtual cable was loaded.
    pub virtual_cable: bool,
}

const REAL_STACK: &[&str] = &bootfacts::needed::STREAM_STACK;

fn real_filter(name: &str, path: &str) -> bool {
    name != VCABLE && rescue_drivers(name, path)
}

fn virtual_filter(name: &str, path: &str) -> bool {
    !REAL_STACK.contains(&name) && name != VCABLE && rescue_drivers(name, path)
}

/// Whether any device present has a modalias that `module`'s aliases match.
fn hardware_for<S: ModuleSys>(loader: &Loader<S>, devices: &[String], module: &str) -> bool {
    devices
        .iter()
        .any(|d| loader.index().match_modalias(d).iter().any(|m| m == module))
}

/// Decides between the virtual cable and the real USB4 stack (see the module doc).
pub fn use_virtual<S: ModuleSys>(loader: &Loader<S>, root: &Root, fabric: Fabric) -> bool {
    match fabric {
        Fabric::Virtual => true,
        Fabric::Usb4 => false,
        Fabric::Auto => {
            if !loader.available(VCABLE) {
                return false;
            }
            let devices = modload::device_modaliases(root);
            hardware_for(loader, &devices, VCABLE) && !hardware_for(loader, &devices, "thunderbolt")
        }
    }
}

/// Whether the kernel has a Thunderbolt/USB4 domain (a host controller bound).
pub fn has_domain(root: &Root) -> bool {
    fs::read_dir(root.path("/sys/bus/thunderbolt/devices"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("domain"))
        })
        .unwrap_or(false)
}

/// Loads everything the rescue system needs. `usb_settle` bounds the wait for USB
/// devices between the two modalias passes.
pub fn bring_up<S: ModuleSys>(
    loader: &mut Loader<S>,
    root: &Root,
    fabric: Fabric,
    usb_settle: Duration,
) -> DriverReport {
    let mut rep = DriverReport::default();
    let virt = use_virtual(loader, root, fabric);
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
    let stack: &[&str] = if virt { &[VCABLE] } else { REAL_STACK };
    for m in std::iter::once(&CONFIGFS).chain(stack) {
        let ok = load(loader, &mut rep, m);
        if *m == VCABLE {
            rep.virtual_cable = ok;
        }
    }
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
