//! Exit codes, and an error type that carries one through `anyhow`.

use std::fmt;

use crate::cancel::Interrupted;

pub(crate) const OK: u8 = 0;
pub(crate) const ERROR: u8 = 1;
pub(crate) const USAGE: u8 = 2;
/// Completed, but some sectors could not be read.
pub const UNREADABLE: u8 = 3;
/// A verification found a mismatch.
pub(crate) const VERIFY_FAILED: u8 = 4;
/// The peer went away (unplugged, stopped); running again resumes.
pub const PEER_GONE: u8 = 5;
/// Refused for safety: mounted or too small target, not confirmed.
pub(crate) const REFUSED: u8 = 6;
pub(crate) const INTERRUPTED: u8 = 130;

/// An error that should end the program with a particular exit code.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Exit {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Exit {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Adds how to carry on to an error that ended a transfer because the peer
/// went away: each command knows its own way to resume (backup: run it again;
/// restore: add --resume). Other errors pass through unchanged.
pub(crate) fn advise_resume(err: anyhow::Error, advice: &str) -> anyhow::Error {
    if code_of(&err) != PEER_GONE {
        return err;
    }
    let m = format!("{err:#}");
    let sentence = if m.ends_with('?') || m.ends_with('.') {
        let mut c = advice.chars();
        let first = c.next().map(|f| f.to_uppercase().collect::<String>());
        format!(" {}{}", first.unwrap_or_default(), c.as_str())
    } else {
        format!("; {advice}")
    };
    Exit::new(PEER_GONE, format!("{m}{sentence}")).into()
}

/// The exit code an error chain asks for (the first `Exit` in it, or
/// `INTERRUPTED` for the user's interruption), else `ERROR`.
pub fn code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| {
            if e.is::<Interrupted>() {
                return Some(INTERRUPTED);
            }
            e.downcast_ref::<Exit>().map(|x| x.code)
        })
        .unwrap_or(ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_advice_only_for_a_peer_that_went_away() {
        let gone: anyhow::Error = Exit::new(PEER_GONE, "the peer is gone: is the cable in?").into();
        let e = advise_resume(gone, "run the same command again to resume");
        assert_eq!(code_of(&e), PEER_GONE);
        assert_eq!(
            format!("{e:#}"),
            "the peer is gone: is the cable in? Run the same command again to resume"
        );
        let eof: anyhow::Error = Exit::new(PEER_GONE, "the peer closed the connection").into();
        let e = advise_resume(eof, "add --resume");
        assert_eq!(
            format!("{e:#}"),
            "the peer closed the connection; add --resume"
        );
        let other = advise_resume(anyhow::anyhow!("disk full"), "add --resume");
        assert_eq!(code_of(&other), ERROR);
        assert_eq!(format!("{other:#}"), "disk full");
    }

    #[test]
    fn the_users_interruption_exits_130_by_its_type() {
        let e = anyhow::Error::new(Interrupted::new("interrupted while waiting for a peer"))
            .context("serving");
        assert_eq!(code_of(&e), INTERRUPTED);
        assert_eq!(code_of(&anyhow::anyhow!("interrupted")), ERROR);
    }
}
