//! Wire protocol v1 between two `rescue` processes (see docs/protocol.md): the
//! framing and the messages are the `usb4rescue-proto` crate, re-exported here;
//! `conn` is this tool's connection over them, with a reader thread, keepalive
//! and request retries.

pub mod conn;

pub use usb4rescue_proto::{PROTOCOL, digests, frame, msg};
