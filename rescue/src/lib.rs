//! usb4rescue: back up and restore whole disks over a USB4/Thunderbolt cable.
//!
//! The `rescue` binary is a thin wrapper around this library; PID-1 mode, the tests
//! and the benchmarks use the same code. Read it in the order of the flow (see
//! docs/ARCHITECTURE.md): `cmd` (the commands), `boot` (PID 1: the rescue
//! system's init), `system` (the local machine's disks), `fabric` (the USB4
//! link), `session` (the peer), `xfer` (the data phase), `store` (the backups).

pub mod boot;
pub mod cmd;
pub mod fabric;
pub mod session;
pub mod store;
pub mod system;
pub mod wire;
pub mod xfer;

pub(crate) mod cancel;
pub mod exit;
pub(crate) mod root;
pub mod signals;
pub(crate) mod util;

pub use root::Root;
/// The wire protocol (the `usb4rescue-proto` crate).
pub use usb4rescue_proto as proto;
