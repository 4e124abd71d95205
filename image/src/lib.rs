//! Builds the usb4rescue initramfs (newc cpio, xz or gzip) reproducibly and without
//! root, and lists existing images; the `image` binary is a thin command line.

pub mod build;
pub mod list;
pub mod newc;

pub use build::{Compress, Options, Summary, assemble, build, compress};
pub use list::{Listing, read_image};
