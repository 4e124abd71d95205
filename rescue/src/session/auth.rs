//! Who may see, restore and resume which backups (threat model: docs/protocol.md):
//! a peer reads its own machine's backups, others only with the serving side's
//! consent (`serve --allow-restore`), and resumes an interrupted backup with the
//! key the server gave when it started (kept by the client under /run/rescue).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::proto::msg::{BackupBegin, Identity};
use crate::store::{self, Manifest, names};
use crate::util::hex;

/// Hosts whose backups any peer may list, restore, and resume without the key.
#[derive(Debug, Clone, Default)]
pub struct Consent {
    all: bool,
    hosts: Vec<String>,
}

impl Consent {
    /// From `--allow-restore` / `rescue.allow_restore=` values: host names
    /// (as the store names their directories) or `all`.
    pub fn new(allowed: &[String]) -> Consent {
        let mut c = Consent::default();
        for h in allowed.iter().flat_map(|a| a.split(',')).map(str::trim) {
            match h {
                "" => {}
                "all" => c.all = true,
                h => c.hosts.push(names::sanitize(h, "host")),
            }
        }
        c
    }

    pub(crate) fn allows(&self, host: &str) -> bool {
        self.all || self.hosts.iter().any(|h| h == host)
    }

    /// For serve's start-up line.
    pub(crate) fn describe(&self) -> String {
        if self.all {
            "any peer may restore any backup here (--allow-restore all)".into()
        } else if self.hosts.is_empty() {
            "a peer sees only its own machine's backups (--allow-restore HOST lets others restore HOST's)".into()
        } else {
            format!(
                "besides its own, any peer may restore the backups of {}",
                self.hosts.join(", ")
            )
        }
    }
}

/// Whether the backup of `host` described by `m` was made by the machine the
/// peer says it is: the same host directory and the same machine-id. A hostname
/// alone proves nothing (anyone can claim one), and an empty machine-id (a rescue
/// system) neither; cloned systems share a machine-id, so both must agree.
pub(crate) fn is_own(peer: &Identity, host: &str, m: &Manifest) -> bool {
    same_machine_id(peer, m) && store::host_name(peer) == host
}

/// Whether `m` was made under the peer's (non-empty) machine-id, whatever the
/// hostname: the same machine renamed, or a clone. What a peer asking for its
/// own backups is offered when its hostname has none, within [`may_read`].
pub(crate) fn same_machine_id(peer: &Identity, m: &Manifest) -> bool {
    !peer.machine_id.is_empty() && peer.machine_id == m.source.machine_id
}

/// Whether `peer` may list, restore and fetch digests of this backup.
pub(crate) fn may_read(consent: &Consent, peer: &Identity, host: &str, m: &Manifest) -> bool {
    consent.allows(host) || is_own(peer, host, m)
}

/// Whether backup `m` of `host` may be the base of the peer's new backup
/// (incremental): made under the same machine-id, which must not be empty unless
/// the serving side consents to `host` (a rescue system has none; the peer gets
/// the base's digests, which only a reader of those backups may have).
pub(crate) fn may_be_base(consent: &Consent, peer: &Identity, host: &str, m: &Manifest) -> bool {
    peer.machine_id == m.source.machine_id && (!peer.machine_id.is_empty() || consent.allows(host))
}

/// What a peer is told when it may not read `host`'s backups.
pub(crate) fn refusal(host: &str) -> String {
    format!(
        "the backups of {host} here were made by another machine (or by a rescue system without a machine-id); to restore them, allow it on the serving machine: `rescue serve --allow-restore {host}` (rescue.allow_restore={host} on the rescue stick)"
    )
}

/// How a refused peer learns what to ask the serving side for when it may not
/// know which hosts are meant.
pub(crate) const ALLOW_HINT: &str = "`rescue serve --allow-restore HOST|all`";

/// Whether a BACKUP_BEGIN presenting `key` may resume the backup `m` of `host`.
pub(crate) fn may_resume(consent: &Consent, host: &str, key: Option<&str>, m: &Manifest) -> bool {
    let matches = match (key, &m.resume_key_sha256) {
        (Some(k), Some(want)) => key_digest(k) == *want,
        _ => false,
    };
    matches || consent.allows(host)
}

/// A new random resume key (128 bits, hex).
pub(crate) fn new_key() -> Result<String> {
    let mut buf = [0u8; 16];
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(std::io::Error::last_os_error()).context("getting random bytes for a key");
    }
    Ok(hex(&buf))
}

/// What the server keeps of a key: its SHA-256, so the manifest does not hold it.
pub(crate) fn key_digest(key: &str) -> String {
    hex(&crate::xfer::sha256(key.as_bytes()))
}

/// Where the client keeps resume keys: `RESCUE_STATE_DIR`, else /run/rescue for
/// root, else `$XDG_RUNTIME_DIR/rescue`, else a private directory in /tmp. All
/// of these last until reboot, like the interrupted backup's reason to resume.
fn state_dir() -> Option<PathBuf> {
    let uid = nix::unistd::geteuid().as_raw();
    let dir = std::env::var_os("RESCUE_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| (uid == 0).then(|| PathBuf::from("/run/rescue")))
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("rescue")))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("rescue-{uid}")));
    let _ = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    // Someone else's directory (or a link to one) would let them read or plant keys.
    let m = fs::symlink_metadata(&dir).ok()?;
    (m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0).then_some(dir)
}

