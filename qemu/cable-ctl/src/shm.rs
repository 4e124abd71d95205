//! The virtual cable's shared-memory layout (mirror of kmod/vcable_layout.h, version 1; the
//! `c_header_agrees` test checks every offset here against that header's static_asserts).

use anyhow::{Context, Result, bail};
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr;

pub const MAGIC: u64 = 0x3142_4356_3442_5355; // "USB4VCB1"
pub const VERSION: u32 = 1;
pub const HDR_SIZE: u64 = 0x3000;
pub const FRAME_SIZE: u64 = 4096;
pub const DESC_SIZE: u64 = 16;
pub const MAX_CHAN: u32 = 32;
pub const MAX_PROPS: usize = 16;

// Header offsets
const H_MAGIC: usize = 0x000;
const H_VERSION: usize = 0x008;
const H_HDR_SIZE: usize = 0x00c;
const H_TOTAL: usize = 0x010;
const H_NCHAN: usize = 0x018;
const H_NSLOTS: usize = 0x01c;
const H_FRAME: usize = 0x020;
const H_RINGS_OFF: usize = 0x028;
const H_STRIDE: usize = 0x030;
const H_PLUGGED: usize = 0x100;
const H_CTRL_GEN: usize = 0x104;
const H_RATE: usize = 0x108;
const H_CORRUPT: usize = 0x110;
const H_RING_DELAY: usize = 0x200; // u32 [2][MAX_CHAN], microseconds
const H_RING_RATE: usize = 0x300; // u64 [2][MAX_CHAN], bytes/s

// Side area offsets (side a at 0x1000, side b at 0x2000)
const S_HEARTBEAT: usize = 0x008;
const S_STATE: usize = 0x010;
const S_SESSION: usize = 0x014;
const S_UUID: usize = 0x018;
const S_HOSTNAME: usize = 0x028;
const S_HOSTNAME_LEN: usize = 72;
const S_LINK_UP: usize = 0x070;
const S_MAX_HOPID: usize = 0x074;
const S_COUNTERS: usize = 0x080;
const S_CORRUPT_DONE: usize = 0x0c0;
const S_PROPS_GEN: usize = 0x100;
const S_PROPS_COUNT: usize = 0x104;
const S_PROPS: usize = 0x108;
const PROP_SIZE: usize = 20;

pub struct Geometry {
    pub total_size: u64,
    pub nchan: u32,
    pub nslots: u32,
}

pub struct Control {
    pub plugged: bool,
    pub rate: u64,
    pub corrupt_req: [u32; 2],
}

/// cable-ctl's faults on one ring: direction (0 = a2b, 1 = b2a) and channel (HopID - 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFault {
    pub dir: usize,
    pub chan: u32,
    pub delay_us: u32,
    pub rate: u64,
}

#[derive(Default, Clone)]
pub struct SideInfo {
    pub state: u32,
    pub alive: bool,
    pub heartbeat: u64,
    pub session: u32,
    pub uuid: String,
    pub hostname: String,
    pub link_up: u32,
    pub max_hopid: u32,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub crc_errors: u64,
    pub close_tx: u64,
    pub close_rx: u64,
    pub stale_drops: u64,
    pub corrupt_done: u32,
    pub props: Vec<(String, i32, i32)>,
}

impl SideInfo {
    pub fn state_name(&self) -> &'static str {
        match self.state {
            0 => "free",
            1 => "present",
            _ => "invalid",
        }
    }
}

/// A mapping of the cable's shared memory.
pub struct Shm {
    base: *mut u8,
    len: usize,
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: base/len come from a successful mmap in map().
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

fn map(path: &Path, create: Option<u64>) -> Result<Shm> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create.is_some())
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if let Some(size) = create {
        let cur = f.metadata()?.len();
        if cur != size {
            f.set_len(size)
                .with_context(|| format!("cannot resize {} to {size}", path.display()))?;
        }
    }
    let len = f.metadata()?.len();
    if len < HDR_SIZE {
        bail!(
            "{} is {} bytes: too small for a virtual USB4 cable",
            path.display(),
            len
        );
    }
    let len = usize::try_from(len)?;
    // SAFETY: mapping a regular file we opened read-write; the mapping outlives f.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!(
            "mmap of {} failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(Shm {
        base: p.cast(),
        len,
    })
}

