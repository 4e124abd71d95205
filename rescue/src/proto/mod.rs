//! Wire protocol v1 between two `rescue` processes (see docs/protocol.md):
//! `frame` is the framing with integrity checks, `msg` the messages, `conn` a
//! connection with a reader thread, keepalive and request retries.

pub mod conn;
pub mod frame;
pub mod msg;

/// Protocol version spoken by this build.
pub const PROTOCOL: u32 = 1;
