//! The local machine, read below an injectable `Root` so tests use fake trees:
//! its disks and what is stacked on them, their partition tables and
//! filesystems, and reading and writing them.

pub(crate) mod blkdev;
pub mod busy;
pub(crate) mod direct;
pub mod disks;
pub mod fsprobe;
pub(crate) mod identity;
pub(crate) mod mountinfo;
pub mod partitions;
pub(crate) mod readahead;
pub(crate) mod resize;
pub mod source;
pub(crate) mod used;
