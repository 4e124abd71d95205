//! Builds the usb4rescue initramfs (newc cpio, xz or gzip) reproducibly and without
//! root, lists existing images and packs the test rigs' small ones; the `image` binary is a thin command line.

pub mod build;
pub mod list;
pub mod newc;
pub mod pack;

pub use build::{Compress, Options, Summary, assemble, build, compress};
pub use list::{Listing, read_image};
pub use pack::{PackOptions, Packed, pack};
