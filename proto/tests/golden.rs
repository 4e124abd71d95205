//! Pins the wire format: each message encoded here must give the bytes below,
//! so a change to a struct, a field's attributes or the framing that would make
//! this build misunderstand an older one fails here first.

use usb4rescue_proto::frame::{FrameReader, Header, Read1, write_frame};
use usb4rescue_proto::msg::*;
use usb4rescue_proto::{BackupState, ChunkRanges, digests};

fn json<T: serde::Serialize>(v: &T) -> String {
    String::from_utf8(to_json(v)).expect("JSON is UTF-8")
}

fn identity() -> Identity {
    Identity {
        hostname: "hosta".into(),
        machine_id: "0123".into(),
        dmi_vendor: "ACME".into(),
        dmi_product: "Box".into(),
        dmi_serial: "S1".into(),
        tool_version: "0.1.0".into(),
    }
}

fn disk_info() -> DiskInfo {
    DiskInfo {
        name: "sda".into(),
        source_path: "/dev/sda".into(),
        size: 8192,
        logical_sector_size: 512,
        model: None,
        serial: Some("X".into()),
        details: Some(serde_json::json!({"rota": false})),
        free: None,
    }
}

fn disk_summary() -> DiskSummary {
    DiskSummary {
        name: "sda".into(),
        size: 8192,
        model: Some("M".into()),
        serial: None,
        sha256: Some("ab".into()),
        unreadable_bytes: 512,
        layout: None,
        free_bytes: 0,
    }
}

