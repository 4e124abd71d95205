//! Messages of the protocol (`crate::PROTOCOL`): their type numbers, the JSON
//! bodies of control messages and the binary layout of data chunks. See
//! docs/protocol.md.

use serde::{Deserialize, Serialize};

use crate::frame::Frame;
pub use crate::ranges::ChunkRanges;
pub use crate::state::BackupState;

/// Message types (the `kind` byte of a frame header).
pub mod kind {
    pub const HELLO: u8 = 1;
    pub const ERROR: u8 = 2;
    pub const BACKUP_BEGIN: u8 = 3;
    pub const BACKUP_READY: u8 = 4;
    pub const CHUNK: u8 = 5;
    pub const ACK: u8 = 6;
    pub const NAK: u8 = 7;
    pub const DISK_END: u8 = 8;
    pub const DISK_DONE: u8 = 9;
    pub const SESSION_END: u8 = 10;
    pub const SESSION_DONE: u8 = 11;
    pub const LIST: u8 = 12;
    pub const LISTING: u8 = 13;
    pub const RESTORE_BEGIN: u8 = 14;
    pub const RESTORE_READY: u8 = 15;
    pub const PING: u8 = 16;
    pub const BYE: u8 = 17;
    pub const DIGESTS_REQ: u8 = 18;
    pub const DIGESTS: u8 = 19;
    pub const FREE_REQ: u8 = 20;
    pub const FREE: u8 = 21;
    pub const JOIN: u8 = 22;

    pub fn name(k: u8) -> &'static str {
        match k {
            HELLO => "HELLO",
            ERROR => "ERROR",
            BACKUP_BEGIN => "BACKUP_BEGIN",
            BACKUP_READY => "BACKUP_READY",
            CHUNK => "CHUNK",
            ACK => "ACK",
            NAK => "NAK",
            DISK_END => "DISK_END",
            DISK_DONE => "DISK_DONE",
            SESSION_END => "SESSION_END",
            SESSION_DONE => "SESSION_DONE",
            LIST => "LIST",
            LISTING => "LISTING",
            RESTORE_BEGIN => "RESTORE_BEGIN",
            RESTORE_READY => "RESTORE_READY",
            PING => "PING",
            BYE => "BYE",
            DIGESTS_REQ => "DIGESTS_REQ",
            DIGESTS => "DIGESTS",
            FREE_REQ => "FREE_REQ",
            FREE => "FREE",
            JOIN => "JOIN",
            _ => "unknown",
        }
    }
}

/// Chunk flag: the chunk is all zeros and carries no data.
pub const FLAG_ZERO: u16 = 1;
/// Chunk flag (restore): the store cannot produce this chunk intact (its bytes
/// no longer match the digest recorded at backup time); no data, no digest.
/// Sent only to a client whose RESTORE_BEGIN says `accepts_damaged`.
pub const FLAG_DAMAGED: u16 = 2;
/// Chunk flag (protocol 3): parts of the chunk are free space of a recognised
/// filesystem (used-block backups): the body lists them after the unreadable ranges,
/// the data carries only the bytes outside them, and the digest covers the chunk as
/// stored, with the free parts as zeros.
pub const FLAG_FREE: u16 = 4;
/// Chunk flag (backup, protocol 4): the chunk's SHA-256 is the one the base
/// backup's journal holds for it (BACKUP_READY `base`); no data, the digest in
/// the body, no unreadable ranges, no free ranges (the digest covers the chunk
/// as stored, free parts as zeros, so a chunk whose free map changed is still
/// unchanged when its stored bytes are the same). The receiver fills it from
/// the base after checking the base's copy against that digest.
pub const FLAG_UNCHANGED: u16 = 8;
/// NAK flag: send this chunk with its data (it was marked unchanged, but the
/// base cannot provide it: its copy failed the check, or there is no base).
pub const NAK_DATA: u16 = 1;

/// Largest JSON body accepted for a control message.
pub const MAX_CONTROL: usize = 4 * 1024 * 1024;

/// Who a peer is. Both sides print the other's identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub hostname: String,
    #[serde(default)]
    pub machine_id: String,
    #[serde(default)]
    pub dmi_vendor: String,
    #[serde(default)]
    pub dmi_product: String,
    #[serde(default)]
    pub dmi_serial: String,
    pub tool_version: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Serve,
    Backup,
    Restore,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub min_protocol: u32,
    pub role: Role,
    pub identity: Identity,
    /// Protocol 6: the data streams this side can use (a client: wants; serve:
    /// accepts). Absent or 0: one. The session uses the smaller of the two.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub streams: u32,
    /// Protocol 6, serve only: the token each further stream of this session
    /// presents in its JOIN (random, hex).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
}

/// Protocol 6: the first message on a session's further stream (client), and
/// serve's answer on it once the stream is part of the session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Join {
    /// The token of serve's HELLO.
    pub session: String,
    /// Which stream this is, 1 to streams - 1 (0 is the one HELLO went over).
    pub stream: u32,
}

/// An error that crosses the wire: the peer prints `message` and stops.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Machine-readable: "no_space", "bad_request", "not_found", "busy", "io", ...
    pub code: String,
    pub message: String,
}

