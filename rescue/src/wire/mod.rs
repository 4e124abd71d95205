//! Bytes to and from the peer: the byte streams (a USB4STREAM device or a UNIX
//! socket), the framed connection over them, and the buffers chunks travel in.
//! Below `session` (which introduces the peer) and `xfer` (which moves the
//! data): both use a `Conn`, neither is used by it.

pub(crate) mod bufpool;
pub mod conn;
pub mod transport;
