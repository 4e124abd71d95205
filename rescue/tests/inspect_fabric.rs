//! Thunderbolt bus discovery and the fabric status report against fake sysfs
//! trees: tests/fixtures/tb-ready (peer connected, stream configured) and
//! tb-insecure (no IOMMU, module not loaded, ConfigFS not mounted, no uevent files).

#![allow(clippy::unwrap_used)]

mod inspect_support;

use std::fs;

use inspect_support::*;
use rescue::Root;
use rescue::fabric::{bus, status};

fn root(case: &str) -> Root {
    Root::new(fixtures().join(case))
}

#[test]
fn ready_bus_discovery() {
    let r = root("tb-ready");
    let d = bus::domains(&r);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].name, "domain0");
    assert_eq!(d[0].security.as_deref(), Some("user"));
    assert!(d[0].iommu_dma_protection);
    assert_eq!(
        bus::local_uuid(&r, 0).as_deref(),
        Some("d0b6a280-6c12-4e3e-b1a5-0c7d2a9b4e11")
    );
    assert_eq!(bus::local_uuid(&r, 1), None);

    // The dock (0-3) is a device router, not a peer host.
    let x = bus::xdomains(&r);
    assert_eq!(x.len(), 1);
    let p = &x[0];
    assert_eq!((p.name.as_str(), p.domain, p.route), ("0-1", 0, 1));
    assert_eq!(p.device_name.as_deref(), Some("rescue-b"));
    assert_eq!(p.vendor_name.as_deref(), Some("Linux"));
    assert_eq!(p.vendor.as_deref(), Some("0x1d6b"));
    assert_eq!(
        p.unique_id.as_deref(),
        Some("6f3c1e2d-8a4b-4c5d-9e0f-1a2b3c4d5e6f")
    );
    assert_eq!(p.rx_speed.as_deref(), Some("20.0 Gb/s"));
    assert_eq!(
        (p.rx_lanes, p.tx_lanes, p.maxhopid),
        (Some(2), Some(2), Some(15))
    );
    let routers = bus::device_routers(&r);
    assert_eq!(routers.len(), 1);
    assert_eq!(routers[0].device_name.as_deref(), Some("TB4 Dock"));

    let s = bus::stream_services(&r);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].name, "0-1.0");
    assert_eq!(s[0].xdomain, "0-1");
    assert_eq!(
        (s[0].prtcid, s[0].prtcvers, s[0].prtcrevs),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(s[0].prtcstns.as_deref(), Some("0x00000000"));
    assert_eq!(s[0].driver.as_deref(), Some("thunderbolt_stream"));
    assert_eq!(
        s[0].modalias.as_deref(),
        Some("tbsvc:kstreamp00000001v00000001r00000000")
    );
    assert_eq!(bus::xdomain_of(&r, &s[0]).unwrap().name, "0-1");
}

#[test]
fn ready_status() {
    let r = root("tb-ready");
    let s = status::collect(&r);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert_eq!(s.kernel_supported, Some(true));
    assert!(s.configfs_mounted && s.stream_configfs);
    assert!(
        s.modules
            .iter()
            .all(|m| m.loaded && m.available && !m.builtin)
    );
    assert_eq!(s.peers.len(), 1);
    assert!(s.peers[0].services[0].bound && s.peers[0].services[0].stream);
    assert_eq!(s.streams.len(), 2);
    let b = &s.streams[0];
    assert_eq!((b.service.as_str(), b.name.as_str()), ("0-1.0", "backup"));
    assert_eq!(
        (b.index, b.in_hopid, b.out_hopid),
        (Some(0), Some(8), Some(9))
    );
    assert_eq!((b.ring_size, b.throttling), (Some(256), Some(8192)));
    assert_eq!(b.device.as_deref(), Some("/dev/tbstream0"));
    assert!(b.device_exists && b.peer_present);
    let c = &s.streams[1];
    assert!(!c.device_exists && !c.peer_present);
    assert_eq!(status::check_ready(&r), Ok(()));
    expect("tb-ready", "expected-status.txt", &status::render(&s));
    expect(
        "tb-ready",
        "expected-status.json",
        &(serde_json::to_string_pretty(&s).unwrap() + "\n"),
    );
}

