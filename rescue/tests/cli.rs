//! The binary's own command line: `rescue --version` names the version and the commit
//! it was built from (rescue/build.rs), and says so when it cannot know the commit;
//! the hidden `rescue generate-docs DIR` writes the man pages and completions.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn rescue_version() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rescue"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// HEAD of the checkout these tests run in, or None outside git.
fn head() -> Option<String> {
    let out = Command::new("git")
        // Cargo's run-time value: the built-in one may name another checkout that
        // shared the target directory (cargo does not rebuild for a moved checkout).
        .arg("-C")
        .arg(
            std::env::var_os("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
        )
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn version_names_the_commit_built_from() {
    let line = rescue_version();
    let prefix = format!("rescue {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = line
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line:?} is not \"{prefix}COMMIT)\""));
    match std::env::var("USB4RESCUE_COMMIT") {
        Ok(forced) if !forced.trim().is_empty() => assert_eq!(commit, forced.trim()),
        // Cargo reran the build script for the commit checked out now (its
        // rerun-if-changed files), so the binary names that one.
        _ => match head() {
            Some(full) => assert!(
                commit.len() >= 7 && full.starts_with(commit),
                "{line:?}: {commit:?} is not HEAD ({full})"
            ),
            None => assert!(commit.starts_with("unknown"), "{line:?}"),
        },
    }
}

#[test]
fn every_subcommand_reports_the_same_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_rescue"))
        .args(["backup", "--version"])
        .output()
        .unwrap();
    let sub = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        sub.trim_end(),
        rescue_version().replacen("rescue", "rescue-backup", 1)
    );
}

#[test]
fn generate_docs_writes_pages_and_completions_and_stays_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rescue"))
        .arg("generate-docs")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8(out.stdout).unwrap();
    for f in [
        "man/rescue.8",
        "man/rescue-serve.8",
        "completions/rescue.fish",
    ] {
        let path = dir.path().join(f);
        assert!(path.is_file(), "{f} missing");
        assert!(
            listed.contains(&*path.to_string_lossy()),
            "{f} not listed: {listed}"
        );
    }
    let help = Command::new(env!("CARGO_BIN_EXE_rescue"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("generate-docs"));
    // Without DIR: a usage error (2), nothing written.
    let bare = Command::new(env!("CARGO_BIN_EXE_rescue"))
        .arg("generate-docs")
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(2), "{bare:?}");
}
