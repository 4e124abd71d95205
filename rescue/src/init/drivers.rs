//! Which kernel modules PID 1 loads, and in what order: the USB4STREAM stack,
//! drivers for the hardware present (by modalias, twice, because USB devices only
//! appear once their host controller driver is in), and the virtual cable.
//!
//! Virtual cable rule: `rescue.fabric=virtual` always loads `usb4vcable`;
//! `rescue.fabric=usb4` never does; `auto` (the default) loads it only when the
//! module is installed and, after the real drivers are in, no Thunderbolt/USB4
//! domain exists (no /sys/bus/thunderbolt/devices/domain*): real hardware wins,
//! and a rescue stick without the module behaves exactly as on bare metal. The
//! modalias pass never loads it by itself, so `usb4` really means no virtual cable.

use std::fs;
use std::time::Duration;

use crate::init::cmdline::Fabric;
use crate::modload::{Loader, ModuleSys, rescue_drivers, settle};
use crate::root::Root;

pub const VCABLE: &str = "usb4vcable";

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

fn alias_filter(name: &str, path: &str) -> bool {
    name != VCABLE && rescue_drivers(name, path)
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
    loader.set_alias_filter(alias_filter);
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
    for m in ["configfs", "thunderbolt", "thunderbolt_stream"] {
        if loader.available(m) || !loader.is_present(m) {
            load(loader, &mut rep, m);
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
    let want_vcable = match fabric {
        Fabric::Virtual => true,
        Fabric::Usb4 => false,
        Fabric::Auto => loader.available(VCABLE) && !has_domain(root),
    };
    if want_vcable {
        rep.virtual_cable = load(loader, &mut rep, VCABLE);
    }
    rep
}