impl Shm {
    /// Map an initialised cable; fails with a clear message if `init` was not run.
    pub fn open(path: &Path) -> Result<Shm> {
        let s = map(path, None)?;
        let magic = s.r64(H_MAGIC);
        if magic != MAGIC {
            bail!(
                "{} is not an initialised virtual USB4 cable (magic {:#x}); run `cable-ctl --shm {} init --size BYTES` before starting the VMs",
                path.display(),
                magic,
                path.display()
            );
        }
        let v = s.r32(H_VERSION);
        if v != VERSION {
            bail!("cable layout version {v}, this tool speaks {VERSION}");
        }
        Ok(s)
    }

    fn check(&self, off: usize, n: usize) {
        assert!(off + n <= self.len, "offset {off:#x} outside the mapping");
    }

    pub fn r32(&self, off: usize) -> u32 {
        self.check(off, 4);
        // SAFETY: in bounds (checked), 4-byte aligned offsets in the layout.
        unsafe { ptr::read_volatile(self.base.add(off).cast::<u32>()) }
    }

    pub fn r64(&self, off: usize) -> u64 {
        self.check(off, 8);
        // SAFETY: as above, 8-byte aligned.
        unsafe { ptr::read_volatile(self.base.add(off).cast::<u64>()) }
    }

    pub fn w32(&self, off: usize, v: u32) {
        self.check(off, 4);
        // SAFETY: as above.
        unsafe { ptr::write_volatile(self.base.add(off).cast::<u32>(), v) }
    }

    pub fn w64(&self, off: usize, v: u64) {
        self.check(off, 8);
        // SAFETY: as above.
        unsafe { ptr::write_volatile(self.base.add(off).cast::<u64>(), v) }
    }

