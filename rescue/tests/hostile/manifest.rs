//! Issue 10, point 1 (the manifest): a BACKUP_BEGIN whose disk `details` are
//! deeply nested or large became a manifest.json hundreds of times its size
//! (3.86 MB in, 491 MB written, 861 MB of server memory). Such details are
//! refused at BACKUP_BEGIN; honest ones still make a small manifest.

use serde_json::{Value, json};

use crate::common::*;
use crate::peer::*;

/// Sends a BACKUP_BEGIN for one 1 MiB disk with these details; the reply.
fn begin_with_details(srv: &Server, details: Value) -> (u8, Value) {
    let mut p = RawPeer::connect(&srv.sock);
    p.hello(
        "backup",
        identity("nested", "0123456789abcdef0123456789abcdef"),
    );
    p.send_json(
        kind::BACKUP_BEGIN,
        &json!({"label": null, "chunk_size": 1 << 20, "fresh": true, "disks": [
            {"name": "sda", "source_path": "/dev/sda", "size": 1 << 20,
             "logical_sector_size": 512, "details": details}
        ]}),
    );
    let f = p.recv(&[kind::BACKUP_READY]).expect("an answer");
    (f.header.kind, body(&f))
}

/// The largest manifest.json in the store, in bytes.
fn largest_manifest(srv: &Server) -> u64 {
    backup_dirs(&srv.store)
        .iter()
        .map(|b| std::fs::metadata(b.join("manifest.json")).unwrap().len())
        .max()
        .unwrap_or(0)
}

#[test]
fn deeply_nested_details_are_refused_not_blown_up() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &d.path().join("store"));
    // 3.8 MB of zeros 120 arrays deep: each would be a line indented by 246
    // spaces in the pretty-printed manifest.
    // (Value::Array, not json!: that would copy the whole value each time.)
    let mut nested = json!(vec![0u8; 1_900_000]);
    for _ in 0..120 {
        nested = Value::Array(vec![nested]);
    }
    let (k, b) = begin_with_details(&srv, nested);
    assert_eq!(k, kind::ERROR, "accepted: {b}");
    let m = b["message"].as_str().unwrap();
    assert!(m.contains("sda") && m.contains("nested"), "{m}");
    assert_eq!(b["code"], "bad_request");
    assert_eq!(largest_manifest(&srv), 0, "a manifest was written");
}

#[test]
fn large_details_are_refused_and_honest_ones_stay_small() {
    let d = tempfile::tempdir().unwrap();
    let srv = Server::start(d.path(), &d.path().join("store"));
    // Shallow but wide: 3 MB in one disk's details.
    let wide: Vec<Value> = (0..150_000).map(|i| json!({"p": i})).collect();
    let (k, b) = begin_with_details(&srv, json!({ "partitions": wide }));
    assert_eq!(k, kind::ERROR, "accepted: {b}");
    assert!(b["message"].as_str().unwrap().contains("limit"), "{b}");
    // What a disk with 128 partitions describes fits.
    let parts: Vec<Value> = (0..128)
        .map(|i| {
            json!({"number": i + 1, "start": i * 2048, "size": 2048,
                        "type": "0fc63daf-8483-4772-8e79-3d69d8477de4",
                        "name": format!("partition {i}"), "fs": {"type": "ext4", "uuid": "x"}})
        })
        .collect();
    let (k, b) = begin_with_details(&srv, json!({"name": "sda", "partitions": parts}));
    assert_eq!(k, kind::BACKUP_READY, "refused: {b}");
    let size = largest_manifest(&srv);
    assert!(size > 0 && size < 256 * 1024, "manifest of {size} bytes");
}
