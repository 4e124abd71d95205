//! cable-ctl: host-side control and fault injection for the usb4vcable virtual USB4 cable.
//!
//! The cable is a shared-memory file that QEMU gives to two VMs as an `ivshmem-plain`
//! device. This tool maps the same file and talks to the `usb4vcable` kernel modules in
//! both guests through control words in its header (layout: kmod/README.md and
//! kmod/usb4vcable.h). Every shared word has a single writer; the tool writes only the
//! header's control block (and the whole header at `init`).

mod shm;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use shm::{Shm, SideInfo};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cable-ctl",
    version,
    about = "Control and fault injection for the usb4vcable virtual USB4 cable"
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
    /// Cap the throughput of each direction (bytes per second, 0 = unlimited)
    Rate {
        #[arg(long = "bytes-per-sec")]
        bytes_per_sec: u64,
    },
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
            let d = match dir {
                Dir::A2b => 0,
                Dir::B2a => 1,
            };
            s.add_corrupt(d, frames);
            println!(
                "corrupting the next {} frame(s) {}",
                frames,
                if d == 0 { "a2b" } else { "b2a" }
            );
        }
        Cmd::Rate { bytes_per_sec } => {
            let s = Shm::open(&cli.shm)?;
            s.set_rate(bytes_per_sec);
            if bytes_per_sec == 0 {
                println!("rate: unlimited");
            } else {
                println!("rate: {bytes_per_sec} bytes/s per direction");
            }
        }
    }
    Ok(())
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
    for (i, side) in sides.iter().enumerate() {
        let name = if i == 0 { 'a' } else { 'b' };
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
    Ok(())
}
