//! The wire protocol between two `rescue` processes (docs/protocol.md; its
//! version is `frame::VERSION`), as a crate of its own so every decoder can be
//! fuzzed and nothing of the tool leaks into it: `frame` is the framing with
//! integrity checks, `msg` the messages, `state` a backup's state as it
//! travels, `digests` the DIGESTS body and `ranges` the chunk index ranges,
//! normalised when decoded. The connection (threads, liveness, the byte stream)
//! is the tool's: rescue's `wire::conn`.

pub mod digests;
pub mod frame;
pub mod msg;
pub mod ranges;
pub mod state;

pub use ranges::ChunkRanges;
pub use state::BackupState;

/// Protocol version spoken by this build.
/// 2: sealing (issue 15); 3: used-block backups (FLAG_FREE, FREE_REQ/FREE);
/// 4: incremental backups (BACKUP_READY `base`, FLAG_UNCHANGED, NAK_DATA);
/// 5: a resumed used-block backup keeps its free maps (BACKUP_READY `free`).
/// 6: several streams (HELLO `streams` and `session`, JOIN).
pub const PROTOCOL: u32 = 6;
