//! The local machine, read below an injectable `Root` so tests use fake trees:
//! its disks and what is stacked on them, their partition tables and
//! filesystems, and reading and writing them.

pub mod blkdev;
pub mod busy;
pub mod direct;
pub mod disks;
pub mod fsprobe;
pub mod identity;
pub mod mountinfo;
pub mod partitions;
pub mod readahead;
pub mod source;
