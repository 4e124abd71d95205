//! The kernel side of module loading, behind a trait so tests can record what would
//! be inserted instead of calling into the kernel.

use std::ffi::CStr;
use std::fs::File;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module, init_module};

/// Inserts modules into the running kernel.
pub trait ModuleSys {
    /// Inserts an uncompressed module image (init_module(2)).
    fn init_module(&mut self, name: &str, image: &[u8], params: &CStr) -> Result<(), Errno>;
    /// Hands a compressed module file to the kernel to decompress itself
    /// (finit_module(2) with MODULE_INIT_COMPRESSED_FILE); used for formats we cannot
    /// decompress in user space.
    fn finit_compressed(&mut self, name: &str, file: &File, params: &CStr) -> Result<(), Errno>;
}

/// The running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelSys;

/// Linux's MODULE_INIT_COMPRESSED_FILE (include/uapi/linux/module.h), which nix lacks.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

impl ModuleSys for KernelSys {
    fn init_module(&mut self, _name: &str, image: &[u8], params: &CStr) -> Result<(), Errno> {
        init_module(image, params)
    }

    fn finit_compressed(&mut self, _name: &str, file: &File, params: &CStr) -> Result<(), Errno> {
        finit_module(
            file,
            params,
            ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE),
        )
    }
}

/// Loads nothing and records what would have been loaded: for running init mode
/// outside an initramfs, where touching the host's kernel would be a surprise.
#[derive(Debug, Default, Clone)]
pub struct DryRun {
    pub(crate) would_load: Vec<String>,
}

impl ModuleSys for DryRun {
    fn init_module(&mut self, name: &str, _image: &[u8], _params: &CStr) -> Result<(), Errno> {
        self.would_load.push(name.to_string());
        Ok(())
    }

    fn finit_compressed(&mut self, name: &str, _file: &File, _params: &CStr) -> Result<(), Errno> {
        self.would_load.push(name.to_string());
        Ok(())
    }
}
