//! usb4rescue: back up and restore whole disks over a USB4/Thunderbolt cable.
//!
//! The `rescue` binary is a thin wrapper around this library; PID-1 mode, the tests
//! and the benchmarks use the same code. See docs/ARCHITECTURE.md for the map.

pub mod cli;
pub mod disks;
pub mod exit;
pub mod fabric;
pub mod init;
pub mod modload;
pub mod mountinfo;
pub mod partitions;
pub mod root;

pub use root::Root;
