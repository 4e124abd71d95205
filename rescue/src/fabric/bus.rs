//! Discovery on the Thunderbolt/USB4 bus in sysfs (/sys/bus/thunderbolt/devices):
//! host controllers (domains), this host's router, peer hosts (XDomains) and the
//! services they offer, so `rescue` can find the peer's USB4STREAM service.

use std::fs;

use serde::Serialize;

use crate::Root;
use crate::root::parse_u64;
use crate::system::disks::natural_cmp;

const DEVICES: &str = "/sys/bus/thunderbolt/devices";

/// A Thunderbolt/USB4 host controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Domain {
    /// "domain0".
    pub name: String,
    pub(crate) index: u32,
    /// none, user, secure, dponly, usbonly, nopcie.
    pub security: Option<String>,
    /// Whether the IOMMU protects memory from DMA by connected devices and hosts.
    pub iommu_dma_protection: bool,
    pub(crate) deauthorization: Option<bool>,
}

/// A router: this host's own (`N-0`) or a device such as a dock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Router {
    /// "0-0".
    pub(crate) name: String,
    pub(crate) domain: u32,
    pub(crate) route: u64,
    pub(crate) unique_id: Option<String>,
    pub device_name: Option<String>,
    pub(crate) vendor_name: Option<String>,
}

/// A peer host connected by cable (an XDomain), e.g. `0-1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XDomain {
    pub name: String,
    pub domain: u32,
    /// Route string of the peer (hex in the name: `0-503` is route 0x503).
    pub route: u64,
    /// The peer's host name, for a Linux peer.
    pub device_name: Option<String>,
    pub vendor_name: Option<String>,
    /// Numeric device and vendor ids, as sysfs shows them ("0x1").
    pub(crate) device: Option<String>,
    pub vendor: Option<String>,
    /// The peer's UUID.
    pub unique_id: Option<String>,
    /// Speed per lane, e.g. "20.0 Gb/s".
    pub rx_speed: Option<String>,
    pub(crate) tx_speed: Option<String>,
    pub rx_lanes: Option<u32>,
    pub tx_lanes: Option<u32>,
    /// Highest HopID the peer accepts; bounds how many streams fit.
    pub maxhopid: Option<u32>,
}

/// A service a peer host offers, e.g. `0-1.0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    /// The XDomain it belongs to, e.g. "0-1".
    pub xdomain: String,
    /// The protocol's property directory name: "stream", "network", ...
    pub(crate) key: Option<String>,
    pub prtcid: Option<u32>,
    pub prtcvers: Option<u32>,
    pub prtcrevs: Option<u32>,
    /// Service settings bitmask, as sysfs prints it ("0x00000000").
    pub prtcstns: Option<String>,
    pub modalias: Option<String>,
    /// The driver bound to it ("thunderbolt_stream"), from the `driver` link.
    pub driver: Option<String>,
}