#[test]
fn stream_messages() {
    // Protocol 5: the streams a side can use, serve's session token, JOIN.
    let serve = Hello {
        role: Role::Serve,
        streams: 4,
        session: "0f1e".into(),
        protocol: 1,
        min_protocol: 1,
        identity: identity(),
    };
    assert_eq!(
        json(&serve),
        r#"{"protocol":1,"min_protocol":1,"role":"serve","identity":{"hostname":"hosta","machine_id":"0123","dmi_vendor":"ACME","dmi_product":"Box","dmi_serial":"S1","tool_version":"0.1.0"},"streams":4,"session":"0f1e"}"#
    );
    let join = Join {
        session: "0f1e".into(),
        stream: 2,
    };
    assert_eq!(json(&join), r#"{"session":"0f1e","stream":2}"#);
    assert_eq!(kind::JOIN, 22);
}

#[test]
fn control_messages() {
    let hello = Hello {
        protocol: 1,
        min_protocol: 1,
        role: Role::Restore,
        identity: identity(),
        streams: 0,
        session: String::new(),
    };
    assert_eq!(
        json(&hello),
        r#"{"protocol":1,"min_protocol":1,"role":"restore","identity":{"hostname":"hosta","machine_id":"0123","dmi_vendor":"ACME","dmi_product":"Box","dmi_serial":"S1","tool_version":"0.1.0"}}"#
    );
    let err = ErrorMsg {
        code: "busy".into(),
        message: "in use".into(),
    };
    assert_eq!(json(&err), r#"{"code":"busy","message":"in use"}"#);
    let disk = disk_info();
    let begin = BackupBegin {
        label: Some("l".into()),
        chunk_size: 65536,
        fresh: false,
        disks: vec![disk],
        resume_key: None,
        full: false,
    };
    assert_eq!(
        json(&begin),
        r#"{"label":"l","chunk_size":65536,"fresh":false,"disks":[{"name":"sda","source_path":"/dev/sda","size":8192,"logical_sector_size":512,"model":null,"serial":"X","details":{"rota":false}}]}"#
    );
    let ready = BackupReady {
        backup_id: "20260101-000000-x".into(),
        location: "/store/hosta/x".into(),
        resumed: true,
        have: vec![ChunkRanges::from(vec![(0, 3), (5, 6)]), ChunkRanges::new()],
        resume_key: Some("k".into()),
        base: None,
        free: vec![],
    };
    assert_eq!(
        json(&ready),
        r#"{"backup_id":"20260101-000000-x","location":"/store/hosta/x","resumed":true,"have":[[[0,3],[5,6]],[]],"resume_key":"k"}"#
    );
    let end = DiskEnd {
        disk: 0,
        bytes_read: 8192,
        unreadable_bytes: 0,
    };
    assert_eq!(
        json(&end),
        r#"{"disk":0,"bytes_read":8192,"unreadable_bytes":0}"#
    );
    let done = DiskDone {
        disk: 1,
        ok: true,
        sha256: "ab".into(),
        message: "m".into(),
        sha256_pending: false,
        unchanged_bytes: 0,
        base_failed: 0,
    };
    assert_eq!(
        json(&done),
        r#"{"disk":1,"ok":true,"sha256":"ab","message":"m"}"#
    );
    let pending = DiskDone {
        sha256: String::new(),
        sha256_pending: true,
        ..done
    };
    assert_eq!(
        json(&pending),
        r#"{"disk":1,"ok":true,"sha256":"","message":"m","sha256_pending":true}"#
    );
    assert_eq!(json(&SessionEnd { ok: true }), r#"{"ok":true}"#);
    let sdone = SessionDone {
        ok: false,
        message: "m".into(),
        sha256_pending: false,
    };
    assert_eq!(json(&sdone), r#"{"ok":false,"message":"m"}"#);
    let sdone = SessionDone {
        ok: true,
        sha256_pending: true,
        ..sdone
    };
    assert_eq!(
        json(&sdone),
        r#"{"ok":true,"message":"m","sha256_pending":true}"#
    );
    let list = ListReq {
        host: None,
        start: 2,
    };
    assert_eq!(json(&list), r#"{"host":null,"start":2}"#);
}

/// Protocol 2: a used-block backup's free map in BACKUP_BEGIN, FREE_REQ and FREE,
/// and the free bytes a LISTING's disk announces.
#[test]
fn used_block_messages() {
    // A used-block backup's disk: its free map follows the details.
    let used = DiskInfo {
        free: Some(FreeMap {
            ranges: vec![(1 << 20, 3 << 20)],
            parts: vec![PartUse {
                name: "sda1".into(),
                start: 1 << 20,
                end: 4 << 20,
                fs: Some("ext4".into()),
                label: Some("root".into()),
                used: Some(1 << 20),
                why: String::new(),
            }],
        }),
        details: None,
        ..disk_info()
    };
    assert_eq!(
        json(&used),
        r#"{"name":"sda","source_path":"/dev/sda","size":8192,"logical_sector_size":512,"model":null,"serial":"X","details":null,"free":{"ranges":[[1048576,3145728]],"parts":[{"name":"sda1","start":1048576,"end":4194304,"fs":"ext4","label":"root","used":1048576,"why":""}]}}"#
    );
    let q = FreeReq {
        host: "hosta".into(),
        backup_id: "b1".into(),
        disk: "sda".into(),
    };
    assert_eq!(
        json(&q),
        r#"{"host":"hosta","backup_id":"b1","disk":"sda"}"#
    );
    assert_eq!(
        json(&Free {
            free: used.free.clone()
        }),
        r#"{"free":{"ranges":[[1048576,3145728]],"parts":[{"name":"sda1","start":1048576,"end":4194304,"fs":"ext4","label":"root","used":1048576,"why":""}]}}"#
    );
    assert_eq!((kind::FREE_REQ, kind::FREE), (20, 21));
    let summary = DiskSummary {
        free_bytes: 1 << 21,
        ..disk_summary()
    };
    assert!(json(&summary).ends_with(r#""unreadable_bytes":512,"free_bytes":2097152}"#));
}

/// Protocol 4's incremental backups: `full`, `base`, what DISK_DONE counts.
#[test]
fn incremental_messages() {
    let full = BackupBegin {
        label: None,
        chunk_size: 65536,
        fresh: true,
        disks: vec![],
        resume_key: None,
        full: true,
    };
    assert_eq!(
        json(&full),
        r#"{"label":null,"chunk_size":65536,"fresh":true,"disks":[],"full":true}"#
    );
    let ready = BackupReady {
        backup_id: "x".into(),
        location: "/s".into(),
        resumed: false,
        have: vec![ChunkRanges::new(), ChunkRanges::new()],
        resume_key: None,
        base: Some(BaseRef {
            host: "hosta".into(),
            backup_id: "b0".into(),
            disks: vec![Some("sda".into()), None],
        }),
        free: vec![None, Some(FreeMap::default())],
    };
    assert_eq!(
        json(&ready),
        r#"{"backup_id":"x","location":"/s","resumed":false,"have":[[],[]],"base":{"host":"hosta","backup_id":"b0","disks":["sda",null]},"free":[null,{"ranges":[],"parts":[]}]}"#
    );
    let done = DiskDone {
        disk: 1,
        ok: true,
        sha256: "ab".into(),
        message: String::new(),
        sha256_pending: false,
        unchanged_bytes: 1 << 20,
        base_failed: 2,
    };
    assert_eq!(
        json(&done),
        r#"{"disk":1,"ok":true,"sha256":"ab","message":"","unchanged_bytes":1048576,"base_failed":2}"#
    );
}

#[test]
fn listing_and_restore_messages() {
    let summary = BackupSummary {
        host: "hosta".into(),
        backup_id: "b1".into(),
        label: None,
        status: BackupState::CompleteWithErrors,
        created: "2026-01-01T00:00:00Z".into(),
        finished: None,
        disks: vec![disk_summary()],
    };
    let disk = r#"{"name":"sda","size":8192,"model":"M","serial":null,"sha256":"ab","unreadable_bytes":512}"#;
    let listing = Listing {
        backups: vec![summary],
        next: Some(1),
        hidden: 2,
        by_machine_id: true,
        hosts: vec!["hostb".into()],
        hidden_hosts: 3,
    };
    assert_eq!(
        json(&listing),
        format!(
            r#"{{"backups":[{{"host":"hosta","backup_id":"b1","label":null,"status":"complete (unreadable sectors)","created":"2026-01-01T00:00:00Z","finished":null,"disks":[{disk}]}}],"next":1,"hidden":2,"by_machine_id":true,"hosts":["hostb"],"hidden_hosts":3}}"#
        )
    );
    assert_eq!(json(&Listing::default()), r#"{"backups":[]}"#);
    let want = RestoreBegin {
        host: "hosta".into(),
        backup_id: "b1".into(),
        disks: vec!["sda".into()],
        have: vec![ChunkRanges::from(vec![(4, 9)])],
        accepts_damaged: true,
    };
    assert_eq!(
        json(&want),
        r#"{"host":"hosta","backup_id":"b1","disks":["sda"],"have":[[[4,9]]],"accepts_damaged":true}"#
    );
    let req = DigestsReq {
        host: "hosta".into(),
        backup_id: "b1".into(),
        disk: "sda".into(),
        first: 7,
        count: MAX_DIGESTS,
    };
    assert_eq!(
        json(&req),
        r#"{"host":"hosta","backup_id":"b1","disk":"sda","first":7,"count":131071}"#
    );
    let rr = RestoreReady {
        chunk_size: 1 << 20,
        disks: vec![disk_summary()],
    };
    assert_eq!(
        json(&rr),
        format!(r#"{{"chunk_size":1048576,"disks":[{disk}]}}"#)
    );
}

#[test]
fn states_as_listing_sends_them() {
    let words: Vec<String> = [
        BackupState::InProgress,
        BackupState::Complete,
        BackupState::CompleteWithErrors,
        BackupState::Failed,
        BackupState::Sealing,
    ]
    .iter()
    .map(json)
    .collect();
    assert_eq!(
        words,
        [
            r#""incomplete: resumable""#,
            r#""complete""#,
            r#""complete (unreadable sectors)""#,
            r#""failed verification""#,
            r#""verified, image SHA-256 pending""#
        ]
    );
}

#[test]
fn binary_bodies() {
    let mut chunk = ChunkBody::encode_prefix(&[0xaa; 32], 8, &[(2, 3)]);
    chunk.extend_from_slice(b"abcdefgh");
    let mut golden = vec![0xaa; 32];
    golden.extend([8, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
    golden.extend(b"abcdefgh");
    assert_eq!(chunk, golden);
    // FLAG_FREE: the free ranges after the unreadable ones, then only the used bytes.
    let mut chunk = ChunkBody::encode_prefix_free(&[0xaa; 32], 8, &[], &[(0, 2), (6, 2)]);
    chunk.extend_from_slice(b"cdef");
    let mut golden = vec![0xaa; 32];
    golden.extend([8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
    golden.extend([0, 0, 0, 0, 2, 0, 0, 0, 6, 0, 0, 0, 2, 0, 0, 0]);
    golden.extend(b"cdef");
    assert_eq!(chunk, golden);
    assert_eq!(FLAG_FREE, 4);
    // An unchanged chunk: digest and length, no ranges, no data (FLAG_UNCHANGED).
    let unchanged = ChunkBody::encode_prefix(&[0xbb; 32], 65536, &[]);
    let mut golden = vec![0xbb; 32];
    golden.extend([0, 0, 1, 0, 0, 0, 0, 0]);
    assert_eq!(unchanged, golden);
    assert_eq!((FLAG_UNCHANGED, NAK_DATA), (8, 1));
    let d = digests::encode(65536, &[[1; 32]]);
    let mut golden = vec![0, 0, 1, 0, 1, 0, 0, 0];
    golden.extend([1; 32]);
    assert_eq!(d, golden);
}

/// A zero-flagged CHUNK header for disk 3 at 1 TiB with the payload "hi": magic,
/// version, kind, flags, length, disk, offset, payload CRC, header CRC (the CRCs
/// computed independently, with Python's zlib.crc32).
const GOLDEN_FRAME: [u8; 34] = [
    0x55, 0x34, 0x52, 0x53, 0x07, 0x05, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0xac, 0x2a, 0x93, 0xd8, 0xd4, 0x34, 0x96, 0xc7,
    b'h', b'i',
];

#[test]
fn frame_bytes() {
    let mut h = Header::new(kind::CHUNK, 3, 1 << 40);
    h.flags = FLAG_ZERO;
    let mut v = Vec::new();
    write_frame(&mut v, h, b"hi").expect("writing to a Vec");
    assert_eq!(v, GOLDEN_FRAME);
    let Ok(Read1::Frame(f)) = FrameReader::new(&GOLDEN_FRAME[..]).read_frame() else {
        panic!("the golden frame does not decode")
    };
    assert_eq!((f.header.kind, f.header.flags), (kind::CHUNK, FLAG_ZERO));
    assert_eq!((f.header.disk, f.header.offset), (3, 1 << 40));
    assert_eq!(
        (f.header.len, f.intact, &f.payload[..]),
        (2, true, &b"hi"[..])
    );
}
