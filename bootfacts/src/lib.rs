//! What the rescue binary (loading modules as PID 1) and the image builder (choosing
//! which modules ship) must agree on, in one place: the depmod index files and
//! module names, decompressing modules and images, and the modules rescue needs.
//! Depends on nothing of rescue's.

pub mod decompress;
pub mod glob;
pub mod index;
pub mod needed;

pub use decompress::{Compression, read_module};
pub use glob::glob_match;
pub use index::{ModIndex, name_of_path, normalize};
