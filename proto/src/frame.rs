//! Frame layer of the protocol: a fixed 32-byte header with its own CRC, then a
//! payload with a CRC in the header. A damaged header is skipped by scanning for
//! the next valid one, so a corrupted stretch costs the frames it hit, not the
//! session. See docs/protocol.md.

use std::io::{self, Read, Write};

pub(crate) const MAGIC: [u8; 4] = *b"U4RS";
pub(crate) const VERSION: u8 = 7;
pub const HEADER_LEN: usize = 32;
/// Largest payload a peer may announce: the largest chunk (8 MiB) plus its header.
pub const MAX_PAYLOAD: u32 = 8 * 1024 * 1024 + 64 * 1024;

/// A frame header as it travels (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub kind: u8,
    pub flags: u16,
    pub len: u32,
    pub disk: u32,
    pub offset: u64,
    pub payload_crc: u32,
}

impl Header {
    pub fn new(kind: u8, disk: u32, offset: u64) -> Self {
        Header {
            kind,
            disk,
            offset,
            ..Default::default()
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind;
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.disk.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header whose magic and CRC are valid; `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_LEN || b[0..4] != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(b[28..32].try_into().ok()?);
        if crc32fast::hash(&b[0..28]) != crc {
            return None;
        }
        Some(Header {
            kind: b[5],
            flags: u16::from_le_bytes(b[6..8].try_into().ok()?),
            len: u32::from_le_bytes(b[8..12].try_into().ok()?),
            disk: u32::from_le_bytes(b[12..16].try_into().ok()?),
            offset: u64::from_le_bytes(b[16..24].try_into().ok()?),
            payload_crc: u32::from_le_bytes(b[24..28].try_into().ok()?),
        })
    }
}

/// One received frame. `intact` is false when the payload failed its CRC: the
/// header (kind, disk, offset) is still trustworthy, the payload is not.
#[derive(Debug)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
    pub intact: bool,
}

/// What the reader saw.
#[derive(Debug)]
pub enum Read1 {
    Frame(Frame),
    /// The peer closed the stream cleanly.
    Eof,
}

/// Errors that end reading.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("peer sent protocol version {0}, this rescue speaks version {VERSION}")]
    Version(u8),
    #[error("peer announced a {0}-byte message, more than the {MAX_PAYLOAD}-byte limit")]
    TooLong(u32),
}

/// Gives a buffer of the length asked for, where a payload is read into: the
/// reader overwrites all of it (or drops it), so its bytes need not be zeros
/// (the tool recycles its megabyte buffers, see [`FrameReader::with_buffers`]).
pub type TakeBuffer = fn(usize) -> Vec<u8>;

fn fresh_buffer(len: usize) -> Vec<u8> {
    vec![0; len]
}

/// Reads frames from a byte stream, resynchronising after garbage.
pub struct FrameReader<R> {
    inner: R,
    take: TakeBuffer,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes skipped while looking for a valid header.
    pub skipped: u64,
    /// Frames whose header was damaged (counted once per resynchronisation).
    pub bad_headers: u64,
}

const READ_BUF: usize = 256 * 1024;

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            take: fresh_buffer,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            skipped: 0,
            bad_headers: 0,
        }
    }

    /// Reads payloads into buffers from `take` rather than fresh ones.
    pub fn with_buffers(mut self, take: TakeBuffer) -> Self {
        self.take = take;
        self
    }

    fn avail(&self) -> usize {
        self.end - self.start
    }

    /// Makes at least `n` bytes available (n <= buffer size). Ok(false) on EOF.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        while self.avail() < n {
            if self.start > 0 && self.buf.len() - self.start < n {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let got = loop {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Ok(k) => break k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if got == 0 {
                return Ok(false);
            }
            self.end += got;
        }
        Ok(true)
    }

    /// Reads the next frame. Garbage before it is skipped and counted.
    pub fn read_frame(&mut self) -> Result<Read1, FrameError> {
        let mut in_garbage = false;
        loop {
            if !self.fill(HEADER_LEN)? {
                return Ok(Read1::Eof);
            }
            let h = &self.buf[self.start..self.start + HEADER_LEN];
            match Header::decode(h) {
                Some(header) => {
                    if h[4] != VERSION {
                        return Err(FrameError::Version(h[4]));
                    }
                    if header.len > MAX_PAYLOAD {
                        return Err(FrameError::TooLong(header.len));
                    }
                    self.start += HEADER_LEN;
                    let payload = self.read_payload(header.len as usize)?;
                    let Some(payload) = payload else {
                        return Ok(Read1::Eof);
                    };
                    let intact = crc32fast::hash(&payload) == header.payload_crc;
                    return Ok(Read1::Frame(Frame {
                        header,
                        payload,
                        intact,
                    }));
                }
                None => {
                    if !in_garbage {
                        in_garbage = true;
                        self.bad_headers += 1;
                    }
                    // Skip to the next possible magic rather than byte by byte.
                    let window = &self.buf[self.start + 1..self.end];
                    let next = window
                        .windows(MAGIC.len())
                        .position(|w| w == MAGIC)
                        .map(|p| p + 1)
                        .unwrap_or(self.avail().saturating_sub(MAGIC.len() - 1).max(1));
                    self.start += next;
                    self.skipped += next as u64;
                }
            }
        }
    }

    fn read_payload(&mut self, len: usize) -> io::Result<Option<Vec<u8>>> {
        let mut payload = (self.take)(len);
        let from_buf = self.avail().min(len);
        payload[..from_buf].copy_from_slice(&self.buf[self.start..self.start + from_buf]);
        self.start += from_buf;
        let mut have = from_buf;
        while have < len {
            match self.inner.read(&mut payload[have..]) {
                Ok(0) => return Ok(None),
                Ok(k) => have += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(Some(payload))
    }
}

/// Writes one frame: header then payload, with the payload CRC filled in.
pub fn write_frame<W: Write>(w: &mut W, header: Header, payload: &[u8]) -> io::Result<()> {
    write_frame_parts(w, header, &[payload])
}

/// Writes one frame whose payload is the concatenation of `parts`, without
/// copying them together first (a chunk's data is a megabyte).
pub fn write_frame_parts<W: Write>(
    w: &mut W,
    mut header: Header,
    parts: &[&[u8]],
) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    header.len = u32::try_from(total)
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame payload too large"))?;
    let mut crc = crc32fast::Hasher::new();
    for p in parts {
        crc.update(p);
    }
    header.payload_crc = crc.finalize();
    // Header and small parts go out in one write: fewer syscalls, and the stream
    // device turns every write into its own 4 KiB frames.
    let mut small = Vec::with_capacity(HEADER_LEN + 4096);
    small.extend_from_slice(&header.encode());
    for p in parts {
        if p.len() <= 64 * 1024 {
            small.extend_from_slice(p);
        } else {
            w.write_all(&small)?;
            small.clear();
            w.write_all(p)?;
        }
    }
    if !small.is_empty() {
        w.write_all(&small)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, Header::new(kind, 3, 1 << 40), payload).unwrap();
        v
    }

    #[test]
    fn roundtrip() {
        let bytes = frame(7, b"hello");
        let mut r = FrameReader::new(&bytes[..]);
        let Read1::Frame(f) = r.read_frame().unwrap() else {
            panic!("no frame")
        };
        assert_eq!(f.header.kind, 7);
        assert_eq!(f.header.disk, 3);
        assert_eq!(f.header.offset, 1 << 40);
        assert_eq!(f.payload, b"hello");
        assert!(f.intact);
        assert!(matches!(r.read_frame().unwrap(), Read1::Eof));
    }

    #[test]
    fn skips_garbage_and_damaged_headers() {
        let mut bytes = b"garbage U4RS more garbage".to_vec();
        let mut damaged = frame(1, b"lost");
        damaged[9] ^= 0xff;
        bytes.extend_from_slice(&damaged);
        bytes.extend_from_slice(&frame(2, b"kept"));
        let mut r = FrameReader::new(&bytes[..]);
        let Read1::Frame(f) = r.read_frame().unwrap() else {
            panic!("no frame")
        };
        assert_eq!(f.payload, b"kept");
        assert!(r.bad_headers >= 1);
        assert!(r.skipped > 0);
    }

    #[test]
    fn flags_corrupt_payload_but_keeps_header() {
        let mut bytes = frame(5, b"payload bytes");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let mut r = FrameReader::new(&bytes[..]);
        let Read1::Frame(f) = r.read_frame().unwrap() else {
            panic!("no frame")
        };
        assert!(!f.intact);
        assert_eq!(f.header.kind, 5);
    }

    #[test]
    fn rejects_oversized_length_without_allocating() {
        let mut h = Header::new(1, 0, 0);
        h.len = u32::MAX;
        let bytes = h.encode();
        let mut r = FrameReader::new(&bytes[..]);
        assert!(matches!(r.read_frame(), Err(FrameError::TooLong(_))));
    }

    #[test]
    fn an_older_peer_gets_the_version_error() {
        let mut bytes = frame(1, b"{}");
        bytes[4] = VERSION - 1;
        let crc = crc32fast::hash(&bytes[0..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        let e = FrameReader::new(&bytes[..]).read_frame().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "peer sent protocol version {}, this rescue speaks version {VERSION}",
                VERSION - 1
            )
        );
    }

    #[test]
    fn truncated_frame_is_eof() {
        let bytes = frame(1, &[9u8; 1000]);
        let mut r = FrameReader::new(&bytes[..500]);
        assert!(matches!(r.read_frame().unwrap(), Read1::Eof));
    }
}
