//! Linux swap: only its header page is copied. A swap area holds nothing that
//! outlives the system that wrote it, so restoring the header (signature, UUID,
//! label, size, bad-page list) gives a swap that `swapon` accepts as the same one.
//!
//! A swap area that holds a hibernation image (the kernel or uswsusp replaced the
//! signature) is not reduced to its header: the image is the memory of a system
//! that can still resume from it, so it is copied whole.

use crate::util::{Extents, le32};
use crate::{Error, ReadAt, Usage};

/// Page sizes a swap header is found at: x86 and most others use 4 KiB; arm64,
/// ppc64 and others can use 16 or 64 KiB; sparc64 and alpha 8 KiB.
const PAGE_SIZES: [u64; 4] = [4096, 8192, 16384, 65536];

/// Signatures the hibernation tools write in place of `SWAPSPACE2`.
const HIBERNATION: [&[u8]; 5] = [
    b"S1SUSPEND",
    b"S2SUSPEND",
    b"ULSUSPEND",
    b"LINHIB0001",
    b"\xed\xc3\x02\xe9\x98\x56\xe5\x0c",
];

/// `None` if the partition is no swap area.
pub fn probe(dev: &dyn ReadAt) -> Option<Result<Usage, Error>> {
    for page in PAGE_SIZES {
        if dev.len() < page {
            break;
        }
        let mut sig = [0u8; 10];
        if dev.read_exact_at(&mut sig, page - 10).is_err() {
            return None;
        }
        if &sig == b"SWAPSPACE2" {
            return Some(header(dev, page));
        }
        if &sig == b"SWAP-SPACE" {
            return Some(Err(Error::Unsupported(
                "the old (version 0) swap format".into(),
            )));
        }
        if HIBERNATION.iter().any(|h| sig.starts_with(h)) {
            return Some(Err(Error::Inconsistent(
                "the swap area holds a hibernation image (a system can still resume from it)"
                    .into(),
            )));
        }
    }
    None
}

/// The header page's fields, checked; the used ranges are the header page and
/// anything past the swap area's end.
fn header(dev: &dyn ReadAt, page: u64) -> Result<Usage, Error> {
    let mut h = [0u8; 1024 + 44];
    crate::util::read(dev, "swap header", 0, &mut h)?;
    let (version, last_page) = match le32(&h, 1024) {
        1 => (1, le32(&h, 1028)),
        // Written by a big-endian system.
        v if v.swap_bytes() == 1 => (1, le32(&h, 1028).swap_bytes()),
        v => (v, 0),
    };
    if version != 1 {
        return Err(Error::Unsupported(format!("swap header version {version}")));
    }
    let end = (u64::from(last_page) + 1) * page;
    if last_page == 0 || end > dev.len() {
        return Err(Error::Inconsistent(format!(
            "swap area of {end} bytes in a partition of {} bytes",
            dev.len()
        )));
    }
    let name = &h[1024 + 28..1024 + 44];
    let n = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let label = String::from_utf8_lossy(&name[..n]).trim().to_string();
    let mut used = Extents::new(dev.len());
    used.add(0..page)?;
    used.add(end..dev.len())?;
    Ok(Usage {
        fs: "swap",
        label: (!label.is_empty()).then_some(label),
        block_size: page,
        used: used.finish(),
    })
}
