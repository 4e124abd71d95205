//! `rescue generate-docs DIR` (hidden): the man pages and shell completions, made
//! from the clap definitions in cli.rs so they never disagree with `--help`. The
//! Debian package (scripts/build-deb.sh) runs it; nothing generated is committed.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cmd::cli::Cli;

/// Section 8: system administration commands (rescue needs root).
const SECTION: &str = "8";

/// Writes DIR/man/*.8 and DIR/completions/{rescue.bash,_rescue,rescue.fish}; returns
/// the files written.
pub fn generate(dir: &Path) -> Result<Vec<PathBuf>> {
    let man = dir.join("man");
    let comp = dir.join("completions");
    for d in [&man, &comp] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut written = man_pages(&man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut Cli::command(), "rescue", &comp)
            .with_context(|| format!("writing the {shell} completion into {}", comp.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// rescue.8 and one rescue-SUBCOMMAND.8 per visible subcommand.
fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Built, the subcommands carry their full names (rescue-backup) and the globals.
    cmd.build();
    let subs = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned();
    let mut written = Vec::new();
    for page in std::iter::once(cmd.clone()).chain(subs) {
        let man = clap_mangen::Man::new(page)
            .section(SECTION)
            .source(concat!("rescue ", env!("RESCUE_VERSION")))
            .manual("System Administration");
        let path = dir.join(man.get_filename());
        let mut roff = Vec::new();
        man.render(&mut roff).context("rendering a man page")?;
        fs::write(&path, roff).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_subcommand_gets_a_page_and_every_shell_a_completion() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "rescue.8",
            "rescue-backup.8",
            "rescue-restore.8",
            "rescue-serve.8",
            "rescue-init.8",
            "rescue.bash",
            "_rescue",
            "rescue.fish",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        // The hidden command documents nothing of itself.
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        let bash = fs::read_to_string(dir.path().join("completions/rescue.bash")).unwrap();
        assert!(!bash.contains("generate-docs"));
        assert!(bash.contains("--allow-restore"), "serve's options complete");
        let page = fs::read_to_string(dir.path().join("man/rescue-backup.8")).unwrap();
        assert!(
            page.starts_with(".ie"),
            "roff: {}",
            &page[..40.min(page.len())]
        );
        assert!(
            page.contains(&format!(
                ".TH rescue-backup 8  \"rescue {} (commit ",
                env!("CARGO_PKG_VERSION")
            )),
            "{page}"
        );
        assert!(
            page.contains("Send disks of this machine"),
            "the help text is the page"
        );
    }
}
