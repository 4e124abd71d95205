//! Turns a module file into the bytes init_module(2) takes: .ko as is, .ko.xz and
//! .ko.gz decompressed here so loading works whatever the kernel's own
//! CONFIG_MODULE_DECOMPRESS supports.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// How a module file is compressed, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Gzip,
    /// Left to the kernel (finit_module with MODULE_INIT_COMPRESSED_FILE).
    Zstd,
}

impl Compression {
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
}

/// Reads a .ko, .ko.xz or .ko.gz file into an uncompressed module image.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let kind = Compression::of(path)?;
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut out = Vec::new();
    match kind {
        Compression::None => {
            let mut f = file;
            f.read_to_end(&mut out)
        }
        Compression::Xz => xz2::read::XzDecoder::new_multi_decoder(file).read_to_end(&mut out),
        Compression::Gzip => flate2::read::MultiGzDecoder::new(file).read_to_end(&mut out),
        Compression::Zstd => bail!(
            "{}: zstd modules are only loaded by the kernel itself (CONFIG_MODULE_DECOMPRESS)",
            path.display()
        ),
    }
    .with_context(|| format!("decompress {}", path.display()))?;
    Ok(out)
}