/// The file holding the key for this backup to this server: named by a digest
/// of who the server is and what is backed up (what makes a backup resumable).
fn key_file(server: &Identity, begin: &BackupBegin) -> Option<PathBuf> {
    let mut what = format!(
        "{}\n{}\n{:?}\n{}\n",
        server.machine_id, server.hostname, begin.label, begin.chunk_size
    );
    for d in &begin.disks {
        what.push_str(&format!(
            "{}\n{}\n{:?}\n{}\n",
            d.name, d.size, d.serial, d.source_path
        ));
    }
    let h = key_digest(&what);
    Some(state_dir()?.join(format!("resume-{}.key", &h[..32])))
}

/// The key this machine kept for resuming `begin` on `server`, if any.
pub(crate) fn load_key(server: &Identity, begin: &BackupBegin) -> Option<String> {
    let s = fs::read_to_string(key_file(server, begin)?).ok()?;
    let k = s.trim();
    (!k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| k.to_string())
}

/// Keeps the key the server gave; a machine that cannot keep it can still resume
/// with the serving side's consent, so a failure is only a note.
pub(crate) fn save_key(server: &Identity, begin: &BackupBegin, key: &str) {
    let Some(p) = key_file(server, begin) else {
        eprintln!(
            "note: no private directory to keep the resume key in; an interrupted backup will then need `--allow-restore` on the serving side to continue"
        );
        return;
    };
    let r = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&p)
        .and_then(|mut f| f.write_all(format!("{key}\n").as_bytes()));
    if let Err(e) = r {
        eprintln!("note: cannot keep the resume key in {}: {e}", p.display());
    }
}

/// Drops the key once the backup is complete.
pub(crate) fn forget_key(server: &Identity, begin: &BackupBegin) {
    if let Some(p) = key_file(server, begin) {
        let _ = fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(machine_id: &str, key: Option<&str>) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format": "usb4rescue-backup", "version": 1, "backup_id": "b", "label": null,
            "status": "in-progress", "created": "", "updated": "", "finished": null,
            "source": {"hostname": "hosta", "machine_id": machine_id, "tool_version": "x"},
            "receiver": {"hostname": "b", "tool_version": "x"}, "chunk_size": 65536,
            "disks": [], "resume_key_sha256": key.map(key_digest),
        }))
        .unwrap()
    }

    fn peer(hostname: &str, machine_id: &str) -> Identity {
        Identity {
            hostname: hostname.into(),
            machine_id: machine_id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn own_needs_hostname_and_machine_id() {
        let m = manifest("m1", None);
        let none = Consent::new(&[]);
        assert!(may_read(&none, &peer("hosta", "m1"), "hosta", &m));
        // A clone (same machine-id, other name), a forged name, no machine-id.
        assert!(!may_read(&none, &peer("hostc", "m1"), "hosta", &m));
        assert!(!may_read(&none, &peer("hosta", "m2"), "hosta", &m));
        let empty = manifest("", None);
        assert!(!may_read(&none, &peer("hosta", ""), "hosta", &empty));
        // Consent, by name or for all.
        let some = Consent::new(&["hostx,hosta".into()]);
        assert!(may_read(&some, &peer("hostc", ""), "hosta", &empty));
        assert!(!may_read(&some, &peer("hostc", ""), "hostb", &empty));
        assert!(may_read(
            &Consent::new(&["all".into()]),
            &peer("c", ""),
            "hostb",
            &m
        ));
    }

    #[test]
    fn a_base_needs_the_machine_id_or_consent_for_a_rescue_system() {
        let none = Consent::new(&[]);
        let hosta = Consent::new(&["hosta".into()]);
        let (m1, empty) = (manifest("m1", None), manifest("", None));
        assert!(may_be_base(&none, &peer("hosta", "m1"), "hosta", &m1));
        assert!(!may_be_base(&none, &peer("hosta", "m2"), "hosta", &m1));
        // A rescue system has no machine-id: only with consent, and only
        // against a backup made without one too.
        assert!(!may_be_base(&none, &peer("hosta", ""), "hosta", &empty));
        assert!(may_be_base(&hosta, &peer("hosta", ""), "hosta", &empty));
        assert!(!may_be_base(&hosta, &peer("hosta", ""), "hosta", &m1));
        assert!(!may_be_base(&hosta, &peer("hosta", "m2"), "hosta", &m1));
    }

    #[test]
    fn resuming_needs_the_key_or_consent() {
        let k = new_key().unwrap();
        assert_eq!(k.len(), 32);
        assert_ne!(k, new_key().unwrap());
        let m = manifest("m1", Some(&k));
        let none = Consent::new(&[]);
        assert!(may_resume(&none, "hosta", Some(&k), &m));
        assert!(!may_resume(&none, "hosta", Some("00"), &m));
        assert!(!may_resume(&none, "hosta", None, &m));
        assert!(!may_resume(&none, "hosta", None, &manifest("m1", None)));
        assert!(may_resume(
            &Consent::new(&["hosta".into()]),
            "hosta",
            None,
            &m
        ));
    }
}
