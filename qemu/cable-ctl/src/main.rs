//! cable-ctl: host-side control and fault injection for the virtual USB4 cable.
//!
//! The cable is a shared-memory file that QEMU gives to two VMs as an `ivshmem-plain`
//! device. This tool maps the same file and talks to the virtual USB4 host modules in
//! both guests through control words in its header (layout: kmod/README.md and
//! kmod/vcable_layout.h). Every shared word has a single writer; the tool writes only the
//! header's control block (and the whole header at `init`).

mod shm;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use shm::{Shm, SideInfo};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cable-ctl",
    version,
    about = "Control and fault injection for the virtual USB4 cable between two VMs"
)]
struct Cli {
    /// Shared-memory file of the cable (the mem-path of QEMU's memory-backend-file)
    #[arg(long, value_name = "PATH")]
    shm: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dir {
    /// Frames sent by side a, received by side b
    A2b,
    /// Frames sent by side b, received by side a
    B2a,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (or resize) and initialise the shm file; run before QEMU starts
    Init {
        /// Size in bytes (the size= of QEMU's memory-backend-file; power of two)
        #[arg(long)]
        size: u64,
        /// Channels per direction (HopIDs 8..7+N); maxhopid is 7+N
        #[arg(long, default_value_t = 8)]
        channels: u32,
    },
    /// Print the cable state, both sides and frame/byte counters
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Unplug the cable: both VMs see the peer disappear (ENXIO, XDomain removed)
    Unplug,
    /// Plug the cable back in
    Plug,
    /// Corrupt the payload of the next N DATA frames in one direction (CRC error)
    Corrupt {
        #[arg(long, value_enum)]
        dir: Dir,
        #[arg(long)]
        frames: u32,
    },
    /// Cap the throughput of each direction, or with --hopid of one ring (bytes per second,
    /// 0 = unlimited)
    Rate {
        #[arg(long = "bytes-per-sec")]
        bytes_per_sec: u64,
        /// Cap only the ring of this HopID (the sender's out_hopid, the receiver's in_hopid);
        /// without it the cap is on everything each side sends
        #[arg(long)]
        hopid: Option<u32>,
        /// With --hopid: only this direction's ring (default: both)
        #[arg(long, value_enum, requires = "hopid")]
        dir: Option<Dir>,
    },
    /// Remove every fault but unplug: rate caps, delays and corruptions still pending
    Clear,
    /// Delay the frames of one ring, or of every ring: the receiver takes a frame from the
    /// cable only MS milliseconds after it got there (0 = no delay)
    Delay {
        #[arg(long)]
        ms: u32,
        /// Only the ring of this HopID (the sender's out_hopid, the receiver's in_hopid);
        /// default: every HopID
        #[arg(long)]
        hopid: Option<u32>,
        /// Only this direction (default: both)
        #[arg(long, value_enum)]
        dir: Option<Dir>,
    },
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::A2b => 0,
            Dir::B2a => 1,
        }
    }
}

fn dir_name(d: usize) -> &'static str {
    if d == 0 { "a2b" } else { "b2a" }
}

/// The (direction, channel) pairs a --dir/--hopid pair addresses, checked against the cable.
fn rings(s: &Shm, dir: Option<Dir>, hopid: Option<u32>) -> Result<Vec<(usize, u32)>> {
    let nchan = s.geometry().nchan;
    let chans: Vec<u32> = match hopid {
        Some(h) if (8..8 + nchan).contains(&h) => vec![h - 8],
        Some(h) => bail!(
            "--hopid {h}: this cable's HopIDs are 8..{} (cable-ctl init --channels)",
            7 + nchan
        ),
        None => (0..nchan).collect(),
    };
    let dirs = dir.map_or(vec![0, 1], |d| vec![d.index()]);
    Ok(dirs
        .into_iter()
        .flat_map(|d| chans.iter().map(move |&c| (d, c)))
        .collect())
}

