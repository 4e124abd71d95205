//! Build script: the commit `rescue --version` names (RESCUE_VERSION), read from git,
//! or from USB4RESCUE_COMMIT when the source has no .git (a tarball, a Debian build).
//!
//! Cargo reruns it only when what it read changes: HEAD, the branch HEAD points to (the
//! loose ref, or packed-refs and the folder a new loose ref would appear in) and the
//! override. Edits to tracked files are not looked at (that would rerun it on every
//! change): the commit is the one checked out, not a "dirty" state.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=USB4RESCUE_COMMIT");
    let version = env!("CARGO_PKG_VERSION");
    let commit = match std::env::var("USB4RESCUE_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => from_git().unwrap_or_else(|| {
            "unknown: built outside a git checkout, set USB4RESCUE_COMMIT".to_string()
        }),
    };
    println!("cargo:rustc-env=RESCUE_VERSION={version} (commit {commit})");
}

/// The abbreviated commit of HEAD, with the files that name it marked for reruns.
fn from_git() -> Option<String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let out = git(
        &dir,
        &[
            "rev-parse",
            "--path-format=absolute",
            "--git-dir",
            "--git-common-dir",
            "--short=7",
            "HEAD",
        ],
    )?;
    let mut lines = out.lines();
    let (git_dir, common, commit) = (lines.next()?, lines.next()?, lines.next()?);
    println!("cargo:rerun-if-changed={git_dir}/HEAD");
    // A worktree's HEAD is in its own git dir, the branches in the common one.
    if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
        let loose = Path::new(common).join(branch.trim());
        if loose.is_file() {
            println!("cargo:rerun-if-changed={}", loose.display());
        } else {
            // Packed: a commit writes a loose ref next to its siblings.
            let packed = PathBuf::from(common).join("packed-refs");
            if packed.is_file() {
                println!("cargo:rerun-if-changed={}", packed.display());
            }
            if let Some(parent) = loose.parent().filter(|p| p.is_dir()) {
                println!("cargo:rerun-if-changed={}", parent.display());
            }
        }
    }
    Some(commit.to_string())
}

/// `git ARGS` in `dir`: its standard output, or None when git is missing or fails.
fn git(dir: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()
}