impl Service {
    /// Whether this is a USB4STREAM service.
    pub(crate) fn is_stream(&self) -> bool {
        self.key.as_deref() == Some("stream") && self.prtcid == Some(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Domain,
    Router,
    XDomain,
    Service,
    Other,
}

/// Tells device kinds apart. The kernel's DEVTYPE in `uevent` is authoritative; without
/// it (trimmed trees), the name and attributes decide: a peer host is named like a
/// router but has no `authorized` attribute (there is nothing to authorize) and
/// publishes `maxhopid`, which routers never have.
fn kind_of(root: &Root, name: &str) -> Kind {
    let uevent =
        fs::read_to_string(root.path(format!("{DEVICES}/{name}/uevent"))).unwrap_or_default();
    let devtype = uevent.lines().find_map(|l| l.strip_prefix("DEVTYPE="));
    match devtype.map(str::trim) {
        Some("thunderbolt_domain") => return Kind::Domain,
        Some("thunderbolt_device") => return Kind::Router,
        Some("thunderbolt_xdomain") => return Kind::XDomain,
        Some("thunderbolt_service") => return Kind::Service,
        Some(_) => return Kind::Other,
        None => {}
    }
    if domain_index(name).is_some() {
        return Kind::Domain;
    }
    if let Some((xd, idx)) = name.split_once('.') {
        return if parse_route(xd).is_some() && idx.parse::<u32>().is_ok() {
            Kind::Service
        } else {
            Kind::Other
        };
    }
    match parse_route(name) {
        Some((_, 0)) => Kind::Router,
        Some(_) => {
            let has = |a: &str| root.path(format!("{DEVICES}/{name}/{a}")).exists();
            if has("maxhopid") || !has("authorized") {
                Kind::XDomain
            } else {
                Kind::Router
            }
        }
        None => Kind::Other,
    }
}

fn domain_index(name: &str) -> Option<u32> {
    name.strip_prefix("domain")?.parse().ok()
}

/// Parses "0-1" or "0-503" (the route is hex) into (domain, route).
fn parse_route(name: &str) -> Option<(u32, u64)> {
    let (d, r) = name.split_once('-')?;
    if d.is_empty() || r.is_empty() || !r.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((d.parse().ok()?, u64::from_str_radix(r, 16).ok()?))
}

/// Names of the devices on the bus, sorted so domain 0 and route 1 come first.
fn device_names(root: &Root) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(root.path(DEVICES)) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort_by(|a, b| natural_cmp(a, b));
    names
}

fn attr(root: &Root, name: &str, a: &str) -> Option<String> {
    root.read_attr(format!("{DEVICES}/{name}/{a}"))
        .filter(|s| !s.is_empty())
}

fn attr_u32(root: &Root, name: &str, a: &str) -> Option<u32> {
    attr(root, name, a)
        .and_then(|s| parse_u64(&s))
        .and_then(|v| u32::try_from(v).ok())
}

/// The host controllers.
pub fn domains(root: &Root) -> Vec<Domain> {
    device_names(root)
        .into_iter()
        .filter(|n| kind_of(root, n) == Kind::Domain)
        .filter_map(|name| {
            let index = domain_index(&name)?;
            Some(Domain {
                security: attr(root, &name, "security"),
                iommu_dma_protection: attr_u32(root, &name, "iommu_dma_protection") == Some(1),
                deauthorization: attr_u32(root, &name, "deauthorization").map(|v| v == 1),
                index,
                name,
            })
        })
        .collect()
}

/// This host's router in a domain (`N-0`).
pub(crate) fn host_router(root: &Root, domain: u32) -> Option<Router> {
    let name = format!("{domain}-0");
    if !root.path(format!("{DEVICES}/{name}")).exists() {
        return None;
    }
    Some(Router {
        unique_id: attr(root, &name, "unique_id"),
        device_name: attr(root, &name, "device_name"),
        vendor_name: attr(root, &name, "vendor_name"),
        domain,
        route: 0,
        name,
    })
}

/// This host's UUID in a domain, as peers see it.
pub fn local_uuid(root: &Root, domain: u32) -> Option<String> {
    host_router(root, domain)?.unique_id
}

/// Device routers (docks, storage enclosures): not peers, listed for completeness.
pub fn device_routers(root: &Root) -> Vec<Router> {
    device_names(root)
        .into_iter()
        .filter(|n| kind_of(root, n) == Kind::Router)
        .filter_map(|name| {
            let (domain, route) = parse_route(&name)?;
            (route != 0).then(|| Router {
                unique_id: attr(root, &name, "unique_id"),
                device_name: attr(root, &name, "device_name"),
                vendor_name: attr(root, &name, "vendor_name"),
                domain,
                route,
                name,
            })
        })
        .collect()
}

/// The peer hosts connected by cable.
pub fn xdomains(root: &Root) -> Vec<XDomain> {
    device_names(root)
        .into_iter()
        .filter(|n| kind_of(root, n) == Kind::XDomain)
        .filter_map(|name| read_xdomain(root, &name))
        .collect()
}

fn read_xdomain(root: &Root, name: &str) -> Option<XDomain> {
    let (domain, route) = parse_route(name)?;
    Some(XDomain {
        name: name.to_string(),
        domain,
        route,
        device_name: attr(root, name, "device_name"),
        vendor_name: attr(root, name, "vendor_name"),
        device: attr(root, name, "device"),
        vendor: attr(root, name, "vendor"),
        unique_id: attr(root, name, "unique_id"),
        rx_speed: attr(root, name, "rx_speed"),
        tx_speed: attr(root, name, "tx_speed"),
        rx_lanes: attr_u32(root, name, "rx_lanes"),
        tx_lanes: attr_u32(root, name, "tx_lanes"),
        maxhopid: attr_u32(root, name, "maxhopid"),
    })
}

/// Every service offered by a peer host.
pub fn services(root: &Root) -> Vec<Service> {
    device_names(root)
        .into_iter()
        .filter(|n| kind_of(root, n) == Kind::Service)
        .filter_map(|name| {
            let (xd, _) = name.split_once('.')?;
            let driver = fs::read_link(root.path(format!("{DEVICES}/{name}/driver")))
                .ok()
                .and_then(|t| t.file_name().map(|f| f.to_string_lossy().into_owned()));
            Some(Service {
                xdomain: xd.to_string(),
                key: attr(root, &name, "key"),
                prtcid: attr_u32(root, &name, "prtcid"),
                prtcvers: attr_u32(root, &name, "prtcvers"),
                prtcrevs: attr_u32(root, &name, "prtcrevs"),
                prtcstns: attr(root, &name, "prtcstns"),
                modalias: attr(root, &name, "modalias"),
                driver,
                name,
            })
        })
        .collect()
}

/// The USB4STREAM services (key "stream", protocol id 1).
pub fn stream_services(root: &Root) -> Vec<Service> {
    services(root)
        .into_iter()
        .filter(Service::is_stream)
        .collect()
}

/// The peer host offering a service.
pub fn xdomain_of(root: &Root, service: &Service) -> Option<XDomain> {
    if !root.path(format!("{DEVICES}/{}", service.xdomain)).exists() {
        return None;
    }
    read_xdomain(root, &service.xdomain)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes() {
        assert_eq!(parse_route("0-1"), Some((0, 1)));
        assert_eq!(parse_route("1-503"), Some((1, 0x503)));
        assert_eq!(parse_route("0-0"), Some((0, 0)));
        assert_eq!(parse_route("0-"), None);
        assert_eq!(parse_route("-1"), None);
        assert_eq!(parse_route("0-1:1.1"), None);
        assert_eq!(parse_route("0-ffffffffffffffffff"), None);
        assert_eq!(domain_index("domain12"), Some(12));
        assert_eq!(domain_index("domainx"), None);
    }

    #[test]
    fn classifies_without_uevent() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        let dev = |n: &str, attrs: &[&str]| {
            let d = root.path(format!("{DEVICES}/{n}"));
            fs::create_dir_all(&d).unwrap();
            for a in attrs {
                fs::write(d.join(a), "1\n").unwrap();
            }
        };
        dev("domain0", &["security"]);
        dev("0-0", &["authorized"]);
        dev("0-1", &["maxhopid"]);
        dev("0-3", &["authorized"]);
        dev("0-5", &[]);
        dev("0-1.0", &["key"]);
        dev("0-0:1.1", &[]);
        dev("usb4_port1", &[]);
        assert_eq!(kind_of(&root, "domain0"), Kind::Domain);
        assert_eq!(kind_of(&root, "0-0"), Kind::Router);
        assert_eq!(kind_of(&root, "0-1"), Kind::XDomain);
        assert_eq!(kind_of(&root, "0-3"), Kind::Router);
        assert_eq!(kind_of(&root, "0-5"), Kind::XDomain);
        assert_eq!(kind_of(&root, "0-1.0"), Kind::Service);
        assert_eq!(kind_of(&root, "0-0:1.1"), Kind::Other);
        assert_eq!(kind_of(&root, "usb4_port1"), Kind::Other);
        let names: Vec<String> = xdomains(&root).into_iter().map(|x| x.name).collect();
        assert_eq!(names, ["0-1", "0-5"]);
    }
}