    fn bytes(&self, off: usize, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| {
                self.check(off + i, 1);
                // SAFETY: in bounds.
                unsafe { ptr::read_volatile(self.base.add(off + i)) }
            })
            .collect()
    }

    fn bump_gen(&self) {
        self.w32(H_CTRL_GEN, self.r32(H_CTRL_GEN).wrapping_add(1));
    }

    pub fn geometry(&self) -> Geometry {
        Geometry {
            total_size: self.r64(H_TOTAL),
            nchan: self.r32(H_NCHAN),
            nslots: self.r32(H_NSLOTS),
        }
    }

    pub fn control(&self) -> Control {
        Control {
            plugged: self.r32(H_PLUGGED) != 0,
            rate: self.r64(H_RATE),
            corrupt_req: [self.r32(H_CORRUPT), self.r32(H_CORRUPT + 4)],
        }
    }

    pub fn set_plugged(&self, on: bool) {
        self.w32(H_PLUGGED, u32::from(on));
        self.bump_gen();
    }

    pub fn set_rate(&self, bps: u64) {
        self.w64(H_RATE, bps);
        self.bump_gen();
    }

    pub fn add_corrupt(&self, dir: usize, n: u32) {
        let off = H_CORRUPT + 4 * dir;
        self.w32(off, self.r32(off).wrapping_add(n));
        self.bump_gen();
    }

    fn ring_index(&self, dir: usize, chan: u32) -> Result<usize> {
        let nchan = self.geometry().nchan;
        if dir > 1 || chan >= nchan.min(MAX_CHAN) {
            bail!(
                "no ring for HopID {} on this cable: HopIDs are 8..{} (cable-ctl init --channels)",
                u64::from(chan) + 8,
                7 + nchan
            );
        }
        Ok(dir * MAX_CHAN as usize + chan as usize)
    }

    /// Delay the frames of one ring by `us` microseconds (0 = none).
    pub fn set_ring_delay(&self, dir: usize, chan: u32, us: u32) -> Result<()> {
        let i = self.ring_index(dir, chan)?;
        self.w32(H_RING_DELAY + 4 * i, us);
        self.bump_gen();
        Ok(())
    }

    /// Cap what the sender moves into one ring (bytes/s, 0 = none).
    pub fn set_ring_rate(&self, dir: usize, chan: u32, bps: u64) -> Result<()> {
        let i = self.ring_index(dir, chan)?;
        self.w64(H_RING_RATE + 8 * i, bps);
        self.bump_gen();
        Ok(())
    }

    /// No rate caps, no delays, no corruption pending (what each receiver has done of
    /// the requested corruptions becomes the request).
    pub fn clear_faults(&self) {
        self.w64(H_RATE, 0);
        for i in 0..2 * MAX_CHAN as usize {
            self.w32(H_RING_DELAY + 4 * i, 0);
            self.w64(H_RING_RATE + 8 * i, 0);
        }
        // corrupt_req[a2b] is consumed by side b, corrupt_req[b2a] by side a.
        for dir in 0..2 {
            let done = self.r32(0x1000 * (2 - dir) + S_CORRUPT_DONE);
            self.w32(H_CORRUPT + 4 * dir, done);
        }
        self.bump_gen();
    }

    /// The rings with a delay or a rate cap set.
    pub fn ring_faults(&self) -> Vec<RingFault> {
        let nchan = self.geometry().nchan.min(MAX_CHAN);
        let mut v = Vec::new();
        for dir in 0..2 {
            for chan in 0..nchan {
                let i = dir * MAX_CHAN as usize + chan as usize;
                let f = RingFault {
                    dir,
                    chan,
                    delay_us: self.r32(H_RING_DELAY + 4 * i),
                    rate: self.r64(H_RING_RATE + 8 * i),
                };
                if f.delay_us != 0 || f.rate != 0 {
                    v.push(f);
                }
            }
        }
        v
    }

    pub fn side(&self, s: usize) -> SideInfo {
        let b = 0x1000 * (s + 1);
        let u = self.bytes(b + S_UUID, 16);
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            hex(&u[0..4]),
            hex(&u[4..6]),
            hex(&u[6..8]),
            hex(&u[8..10]),
            hex(&u[10..16])
        );
        let hn = self.bytes(b + S_HOSTNAME, S_HOSTNAME_LEN);
        let end = hn.iter().position(|&c| c == 0).unwrap_or(hn.len());
        let c = |i: usize| self.r64(b + S_COUNTERS + 8 * i);
        let mut props = Vec::new();
        // Seqlock read of the published stream directories.
        for _ in 0..100 {
            let g = self.r32(b + S_PROPS_GEN);
            if g & 1 == 1 {
                std::thread::yield_now();
                continue;
            }
            props.clear();
            let n = (self.r32(b + S_PROPS_COUNT) as usize).min(MAX_PROPS);
            for i in 0..n {
                let o = b + S_PROPS + i * PROP_SIZE;
                let name = self.bytes(o, 12);
                let e = name.iter().position(|&c| c == 0).unwrap_or(12);
                props.push((
                    String::from_utf8_lossy(&name[..e]).into_owned(),
                    self.r32(o + 12) as i32,
                    self.r32(o + 16) as i32,
                ));
            }
            if self.r32(b + S_PROPS_GEN) == g {
                break;
            }
        }
        SideInfo {
            state: self.r32(b + S_STATE),
            alive: false,
            heartbeat: self.r64(b + S_HEARTBEAT),
            session: self.r32(b + S_SESSION),
            uuid,
            hostname: String::from_utf8_lossy(&hn[..end]).into_owned(),
            link_up: self.r32(b + S_LINK_UP),
            max_hopid: self.r32(b + S_MAX_HOPID),
            tx_frames: c(0),
            tx_bytes: c(1),
            rx_frames: c(2),
            rx_bytes: c(3),
            crc_errors: c(4),
            close_tx: c(5),
            close_rx: c(6),
            stale_drops: c(7),
            corrupt_done: self.r32(b + S_CORRUPT_DONE),
            props,
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Ring geometry for a region of `size` bytes: the most frames per ring (a power of
/// two) such that 2 * `nchan` rings fit after the header.
pub fn layout(size: u64, nchan: u32) -> Result<(u32, u64)> {
    if nchan == 0 || nchan > MAX_CHAN {
        bail!("--channels must be 1..{MAX_CHAN}");
    }
    let stride =
        |slots: u64| (slots * DESC_SIZE).div_ceil(FRAME_SIZE) * FRAME_SIZE + slots * FRAME_SIZE;
    let mut slots: u64 = 4;
    if HDR_SIZE + 2 * u64::from(nchan) * stride(slots) > size {
        bail!(
            "{size} bytes is too small for {nchan} channels (need at least {})",
            HDR_SIZE + 2 * u64::from(nchan) * stride(4)
        );
    }
    while slots < 4096 && HDR_SIZE + 2 * u64::from(nchan) * stride(slots * 2) <= size {
        slots *= 2;
    }
    Ok((u32::try_from(slots)?, stride(slots)))
}

/// Create or resize the file and write a fresh header (plugged, no faults).
pub fn init(path: &Path, size: u64, nchan: u32) -> Result<Geometry> {
    if !size.is_power_of_two() {
        bail!("--size must be a power of two (QEMU ivshmem requires it)");
    }
    let (nslots, stride) = layout(size, nchan)?;
    let s = map(path, Some(size))?;
    // Invalidate first, clear header and both side areas, then publish the magic last.
    s.w64(H_MAGIC, 0);
    for off in (8..HDR_SIZE as usize).step_by(8) {
        s.w64(off, 0);
    }
    s.w32(H_VERSION, VERSION);
    s.w32(H_HDR_SIZE, HDR_SIZE as u32);
    s.w64(H_TOTAL, size);
    s.w32(H_NCHAN, nchan);
    s.w32(H_NSLOTS, nslots);
    s.w32(H_FRAME, FRAME_SIZE as u32);
    s.w64(H_RINGS_OFF, HDR_SIZE);
    s.w64(H_STRIDE, stride);
    s.w32(H_PLUGGED, 1);
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    s.w64(H_MAGIC, MAGIC);
    Ok(Geometry {
        total_size: size,
        nchan,
        nslots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_16m() {
        let (slots, stride) = layout(16 << 20, 8).unwrap();
        assert_eq!(slots, 128);
        assert_eq!(stride, 4096 + 128 * 4096);
    }

    #[test]
    fn layout_4m() {
        let (slots, _) = layout(4 << 20, 8).unwrap();
        assert_eq!(slots, 32);
    }

    fn scratch_cable(name: &str, channels: u32) -> (std::path::PathBuf, Shm) {
        let dir = std::env::temp_dir().join(format!("cable-ctl-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cab");
        init(&path, 4 << 20, channels).unwrap();
        let s = Shm::open(&path).unwrap();
        (dir, s)
    }

    #[test]
    fn ring_faults_land_in_their_words() {
        let (dir, s) = scratch_cable("faults", 8);
        assert!(
            s.ring_faults().is_empty(),
            "a fresh cable has no ring faults"
        );
        s.set_ring_delay(0, 2, 250_000).unwrap();
        s.set_ring_rate(1, 7, 1 << 20).unwrap();
        // The words the modules read: ring_delay_us[0][2], ring_rate_bps[1][7].
        assert_eq!(s.r32(H_RING_DELAY + 4 * 2), 250_000);
        assert_eq!(s.r64(H_RING_RATE + 8 * (MAX_CHAN as usize + 7)), 1 << 20);
        assert_eq!(
            s.ring_faults(),
            vec![
                RingFault {
                    dir: 0,
                    chan: 2,
                    delay_us: 250_000,
                    rate: 0
                },
                RingFault {
                    dir: 1,
                    chan: 7,
                    delay_us: 0,
                    rate: 1 << 20
                },
            ]
        );
        s.set_rate(5000);
        s.add_corrupt(0, 3);
        s.clear_faults();
        assert!(s.ring_faults().is_empty());
        assert_eq!(s.control().rate, 0);
        assert_eq!(
            s.control().corrupt_req,
            [0, 0],
            "side b has corrupted none yet"
        );
        // HopID 16 is channel 8: not on an 8-channel cable.
        let err = s.set_ring_delay(0, 8, 1).unwrap_err().to_string();
        assert!(err.contains("HopID 16") && err.contains("8..15"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn too_small() {
        assert!(layout(64 << 10, 8).is_err());
    }

    /// The one definition of the layout is kmod/vcable_layout.h: its `static_assert(offsetof(...))`
    /// and `static_assert(sizeof(...))` lines and `#define USB4VC_*` constants.
    const C_HEADER: &str = include_str!("../../../kmod/vcable_layout.h");

    fn c_asserts() -> std::collections::HashMap<String, usize> {
        let mut m = std::collections::HashMap::new();
        for line in C_HEADER.lines() {
            let Some(rest) = line.strip_prefix("static_assert(") else {
                continue;
            };
            let (expr, value) = rest
                .trim_end_matches(");")
                .split_once(" == ")
                .expect("static_assert(X == N);");
            let value = match value.strip_prefix("0x") {
                Some(hex) => usize::from_str_radix(hex, 16),
                None => value.parse(),
            }
            .expect("a number");
            let key = expr
                .replace("offsetof(struct ", "")
                .replace("sizeof(struct ", "sizeof ")
                .replace(')', "")
                .replace(", ", ".");
            m.insert(key, value);
        }
        m
    }

    fn c_define(name: &str) -> u64 {
        let line = C_HEADER
            .lines()
            .find(|l| {
                l.starts_with(&format!("#define {name}\t"))
                    || l.starts_with(&format!("#define {name} "))
            })
            .unwrap_or_else(|| panic!("{name} not defined in vcable_layout.h"));
        let v = line.split_whitespace().nth(2).expect("a value");
        let v = v.trim_end_matches("ULL");
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).expect("hex"),
            None => v.parse().expect("decimal"),
        }
    }

    #[test]
    fn c_header_agrees() {
        let c = c_asserts();
        let ours: &[(&str, usize)] = &[
            ("usb4vc_hdr.magic", H_MAGIC),
            ("usb4vc_hdr.version", H_VERSION),
            ("usb4vc_hdr.hdr_size", H_HDR_SIZE),
            ("usb4vc_hdr.total_size", H_TOTAL),
            ("usb4vc_hdr.nchan", H_NCHAN),
            ("usb4vc_hdr.nslots", H_NSLOTS),
            ("usb4vc_hdr.frame_size", H_FRAME),
            ("usb4vc_hdr.rings_off", H_RINGS_OFF),
            ("usb4vc_hdr.ring_stride", H_STRIDE),
            ("usb4vc_hdr.plugged", H_PLUGGED),
            ("usb4vc_hdr.ctrl_gen", H_CTRL_GEN),
            ("usb4vc_hdr.rate_bps", H_RATE),
            ("usb4vc_hdr.corrupt_req", H_CORRUPT),
            ("usb4vc_hdr.ring_delay_us", H_RING_DELAY),
            ("usb4vc_hdr.ring_rate_bps", H_RING_RATE),
            ("usb4vc_side.heartbeat", S_HEARTBEAT),
            ("usb4vc_side.state", S_STATE),
            ("usb4vc_side.session", S_SESSION),
            ("usb4vc_side.uuid", S_UUID),
            ("usb4vc_side.hostname", S_HOSTNAME),
            ("usb4vc_side.link_up", S_LINK_UP),
            ("usb4vc_side.max_hopid", S_MAX_HOPID),
            ("usb4vc_side.tx_frames", S_COUNTERS),
            ("usb4vc_side.corrupt_done", S_CORRUPT_DONE),
            ("usb4vc_side.props_gen", S_PROPS_GEN),
            ("usb4vc_side.props_count", S_PROPS_COUNT),
            ("usb4vc_side.props", S_PROPS),
            ("sizeof usb4vc_prop", PROP_SIZE),
            ("sizeof usb4vc_desc", DESC_SIZE as usize),
        ];
        for (key, off) in ours {
            assert_eq!(
                c.get(*key),
                Some(off),
                "{key}: cable-ctl has {off:#x}, vcable_layout.h says otherwise"
            );
        }
        assert_eq!(c_define("USB4VC_MAGIC"), MAGIC);
        assert_eq!(c_define("USB4VC_VERSION"), u64::from(VERSION));
        assert_eq!(c_define("USB4VC_HDR_SIZE"), HDR_SIZE);
        assert_eq!(c_define("USB4VC_FRAME_SIZE"), FRAME_SIZE);
        assert_eq!(c_define("USB4VC_MAX_CHAN"), u64::from(MAX_CHAN));
        assert_eq!(c_define("USB4VC_MAX_PROPS"), MAX_PROPS as u64);
        assert_eq!(c_define("USB4VC_HOSTNAME"), S_HOSTNAME_LEN as u64);
        // Side areas follow the header page; the rings follow the side areas.
        assert_eq!(c.get("sizeof usb4vc_hdr"), Some(&0x1000));
        assert_eq!(c.get("sizeof usb4vc_side"), Some(&0x1000));
    }
}
