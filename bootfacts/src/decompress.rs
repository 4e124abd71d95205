//! The one decompressor of the project: module files (.ko as is, .ko.xz and .ko.gz
//! decompressed here so loading works whatever the kernel's own
//! CONFIG_MODULE_DECOMPRESS supports; image reads their .modinfo the same way) and
//! initramfs images (recognised by their magic, for `image list`).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// How a module file or an image is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Gzip,
    /// Left to the kernel (finit_module with MODULE_INIT_COMPRESSED_FILE).
    Zstd,
}

impl Compression {
    /// A module file's compression, from its name.
    pub fn of(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        Ok(if name.ends_with(".ko") {
            Compression::None
        } else if name.ends_with(".ko.xz") {
            Compression::Xz
        } else if name.ends_with(".ko.gz") {
            Compression::Gzip
        } else if name.ends_with(".ko.zst") {
            Compression::Zstd
        } else {
            bail!("{}: not a kernel module file name", path.display())
        })
    }

    /// An image's compression from its first bytes: xz, gzip, or an uncompressed
    /// newc cpio; `None` for anything else.
    pub fn of_image(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\xfd7zXZ\x00") {
            Some(Compression::Xz)
        } else if bytes.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if bytes.starts_with(b"07070") {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// "xz", "gzip", "zstd" or "none".
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Everything `input` holds, decompressed. Concatenated xz streams and gzip
/// members are all read (the kernel and `xz -d` accept them).
pub fn decompress(kind: Compression, mut input: impl Read) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match kind {
        Compression::None => input.read_to_end(&mut out),
        Compression::Xz => xz2::read::XzDecoder::new_multi_decoder(input).read_to_end(&mut out),
        Compression::Gzip => flate2::read::MultiGzDecoder::new(input).read_to_end(&mut out),
        Compression::Zstd => bail!("zstd is only decompressed by the kernel itself"),
    }
    .with_context(|| format!("decompressing {}", kind.name()))?;
    Ok(out)
}

/// Reads a .ko, .ko.xz or .ko.gz file into an uncompressed module image.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let kind = Compression::of(path)?;
    if kind == Compression::Zstd {
        bail!(
            "{}: zstd modules are only loaded by the kernel itself (CONFIG_MODULE_DECOMPRESS)",
            path.display()
        );
    }
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    decompress(kind, file).with_context(|| format!("decompress {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn both_formats_and_concatenations() {
        let mut gz = Vec::new();
        for part in [&b"ab"[..], b"cd"] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).unwrap();
            gz.extend(e.finish().unwrap());
        }
        assert_eq!(Compression::of_image(&gz), Some(Compression::Gzip));
        assert_eq!(decompress(Compression::Gzip, &gz[..]).unwrap(), b"abcd");
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(b"xyz").unwrap();
        let xz = e.finish().unwrap();
        assert_eq!(Compression::of_image(&xz), Some(Compression::Xz));
        assert_eq!(decompress(Compression::Xz, &xz[..]).unwrap(), b"xyz");
        assert!(decompress(Compression::Xz, &gz[..]).is_err());
        assert_eq!(Compression::of_image(b"070701..."), Some(Compression::None));
        assert_eq!(Compression::of_image(b"PK"), None);
        assert_eq!(
            Compression::of(Path::new("a/b.ko.zst")).unwrap(),
            Compression::Zstd
        );
        assert!(Compression::of(Path::new("b.txt")).is_err());
    }
}