#[test]
fn insecure_without_module_or_configfs() {
    let r = root("tb-insecure");
    // No uevent files here: the peer is recognised by its attributes.
    let x = bus::xdomains(&r);
    assert_eq!(x.len(), 1);
    assert_eq!((x[0].name.as_str(), x[0].route), ("0-503", 0x503));
    let all = bus::services(&r);
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].driver.as_deref(), Some("thunderbolt-net"));
    let s = bus::stream_services(&r);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].name, "0-503.0");
    assert_eq!(s[0].driver, None);

    let st = status::collect(&r);
    assert!(!st.domains[0].domain.iommu_dma_protection);
    assert_eq!(st.warnings.len(), 1);
    assert!(st.warnings[0].starts_with("WARNING: domain0 has no IOMMU DMA protection"));
    assert_eq!(st.problems.len(), 2, "{:?}", st.problems);
    assert!(st.problems[0].contains("`modprobe thunderbolt_stream`"));
    assert!(st.problems[1].contains("`mount -t configfs none /sys/kernel/config`"));
    let module = st
        .modules
        .iter()
        .find(|m| m.name == "thunderbolt_stream")
        .unwrap();
    assert!(!module.loaded && module.available);
    let e = status::check_ready(&r).unwrap_err();
    assert!(
        e.contains("modprobe thunderbolt_stream") && e.contains("mount -t configfs"),
        "{e}"
    );
    expect("tb-insecure", "expected-status.txt", &status::render(&st));
}

#[test]
fn old_kernel_and_no_controller() {
    let t = tempfile::tempdir().unwrap();
    let put = |p: &str, v: &str| {
        let p = t.path().join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, v).unwrap();
    };
    put("proc/sys/kernel/osrelease", "6.12.48+deb13-amd64\n");
    put(
        "lib/modules/6.12.48+deb13-amd64/modules.dep",
        "kernel/drivers/thunderbolt/thunderbolt.ko.xz:\n",
    );
    put(
        "proc/self/mountinfo",
        "41 23 0:34 / /sys/kernel/config rw,relatime - configfs configfs rw\n",
    );
    let r = Root::new(t.path());
    let s = status::collect(&r);
    assert_eq!(s.kernel_supported, Some(false));
    assert_eq!(s.problems.len(), 2, "{:?}", s.problems);
    assert!(
        s.problems[0].contains("needs Linux >= 7.2"),
        "{:?}",
        s.problems
    );
    assert!(
        s.problems[1].contains("no Thunderbolt/USB4 host controller"),
        "{:?}",
        s.problems
    );
    assert!(status::render(&s).contains("too old"));

    // A new kernel that lacks the module says so instead of suggesting modprobe.
    put("proc/sys/kernel/osrelease", "7.2.0-custom\n");
    let s = status::collect(&r);
    assert!(
        s.problems[0].contains("has no thunderbolt_stream module"),
        "{:?}",
        s.problems
    );

    // Built in counts as loaded.
    put(
        "lib/modules/7.2.0-custom/modules.builtin",
        "kernel/drivers/thunderbolt/thunderbolt.ko\nkernel/drivers/thunderbolt/thunderbolt_stream.ko\n",
    );
    let s = status::collect(&r);
    assert!(
        s.modules.iter().all(|m| m.builtin && m.loaded),
        "{:?}",
        s.modules
    );
    assert_eq!(s.problems.len(), 2, "{:?}", s.problems);
    assert!(
        s.problems[0].contains("missing although thunderbolt_stream is loaded"),
        "{:?}",
        s.problems
    );
    assert!(status::render(&s).contains("thunderbolt_stream built in"));
}

#[test]
fn empty_root_does_not_panic() {
    let t = tempfile::tempdir().unwrap();
    let r = Root::new(t.path());
    assert!(bus::domains(&r).is_empty());
    assert!(bus::xdomains(&r).is_empty());
    assert!(bus::services(&r).is_empty());
    let s = status::collect(&r);
    assert_eq!(s.kernel_release, None);
    let text = status::render(&s);
    assert!(text.contains("Kernel:    unknown"), "{text}");
    assert!(status::check_ready(&r).is_err());
}