/// Describes one disk of a backup.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Short name as on the source machine ("nvme0n1", or an image file's stem).
    pub name: String,
    /// Where it was read from ("/dev/nvme0n1").
    pub source_path: String,
    pub size: u64,
    pub logical_sector_size: u32,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    /// Full metadata from `rescue disks` when the source is a block device.
    #[serde(default)]
    pub details: Option<serde_json::Value>,
    /// A used-block backup (protocol 3): what is not read of this disk and why.
    /// Absent: every byte is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<FreeMap>,
}

/// What a used-block backup leaves out of one disk: the free space of the
/// filesystems it recognised, stored as zeros (holes), so the image's bytes there
/// are not the source's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeMap {
    /// Free byte ranges of the disk, `[start, end)`: sorted, disjoint, not empty,
    /// each inside one partition of `parts` that was copied by its used blocks.
    pub ranges: Vec<(u64, u64)>,
    /// Every partition (and a whole-disk filesystem), with what was recognised.
    pub parts: Vec<PartUse>,
}

/// One partition of a used-block backup and the decision taken for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartUse {
    /// The partition's name ("sda2"; the disk's own name for a whole-disk filesystem).
    pub name: String,
    /// Its byte range on the disk, `[start, end)`.
    pub start: u64,
    pub end: u64,
    /// What it holds, when known ("ext4", "LUKS").
    #[serde(default)]
    pub fs: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    /// Bytes copied by used blocks; None: copied whole, for the reason `why`.
    #[serde(default)]
    pub used: Option<u64>,
    #[serde(default)]
    pub why: String,
}

/// The most free ranges one disk's map may hold: the sender merges the smallest
/// gaps beyond it (reading them), so the map stays far below MAX_CONTROL.
pub const MAX_FREE_RANGES: usize = 16384;
/// The most partitions a map may describe.
pub const MAX_FREE_PARTS: usize = 1024;

impl FreeMap {
    /// Bytes left out.
    pub fn free_bytes(&self) -> u64 {
        self.ranges.iter().map(|&(s, e)| e.saturating_sub(s)).sum()
    }

    /// Whether the map is one an honest sender makes for a disk of `size` bytes:
    /// bounded, every range sorted, disjoint, not empty, inside the disk and inside
    /// a partition copied by its used blocks.
    pub fn check_for(&self, size: u64) -> Result<(), String> {
        if self.ranges.len() > MAX_FREE_RANGES || self.parts.len() > MAX_FREE_PARTS {
            return Err(format!(
                "its free map has {} ranges and {} partitions (limits {MAX_FREE_RANGES}, {MAX_FREE_PARTS})",
                self.ranges.len(),
                self.parts.len()
            ));
        }
        let mut at = 0u64;
        for &(s, e) in &self.ranges {
            if s < at || e <= s || e > size {
                return Err(format!(
                    "its free range {s}..{e} is out of order, empty or outside the disk"
                ));
            }
            if !self
                .parts
                .iter()
                .any(|p| p.used.is_some() && p.start <= s && e <= p.end)
            {
                return Err(format!(
                    "its free range {s}..{e} lies in no partition copied by used blocks"
                ));
            }
            at = e;
        }
        Ok(())
    }

    /// This map with only the bytes `other` also calls free: how a resumed
    /// backup keeps its decision without leaving out what a new probe found
    /// used. The partitions stay this map's, their `used` counted anew.
    pub fn narrowed_by(&self, other: &FreeMap) -> FreeMap {
        let mut ranges = Vec::new();
        let mut j = 0;
        for &(s, e) in &self.ranges {
            while j < other.ranges.len() && other.ranges[j].1 <= s {
                j += 1;
            }
            let mut k = j;
            while let Some(&(os, oe)) = other.ranges.get(k).filter(|r| r.0 < e) {
                let (a, b) = (s.max(os), e.min(oe));
                if a < b {
                    ranges.push((a, b));
                }
                k += 1;
            }
        }
        let mut parts = self.parts.clone();
        for p in parts.iter_mut().filter(|p| p.used.is_some()) {
            let free: u64 = ranges
                .iter()
                .map(|&(s, e)| e.min(p.end).saturating_sub(s.max(p.start)))
                .sum();
            p.used = Some((p.end - p.start).saturating_sub(free));
        }
        FreeMap { ranges, parts }
    }

    /// Whether every free range a FLAG_FREE chunk at `offset` lists (relative to
    /// it) lies inside this map's free ranges; if not, the first that does not,
    /// on the disk. A receiver holds a sender to the map it declared: a chunk
    /// may not leave out bytes the map says are used (or lie outside the
    /// partitions copied by used blocks, which `check_for` holds the map to).
    pub fn uncovered(&self, offset: u64, free: &[(u32, u32)]) -> Option<(u64, u64)> {
        free.iter().find_map(|&(s, l)| {
            let s = offset.saturating_add(u64::from(s));
            let e = s.saturating_add(u64::from(l));
            // The map's ranges are sorted and disjoint: the one that could hold s.
            let i = self.ranges.partition_point(|&(_, me)| me <= s);
            let held = self
                .ranges
                .get(i)
                .is_some_and(|&(ms, me)| ms <= s && e <= me);
            (!held).then_some((s, e))
        })
    }