fn which(dir: Option<Dir>, hopid: Option<u32>) -> String {
    let d = dir.map_or("both directions", |d| dir_name(d.index()));
    match hopid {
        Some(h) => format!("HopID {h}, {d}"),
        None => format!("every HopID, {d}"),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Init { size, channels } => {
            let geo = shm::init(&cli.shm, size, channels)?;
            println!(
                "initialised {}: {} bytes, {} channels (maxhopid {}), {} frames of 4096 bytes per ring",
                cli.shm.display(),
                size,
                geo.nchan,
                7 + geo.nchan,
                geo.nslots
            );
        }
        Cmd::Status { json } => status(&cli.shm, json)?,
        Cmd::Unplug => {
            let s = Shm::open(&cli.shm)?;
            s.set_plugged(false);
            println!("unplugged");
        }
        Cmd::Plug => {
            let s = Shm::open(&cli.shm)?;
            s.set_plugged(true);
            println!("plugged");
        }
        Cmd::Corrupt { dir, frames } => {
            let s = Shm::open(&cli.shm)?;
            s.add_corrupt(dir.index(), frames);
            println!(
                "corrupting the next {} frame(s) {}",
                frames,
                dir_name(dir.index())
            );
        }
        Cmd::Rate {
            bytes_per_sec,
            hopid: None,
            ..
        } => {
            let s = Shm::open(&cli.shm)?;
            s.set_rate(bytes_per_sec);
            if bytes_per_sec == 0 {
                println!("rate: unlimited");
            } else {
                println!("rate: {bytes_per_sec} bytes/s per direction");
            }
        }
        Cmd::Rate {
            bytes_per_sec,
            hopid,
            dir,
        } => {
            let s = Shm::open(&cli.shm)?;
            for (d, c) in rings(&s, dir, hopid)? {
                s.set_ring_rate(d, c, bytes_per_sec)?;
            }
            match bytes_per_sec {
                0 => println!("rate ({}): unlimited", which(dir, hopid)),
                n => println!("rate ({}): {n} bytes/s", which(dir, hopid)),
            }
        }
        Cmd::Clear => {
            let s = Shm::open(&cli.shm)?;
            s.clear_faults();
            println!("cleared: no rate cap, no delay, no corruption pending");
        }
        Cmd::Delay { ms, hopid, dir } => {
            let us = ms.checked_mul(1000).with_context(|| {
                format!(
                    "--ms {ms} is too long: at most {} ms (about 71 minutes)",
                    u32::MAX / 1000
                )
            })?;
            let s = Shm::open(&cli.shm)?;
            for (d, c) in rings(&s, dir, hopid)? {
                s.set_ring_delay(d, c, us)?;
            }
            println!("delay ({}): {ms} ms", which(dir, hopid));
        }
    }
    Ok(())
}

fn ring_faults_json(s: &Shm) -> serde_json::Value {
    s.ring_faults()
        .iter()
        .map(|f| {
            json!({
                "dir": dir_name(f.dir), "hopid": f.chan + 8,
                "delay_ms": f64::from(f.delay_us) / 1000.0, "rate_bytes_per_sec": f.rate,
            })
        })
        .collect()
}

fn side_json(s: &SideInfo) -> serde_json::Value {
    json!({
        "state": s.state_name(),
        "alive": s.alive,
        "hostname": s.hostname,
        "uuid": s.uuid,
        "session": s.session,
        "heartbeat": s.heartbeat,
        "link_up": s.link_up,
        "max_hopid": s.max_hopid,
        "tx_frames": s.tx_frames,
        "tx_bytes": s.tx_bytes,
        "rx_frames": s.rx_frames,
        "rx_bytes": s.rx_bytes,
        "crc_errors": s.crc_errors,
        "close_tx": s.close_tx,
        "close_rx": s.close_rx,
        "stale_drops": s.stale_drops,
        "corrupt_done": s.corrupt_done,
        "streams": s.props.iter().map(|p| json!({
            "name": p.0, "in_hopid": p.1, "out_hopid": p.2
        })).collect::<Vec<_>>(),
    })
}

