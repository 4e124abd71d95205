//! usb4rescue: back up and restore whole disks over a USB4/Thunderbolt cable.
//!
//! The `rescue` binary is a thin wrapper around this library; PID-1 mode, the tests
//! and the benchmarks use the same code. See docs/ARCHITECTURE.md for the map.

pub mod app;
pub mod auth;
pub mod backup;
pub mod blkdev;
pub mod bufpool;
pub mod busy;
pub mod cancel;
pub mod catcmd;
pub mod cli;
pub mod direct;
pub mod disks;
pub mod exit;
pub mod fabric;
pub mod fsprobe;
pub mod identity;
pub mod init;
pub mod modload;
pub mod mountinfo;
pub mod partitions;
pub mod progress;
pub mod proto;
pub mod readahead;
pub mod restore;
pub mod root;
pub mod serve;
pub mod session;
pub mod sha256x2;
pub mod signals;
pub mod source;
pub mod store;
pub mod transport;
pub mod util;
pub mod verify;
pub mod xfer;

pub use root::Root;