    /// The free ranges inside `offset..offset + len`, relative to `offset`, as a
    /// FLAG_FREE chunk lists them.
    pub fn within(&self, offset: u64, len: u32) -> Vec<(u32, u32)> {
        let end = offset + u64::from(len);
        let first = self.ranges.partition_point(|&(_, e)| e <= offset);
        self.ranges[first..]
            .iter()
            .take_while(|&&(s, _)| s < end)
            .map(|&(s, e)| {
                let (s, e) = (s.max(offset), e.min(end));
                ((s - offset) as u32, (e - s) as u32)
            })
            .collect()
    }
}

impl Bounded for FreeMap {
    fn check(&self) -> Result<(), String> {
        if self.parts.len() > MAX_FREE_PARTS {
            return Err(format!(
                "its free map describes {} partitions",
                self.parts.len()
            ));
        }
        self.parts.iter().try_for_each(|p| {
            name("partition name", &p.name)?;
            text("filesystem", &p.fs)?;
            text("filesystem label", &p.label)?;
            bounded("reason", &p.why, limit::TEXT, false)
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupBegin {
    pub label: Option<String>,
    pub chunk_size: u32,
    pub fresh: bool,
    pub disks: Vec<DiskInfo>,
    /// The key BACKUP_READY gave for this backup when it was started, to
    /// resume it (docs/protocol.md, threat model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_key: Option<String>,
    /// Send every chunk: no base backup (`rescue backup --full`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub full: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupReady {
    pub backup_id: String,
    /// Where the receiver keeps it, for the user's information.
    pub location: String,
    pub resumed: bool,
    /// Per disk (same order as BACKUP_BEGIN): chunks already verified.
    pub have: Vec<ChunkRanges>,
    /// What the sender presents in BACKUP_BEGIN to resume this backup later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_key: Option<String>,
    /// The earlier backup this one is made against (incremental): the sender
    /// asks for its digests (DIGESTS_REQ) and marks the chunks that match
    /// FLAG_UNCHANGED instead of sending them. Absent: send everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
    /// A resumed used-block backup: per disk, the free map the sender goes on
    /// with (the one stored, narrowed to what BACKUP_BEGIN's also calls free);
    /// it replaces the sender's own. Empty: the sender's maps stand.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub free: Vec<Option<FreeMap>>,
}

/// The base of an incremental backup: which backup, and per disk of
/// BACKUP_BEGIN (same order) the name of its disk to compare with (none: that
/// disk has no counterpart there and is sent whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    pub host: String,
    pub backup_id: String,
    pub disks: Vec<Option<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskEnd {
    pub disk: u32,
    pub bytes_read: u64,
    pub unreadable_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskDone {
    pub disk: u32,
    pub ok: bool,
    /// SHA-256 of the whole image as stored (empty while `sha256_pending`).
    pub sha256: String,
    pub message: String,
    /// Every chunk is verified and durable, but the whole-image SHA-256 is
    /// still being computed: the server records it on its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sha256_pending: bool,
    /// Bytes filled from the base backup (chunks marked FLAG_UNCHANGED).
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub unchanged_bytes: u64,
    /// Chunks marked unchanged whose copy in the base failed its check: the
    /// receiver asked for their data instead (NAK with NAK_DATA).
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub base_failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionEnd {
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionDone {
    pub ok: bool,
    pub message: String,
    /// Everything is verified and durable; the server is still computing
    /// whole-image digests and marks the backup complete when it is done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sha256_pending: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListReq {
    /// Backups of this host (by hostname); None: of the asking machine.
    pub host: Option<String>,
    /// Skip this many (a LISTING that did not fit one message said `next`).
    #[serde(default)]
    pub start: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupSummary {
    pub host: String,
    pub backup_id: String,
    pub label: Option<String>,
    pub status: BackupState,
    pub created: String,
    pub finished: Option<String>,
    pub disks: Vec<DiskSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskSummary {
    pub name: String,
    pub size: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub sha256: Option<String>,
    pub unreadable_bytes: u64,
    /// How the image is partitioned, as the server read it from the image
    /// (absent from servers before it existed): what a restore onto a disk
    /// of another size plans with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<DiskLayout>,
    /// A used-block backup (protocol 3): bytes of free space not copied (zeros in
    /// the image); the restoring side asks for the ranges with FREE_REQ.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub free_bytes: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The partition layout of a stored image, as far as resizing it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLayout {
    /// "gpt", "dos" or "none" (no table: a filesystem on the whole disk, or blank).
    pub table: String,
    /// The source disk's logical sector size.
    pub sector: u32,
    /// Byte offset where the partition that ends last ends (0: no partitions).
    pub end: u64,
    /// That partition's number (the kernel's).
    pub last: u32,
    /// GPT: bytes of the partition entry array (0 otherwise).
    pub gpt_array_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Listing {
    pub backups: Vec<BackupSummary>,
    /// More follow: ask again with `start` = this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u32>,
    /// Backups of the host asked for that this peer may not see (made by
    /// another machine; the serving side did not allow restoring them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hidden: u32,
    /// The backups are those of the asking machine's machine-id under other
    /// hostnames (it asked for its own and has none under its hostname).
    #[serde(default, skip_serializing_if = "is_false")]
    pub by_machine_id: bool,
    /// First page only: the other hosts holding backups here that this peer may
    /// read (at most [`MAX_HOSTS`]), and how many others it may not know of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hidden_hosts: u32,
}

/// The most host names one LISTING carries (255 bytes each: well within a message).
pub const MAX_HOSTS: usize = 1024;

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreBegin {
    pub host: String,
    pub backup_id: String,
    /// Names of the disks wanted, in the order the chunks should come.
    pub disks: Vec<String>,
    /// Per disk, in the same order: chunk index ranges the restoring side
    /// already holds, checked against the backup's digests (restore --resume).
    /// They are not sent. Absent: send everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub have: Vec<ChunkRanges>,
    /// The client understands FLAG_DAMAGED chunks; without it a chunk the
    /// store cannot produce intact ends the session with an ERROR.
    #[serde(default)]
    pub accepts_damaged: bool,
}

/// Asks for the SHA-256 the backup recorded for chunks `first..first + count`
/// of one of its disks (restore --resume). Answered by DIGESTS: the backup's
/// chunk size and the digests, all zeros for a chunk the backup does not hold
/// ([`crate::digests`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestsReq {
    pub host: String,
    pub backup_id: String,
    pub disk: String,
    pub first: u64,
    pub count: u32,
}

/// The most digests one DIGESTS message carries (it stays within MAX_CONTROL).
pub const MAX_DIGESTS: u32 = ((MAX_CONTROL - 8) / 32) as u32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreReady {
    pub chunk_size: u32,
    pub disks: Vec<DiskSummary>,
}

/// Asks for the free map of one disk of a backup (protocol 3), before RESTORE_BEGIN:
/// which bytes a used-block backup did not copy, so the restoring side leaves, zeroes
/// or discards them and does not compare them (--resume, --verify). Answered by FREE.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FreeReq {
    pub host: String,
    pub backup_id: String,
    pub disk: String,
}

/// The answer to FREE_REQ: the disk's free map, None when every byte was copied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Free {
    pub free: Option<FreeMap>,
}

/// Encodes a control body.
pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising our own plain structs cannot fail; an empty body would be
    // rejected by the peer with a clear message anyway.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Decodes a control body and checks every string in it against the bounds
/// below, naming the message in the error. Both sides decode through here, so
/// nothing a peer sent is stored, compared or printed before it was bounded.
pub fn from_json<T: for<'de> Deserialize<'de> + Bounded>(frame: &Frame) -> anyhow::Result<T> {
    if frame.payload.len() > MAX_CONTROL {
        anyhow::bail!(
            "peer sent a {}-byte {} message (limit {MAX_CONTROL})",
            frame.payload.len(),
            kind::name(frame.header.kind)
        );
    }
    let v: T = serde_json::from_slice(&frame.payload).map_err(|e| {
        anyhow::anyhow!(
            "peer sent a malformed {} message: {e}",
            kind::name(frame.header.kind)
        )
    })?;
    v.check().map_err(|e| {
        anyhow::anyhow!(
            "peer sent an unacceptable {} message: {e}",
            kind::name(frame.header.kind)
        )
    })?;
    Ok(v)
}

/// The longest strings a peer may send, by what they are. Honest values are far
/// shorter; the limits keep one message (and everything stored from it, and
/// every LISTING that repeats it) small.
pub mod limit {
    /// Host names, machine-ids, backup ids, disk names, codes, dates, digests.
    pub const NAME: usize = 255;
    /// Labels, disk models and serial numbers, DMI fields, tool versions.
    pub const TEXT: usize = 256;
    /// Paths (where a disk was read from, where the server keeps a backup).
    pub const PATH: usize = 4096;
    /// Human messages (ERROR, DISK_DONE, SESSION_DONE).
    pub const MESSAGE: usize = 8192;
}

/// A message whose strings can be checked against [`limit`] (none by default).
pub trait Bounded {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// One string: at most `max` bytes, no control characters (escape sequences,
/// CR, LF, DEL, C1). Human messages (`lines`) may hold newlines and tabs; they
/// are escaped when printed.
fn bounded(field: &str, s: &str, max: usize, lines: bool) -> Result<(), String> {
    if s.len() > max {
        return Err(format!(
            "its {field} is {} bytes long (limit {max})",
            s.len()
        ));
    }
    match s
        .chars()
        .find(|&c| c.is_control() && !(lines && (c == '\n' || c == '\t')))
    {
        Some(c) => Err(format!(
            "its {field} contains the control character U+{:04X}",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

fn name(field: &str, s: &str) -> Result<(), String> {
    bounded(field, s, limit::NAME, false)
}

fn opt_name(field: &str, s: &Option<String>) -> Result<(), String> {
    s.as_deref().map_or(Ok(()), |s| name(field, s))
}

fn text(field: &str, s: &Option<String>) -> Result<(), String> {
    s.as_deref()
        .map_or(Ok(()), |s| bounded(field, s, limit::TEXT, false))
}

fn message(field: &str, s: &str) -> Result<(), String> {
    bounded(field, s, limit::MESSAGE, true)
}

/// What an honest sender does with a string from its own system (a disk model
/// from sysfs, a file name, a DMI field) before sending it: control characters
/// become `?` and it is cut to `max` bytes, so the peer accepts it.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

impl Bounded for Identity {
    fn check(&self) -> Result<(), String> {
        name("hostname", &self.hostname)?;
        name("machine_id", &self.machine_id)?;
        for (f, v) in [
            ("dmi_vendor", &self.dmi_vendor),
            ("dmi_product", &self.dmi_product),
            ("dmi_serial", &self.dmi_serial),
            ("tool_version", &self.tool_version),
        ] {
            bounded(f, v, limit::TEXT, false)?;
        }
        Ok(())
    }
}

impl Identity {
    /// The same identity with every field made acceptable to a peer ([`clean`]).
    pub fn cleaned(&self) -> Identity {
        Identity {
            hostname: clean(&self.hostname, limit::NAME),
            machine_id: clean(&self.machine_id, limit::NAME),
            dmi_vendor: clean(&self.dmi_vendor, limit::TEXT),
            dmi_product: clean(&self.dmi_product, limit::TEXT),
            dmi_serial: clean(&self.dmi_serial, limit::TEXT),
            tool_version: clean(&self.tool_version, limit::TEXT),
        }
    }
}

impl Bounded for Hello {
    fn check(&self) -> Result<(), String> {
        name("session", &self.session)?;
        self.identity.check()
    }
}

impl Bounded for Join {
    fn check(&self) -> Result<(), String> {
        name("session", &self.session)
    }
}

impl Bounded for ErrorMsg {
    fn check(&self) -> Result<(), String> {
        name("code", &self.code)?;
        message("message", &self.message)
    }
}

impl Bounded for DiskInfo {
    fn check(&self) -> Result<(), String> {
        name("disk name", &self.name)?;
        bounded("source_path", &self.source_path, limit::PATH, false)?;
        text("model", &self.model)?;
        text("serial", &self.serial)?;
        self.free.as_ref().map_or(Ok(()), |f| {
            f.check()?;
            f.check_for(self.size)
        })
    }
}

impl DiskInfo {
    /// The same disk with its strings made acceptable to a peer ([`clean`]).
    pub fn cleaned(mut self) -> DiskInfo {
        self.name = clean(&self.name, limit::NAME);
        self.source_path = clean(&self.source_path, limit::PATH);
        self.model = self.model.map(|m| clean(&m, limit::TEXT));
        self.serial = self.serial.map(|s| clean(&s, limit::TEXT));
        self
    }
}

impl Bounded for BackupBegin {
    fn check(&self) -> Result<(), String> {
        text("label", &self.label)?;
        opt_name("resume_key", &self.resume_key)?;
        self.disks.iter().try_for_each(Bounded::check)
    }
}

impl Bounded for BackupReady {
    fn check(&self) -> Result<(), String> {
        name("backup_id", &self.backup_id)?;
        opt_name("resume_key", &self.resume_key)?;
        if let Some(b) = &self.base {
            name("base host", &b.host)?;
            name("base backup_id", &b.backup_id)?;
            if b.disks.len() > self.have.len() {
                return Err(format!(
                    "its base names {} disks for {}",
                    b.disks.len(),
                    self.have.len()
                ));
            }
            b.disks.iter().try_for_each(|d| opt_name("base disk", d))?;
        }
        bounded("location", &self.location, limit::PATH, false)
    }
}

impl Bounded for DiskEnd {}

impl Bounded for DiskDone {
    fn check(&self) -> Result<(), String> {
        name("sha256", &self.sha256)?;
        message("message", &self.message)
    }
}

impl Bounded for SessionEnd {}

impl Bounded for SessionDone {
    fn check(&self) -> Result<(), String> {
        message("message", &self.message)
    }
}

impl Bounded for ListReq {
    fn check(&self) -> Result<(), String> {
        opt_name("host", &self.host)
    }
}

impl Bounded for DiskSummary {
    fn check(&self) -> Result<(), String> {
        name("disk name", &self.name)?;
        text("model", &self.model)?;
        text("serial", &self.serial)?;
        opt_name("sha256", &self.sha256)?;
        match &self.layout {
            Some(l) => name("partition table kind", &l.table),
            None => Ok(()),
        }
    }
}

impl Bounded for BackupSummary {
    fn check(&self) -> Result<(), String> {
        name("host", &self.host)?;
        name("backup_id", &self.backup_id)?;
        text("label", &self.label)?;
        name("created", &self.created)?;
        opt_name("finished", &self.finished)?;
        self.disks.iter().try_for_each(Bounded::check)
    }
}

impl Bounded for Listing {
    fn check(&self) -> Result<(), String> {
        if self.hosts.len() > MAX_HOSTS {
            return Err(format!(
                "it names {} hosts (limit {MAX_HOSTS})",
                self.hosts.len()
            ));
        }
        self.hosts.iter().try_for_each(|h| name("host", h))?;
        self.backups.iter().try_for_each(Bounded::check)
    }
}

impl Bounded for RestoreBegin {
    fn check(&self) -> Result<(), String> {
        name("host", &self.host)?;
        name("backup_id", &self.backup_id)?;
        self.disks.iter().try_for_each(|d| name("disk name", d))
    }
}

impl Bounded for DigestsReq {
    fn check(&self) -> Result<(), String> {
        name("host", &self.host)?;
        name("backup_id", &self.backup_id)?;
        name("disk name", &self.disk)
    }
}

impl Bounded for RestoreReady {
    fn check(&self) -> Result<(), String> {
        self.disks.iter().try_for_each(Bounded::check)
    }
}

impl Bounded for FreeReq {
    fn check(&self) -> Result<(), String> {
        name("host", &self.host)?;
        name("backup_id", &self.backup_id)?;
        name("disk name", &self.disk)
    }
}

/// Its ranges are checked against the disk's size by the receiver
/// ([`FreeMap::check_for`]), which knows it.
impl Bounded for Free {
    fn check(&self) -> Result<(), String> {
        self.free.as_ref().map_or(Ok(()), Bounded::check)
    }
}

/// The binary body of a CHUNK: digest, length, unreadable ranges, then data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkBody {
    pub sha256: [u8; 32],
    pub len: u32,
    /// Unreadable byte ranges inside the chunk, relative to its start (filled with zeros).
    pub bad: Vec<(u32, u32)>,
    /// Free byte ranges inside the chunk (FLAG_FREE), relative to its start: sorted,
    /// disjoint, not empty. They are zeros in the chunk as stored and not carried.
    pub free: Vec<(u32, u32)>,
    /// The whole payload; the chunk's data is `payload[start..]` (kept in place
    /// rather than moved: it is a megabyte per chunk).
    pub payload: Vec<u8>,
    pub start: usize,
}

pub(crate) const CHUNK_FIXED: usize = 32 + 4 + 4;
/// More bad ranges than sectors in the largest chunk cannot be real.
const MAX_BAD_RANGES: usize = 16 * 1024;

impl ChunkBody {
    /// The chunk's data (empty for a zero chunk).
    pub fn data(&self) -> &[u8] {
        &self.payload[self.start..]
    }

    /// Serialises digest, length and bad ranges, followed by `data`.
    pub fn encode_prefix(sha256: &[u8; 32], len: u32, bad: &[(u32, u32)]) -> Vec<u8> {
        let mut v = Vec::with_capacity(CHUNK_FIXED + bad.len() * 8);
        v.extend_from_slice(sha256);
        v.extend_from_slice(&len.to_le_bytes());
        put_ranges(&mut v, bad);
        v
    }

    /// The prefix of a FLAG_FREE chunk: as `encode_prefix`, then the free ranges;
    /// followed by the chunk's bytes outside them, in order.
    pub fn encode_prefix_free(
        sha256: &[u8; 32],
        len: u32,
        bad: &[(u32, u32)],
        free: &[(u32, u32)],
    ) -> Vec<u8> {
        let mut v = ChunkBody::encode_prefix(sha256, len, bad);
        put_ranges(&mut v, free);
        v
    }

    /// The chunk as stored: the carried bytes in place, zeros in the free ranges.
    /// Empty for a zero chunk.
    pub fn expand(&self, out: &mut Vec<u8>) {
        out.clear();
        if self.free.is_empty() {
            out.extend_from_slice(self.data());
            return;
        }
        out.resize(self.len as usize, 0);
        let mut src = self.data();
        for (s, e) in used_parts(self.len, &self.free) {
            let (piece, rest) = src.split_at((e - s) as usize);
            out[s as usize..e as usize].copy_from_slice(piece);
            src = rest;
        }
    }

    /// Parses a chunk body as `decode`, with a free-range list after the unreadable
    /// ranges when `free` (FLAG_FREE) is set.
    pub fn decode_with(
        payload: Vec<u8>,
        zero: bool,
        free: bool,
        max_len: u32,
    ) -> Result<ChunkBody, String> {
        if !free {
            return ChunkBody::decode(payload, zero, max_len);
        }
        if zero {
            return Err("chunk is flagged both zero and free".into());
        }
        // Decoded as a zero chunk first: the bytes after the unreadable ranges are
        // the free list and the data, checked here.
        let body = ChunkBody::decode_ranges(payload, max_len)?;
        let (free, start) = get_ranges(&body.payload, body.start, "free")?;
        let mut at = 0u64;
        let mut free_bytes = 0u64;
        for &(o, l) in &free {
            if u64::from(o) < at || u64::from(o) + u64::from(l) > u64::from(body.len) {
                return Err(format!(
                    "free range {o}+{l} out of order or outside the chunk"
                ));
            }
            at = u64::from(o) + u64::from(l);
            free_bytes += u64::from(l);
        }
        let data_len = (body.payload.len() - start) as u64;
        if data_len != u64::from(body.len) - free_bytes {
            return Err(format!(
                "chunk says {} bytes, {free_bytes} of them free, but carries {data_len}",
                body.len
            ));
        }
        Ok(ChunkBody {
            free,
            start,
            ..body
        })
    }

    /// Parses a chunk body; `zero` says whether data is expected. Every length is
    /// checked against the payload, so hostile input gives an error, not a panic.
    pub fn decode(payload: Vec<u8>, zero: bool, max_len: u32) -> Result<ChunkBody, String> {
        let body = ChunkBody::decode_ranges(payload, max_len)?;
        let data_len = body.payload.len() - body.start;
        if zero && data_len != 0 {
            return Err("zero chunk carries data".into());
        }
        if !zero && data_len != body.len as usize {
            return Err(format!(
                "chunk says {} bytes but carries {data_len}",
                body.len
            ));
        }
        Ok(body)
    }

    /// Digest, length and unreadable ranges; `start` is where they end.
    fn decode_ranges(payload: Vec<u8>, max_len: u32) -> Result<ChunkBody, String> {
        if payload.len() < CHUNK_FIXED {
            return Err(format!("chunk body too short ({} bytes)", payload.len()));
        }
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&payload[0..32]);
        let len = u32::from_le_bytes([payload[32], payload[33], payload[34], payload[35]]);
        if len == 0 || len > max_len {
            return Err(format!("chunk length {len} outside 1..={max_len}"));
        }
        let (bad, start) = get_ranges(&payload, 36, "unreadable")?;
        if let Some((o, l)) = bad
            .iter()
            .find(|&&(o, l)| u64::from(o) + u64::from(l) > u64::from(len))
        {
            return Err(format!("unreadable range {o}+{l} outside the chunk"));
        }
        Ok(ChunkBody {
            sha256,
            len,
            bad,
            free: Vec::new(),
            payload,
            start,
        })
    }
}

/// Appends a count (u32 LE) and that many (offset u32, len u32) pairs.
fn put_ranges(v: &mut Vec<u8>, ranges: &[(u32, u32)]) {
    v.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for (o, l) in ranges {
        v.extend_from_slice(&o.to_le_bytes());
        v.extend_from_slice(&l.to_le_bytes());
    }
}

/// Reads what `put_ranges` wrote at `at`: the ranges (none empty, at most
/// MAX_BAD_RANGES) and where they end.
fn get_ranges(p: &[u8], at: usize, what: &str) -> Result<(Vec<(u32, u32)>, usize), String> {
    let word = |i: usize| -> Option<u32> {
        let b = p.get(i..i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let n = word(at).ok_or_else(|| format!("chunk body ends before its {what} ranges"))? as usize;
    if n > MAX_BAD_RANGES || at + 4 + n * 8 > p.len() {
        return Err(format!("chunk claims {n} {what} ranges"));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let q = at + 4 + i * 8;
        let (o, l) = (word(q).unwrap_or(0), word(q + 4).unwrap_or(0));
        if l == 0 {
            return Err(format!("empty {what} range at {o}"));
        }
        out.push((o, l));
    }
    Ok((out, at + 4 + n * 8))
}

/// The parts of a chunk of `len` bytes outside `free` (sorted, disjoint), as
/// (start, end) pairs in order.
pub fn used_parts(len: u32, free: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = Vec::with_capacity(free.len() + 1);
    let mut at = 0u32;
    for &(o, l) in free {
        if o > at {
            out.push((at, o));
        }
        at = o.saturating_add(l);
    }
    if at < len {
        out.push((at, len));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_roundtrip() {
        let sha = [7u8; 32];
        let mut p = ChunkBody::encode_prefix(&sha, 4, &[(1, 2)]);
        p.extend_from_slice(b"abcd");
        let c = ChunkBody::decode(p, false, 1 << 20).unwrap();
        assert_eq!(c.data(), b"abcd");
        assert_eq!(c.bad, vec![(1, 2)]);
        assert_eq!(c.sha256, sha);
    }

    #[test]
    fn a_free_chunk_carries_only_its_used_bytes_and_expands_to_the_chunk_as_stored() {
        let sha = [7u8; 32];
        let mut p = ChunkBody::encode_prefix_free(&sha, 10, &[], &[(0, 2), (5, 3)]);
        p.extend_from_slice(b"abcde");
        let c = ChunkBody::decode_with(p.clone(), false, true, 1 << 20).unwrap();
        assert_eq!(
            (c.free.clone(), c.data()),
            (vec![(0, 2), (5, 3)], &b"abcde"[..])
        );
        let mut out = vec![9; 3];
        c.expand(&mut out);
        assert_eq!(out, b"\0\0abc\0\0\0de");
        // Wrong amount of data, overlapping or outside ranges, zero and free at once.
        let mut short = p.clone();
        short.pop();
        assert!(ChunkBody::decode_with(short, false, true, 1 << 20).is_err());
        for free in [&[(0, 2), (1, 3)][..], &[(8, 3)], &[(2, 0)]] {
            let mut q = ChunkBody::encode_prefix_free(&sha, 10, &[], free);
            let carried = 10 - free.iter().map(|r| r.1).sum::<u32>().min(10);
            q.extend(std::iter::repeat_n(1, carried as usize));
            assert!(
                ChunkBody::decode_with(q, false, true, 1 << 20).is_err(),
                "{free:?}"
            );
        }
        assert!(ChunkBody::decode_with(p, true, true, 1 << 20).is_err());
        // Entirely free: no data at all.
        let all = ChunkBody::encode_prefix_free(&sha, 10, &[], &[(0, 10)]);
        let c = ChunkBody::decode_with(all, false, true, 1 << 20).unwrap();
        c.expand(&mut out);
        assert_eq!(out, [0; 10]);
        assert_eq!(used_parts(10, &[(0, 2), (5, 3)]), [(2, 5), (8, 10)]);
    }

    #[test]
    fn a_free_map_is_checked_against_its_disk_and_cut_into_chunks() {
        let part = |start, end, used| PartUse {
            name: "sda1".into(),
            start,
            end,
            used,
            ..Default::default()
        };
        let m = FreeMap {
            ranges: vec![(100, 200), (300, 1000)],
            parts: vec![part(0, 1000, Some(200))],
        };
        assert!(m.check_for(1000).is_ok());
        assert!(m.check_for(999).is_err());
        assert_eq!(m.within(0, 150), [(100, 50)]);
        assert_eq!(m.within(150, 400), [(0, 50), (150, 250)]);
        assert_eq!(m.within(1000, 10), []);
        // A chunk at 100 may leave out 0..100 and 200..900 of itself, no more.
        assert_eq!(m.uncovered(100, &[(0, 100), (200, 700)]), None);
        assert_eq!(m.uncovered(100, &[(0, 101)]), Some((100, 201)));
        assert_eq!(m.uncovered(100, &[(150, 10)]), Some((250, 260)));
        assert_eq!(m.uncovered(0, &[(950, 100)]), Some((950, 1050)));
        assert_eq!(FreeMap::default().uncovered(0, &[(0, 1)]), Some((0, 1)));
        // Narrowed by a probe that finds 150..350 and 500..600 used.
        let new = FreeMap {
            ranges: vec![(0, 150), (350, 500), (600, 1000)],
            parts: vec![part(0, 1000, Some(400))],
        };
        let n = m.narrowed_by(&new);
        assert_eq!(n.ranges, [(100, 150), (350, 500), (600, 1000)]);
        assert_eq!(n.parts[0].used, Some(1000 - 50 - 150 - 400));
        assert!(n.check_for(1000).is_ok());
        assert_eq!(m.narrowed_by(&FreeMap::default()).ranges, []);
        let whole = FreeMap {
            parts: vec![part(0, 1000, None)],
            ..m.clone()
        };
        assert!(whole.check_for(1000).unwrap_err().contains("no partition"));
        let unsorted = FreeMap {
            ranges: vec![(300, 400), (100, 200)],
            ..m.clone()
        };
        assert!(unsorted.check_for(1000).is_err());
        assert_eq!(m.free_bytes(), 800);
    }

    #[test]
    fn chunk_rejects_hostile_lengths() {
        let sha = [0u8; 32];
        let p = ChunkBody::encode_prefix(&sha, 4, &[]);
        assert!(ChunkBody::decode(p.clone(), false, 1 << 20).is_err());
        assert!(ChunkBody::decode(p[..10].to_vec(), false, 1 << 20).is_err());
        let mut p = ChunkBody::encode_prefix(&sha, 4, &[(3, 9)]);
        p.extend_from_slice(b"abcd");
        assert!(ChunkBody::decode(p, false, 1 << 20).is_err());
        let mut p = ChunkBody::encode_prefix(&sha, u32::MAX, &[]);
        p[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ChunkBody::decode(p, true, 1 << 20).is_err());
    }

    #[test]
    fn strings_are_bounded_on_decode() {
        let frame = |body: &str| Frame {
            header: crate::frame::Header::new(kind::LIST, 0, 0),
            payload: body.as_bytes().to_vec(),
            intact: true,
        };
        let ok: ListReq = from_json(&frame(r#"{"host":"hosta"}"#)).unwrap();
        assert_eq!((ok.host.as_deref(), ok.start), (Some("hosta"), 0));
        let long = format!(r#"{{"host":"{}"}}"#, "h".repeat(limit::NAME + 1));
        let e = from_json::<ListReq>(&frame(&long)).unwrap_err().to_string();
        assert!(
            e.contains("LIST") && e.contains("host") && e.contains("limit"),
            "{e}"
        );
        for bad in [
            r#"{"host":"a\u001b[2Jb"}"#,
            r#"{"host":"a\nb"}"#,
            r#"{"host":"\u009b"}"#,
        ] {
            assert!(from_json::<ListReq>(&frame(bad)).is_err(), "{bad}");
        }
        // The host names a LISTING may carry: bounded in length, characters, number.
        let l: Listing = from_json(&frame(r#"{"backups":[],"hosts":["alpha"]}"#)).unwrap();
        assert_eq!(l.hosts, ["alpha"]);
        assert!(from_json::<Listing>(&frame(r#"{"backups":[],"hosts":["a[2J"]}"#)).is_err());
        let many = serde_json::json!({"backups": [], "hosts": vec!["h"; MAX_HOSTS + 1]});
        assert!(from_json::<Listing>(&frame(&many.to_string())).is_err());
        // Human messages may span lines; escape sequences are refused there too.
        let e: ErrorMsg = from_json(&frame(r#"{"code":"x","message":"a\nb"}"#)).unwrap();
        assert_eq!(e.message, "a\nb");
        assert!(
            from_json::<ErrorMsg>(&frame(r#"{"code":"x","message":"\u001b]0;t\u0007"}"#)).is_err()
        );
    }

    #[test]
    fn clean_makes_local_strings_acceptable() {
        assert_eq!(clean("Samsung\x1b[0m SSD\n", 64), "Samsung?[0m SSD?");
        assert_eq!(clean("ééé", 5), "éé");
        let d = DiskInfo {
            name: "a\rb".into(),
            source_path: "/x".into(),
            size: 1,
            logical_sector_size: 512,
            model: Some("m".repeat(1000)),
            serial: None,
            details: None,
            free: None,
        }
        .cleaned();
        assert!(d.check().is_ok());
        assert_eq!(d.model.map(|m| m.len()), Some(limit::TEXT));
    }
}