fn status(path: &Path, as_json: bool) -> Result<()> {
    let s = Shm::open(path)?;
    let g = s.geometry();
    // Sample twice to tell a live side from a stale one (heartbeat every 100 ms).
    let first = [s.side(0), s.side(1)];
    std::thread::sleep(Duration::from_millis(300));
    let mut sides = [s.side(0), s.side(1)];
    for (i, side) in sides.iter_mut().enumerate() {
        side.alive = side.state == 1 && side.heartbeat != first[i].heartbeat;
    }
    let ctrl = s.control();
    let pending = [
        ctrl.corrupt_req[0].wrapping_sub(sides[1].corrupt_done) as i32,
        ctrl.corrupt_req[1].wrapping_sub(sides[0].corrupt_done) as i32,
    ];
    let link_up = ctrl.plugged && sides[0].alive && sides[1].alive;
    if as_json {
        let v = json!({
            "path": path.display().to_string(),
            "size": g.total_size,
            "channels": g.nchan,
            "maxhopid": 7 + g.nchan,
            "slots": g.nslots,
            "plugged": ctrl.plugged,
            "link_up": link_up,
            "rate_bytes_per_sec": ctrl.rate,
            "corrupt_requested": {"a2b": ctrl.corrupt_req[0], "b2a": ctrl.corrupt_req[1]},
            "corrupt_pending": {"a2b": pending[0].max(0), "b2a": pending[1].max(0)},
            "ring_faults": ring_faults_json(&s),
            "a": side_json(&sides[0]),
            "b": side_json(&sides[1]),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "cable {}: {} bytes, {} channels (maxhopid {}), {} frames/ring",
        path.display(),
        g.total_size,
        g.nchan,
        7 + g.nchan,
        g.nslots
    );
    println!(
        "plugged: {}   link: {}   rate cap: {}",
        if ctrl.plugged { "yes" } else { "no" },
        if link_up { "up" } else { "down" },
        if ctrl.rate == 0 {
            "unlimited".to_string()
        } else {
            format!("{} B/s", ctrl.rate)
        }
    );
    println!(
        "corrupt: a2b requested {} pending {}, b2a requested {} pending {}",
        ctrl.corrupt_req[0],
        pending[0].max(0),
        ctrl.corrupt_req[1],
        pending[1].max(0)
    );
    for f in s.ring_faults() {
        println!(
            "ring {} HopID {}: delay {} ms, rate cap {}",
            dir_name(f.dir),
            f.chan + 8,
            f64::from(f.delay_us) / 1000.0,
            if f.rate == 0 {
                "none".to_string()
            } else {
                format!("{} B/s", f.rate)
            }
        );
    }
    for (i, side) in sides.iter().enumerate() {
        print_side(if i == 0 { 'a' } else { 'b' }, side);
    }
    Ok(())
}

/// The text status of one side of the cable.
fn print_side(name: char, side: &SideInfo) {
    println!(
        "side {name}: {} {} host '{}' uuid {} session {} link_up {}",
        side.state_name(),
        if side.alive { "alive" } else { "silent" },
        side.hostname,
        side.uuid,
        side.session,
        side.link_up
    );
    println!(
        "  tx {} frames {} bytes | rx {} frames {} bytes | crc errors {} | close tx {} rx {} | stale {}",
        side.tx_frames,
        side.tx_bytes,
        side.rx_frames,
        side.rx_bytes,
        side.crc_errors,
        side.close_tx,
        side.close_rx,
        side.stale_drops
    );
    for p in &side.props {
        println!("  stream '{}' in_hopid {} out_hopid {}", p.0, p.1, p.2);
    }
}
