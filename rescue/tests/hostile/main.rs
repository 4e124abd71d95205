//! Hostile-peer suite: a peer that lies, floods, stalls or forges, against the real
//! `rescue serve` and the real clients. One module per kind of attack; each test
//! fails on the defect it names. Helpers shared with e2e live in ../common.
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod escapes;
mod listing;
mod liveness;
mod lying_server;
mod manifest;
mod peer;
mod refusing;
mod store_links;
mod used_blocks;
