//! Exit codes, and an error type that carries one through `anyhow`.

use std::fmt;

pub const OK: u8 = 0;
pub const ERROR: u8 = 1;
pub const USAGE: u8 = 2;
/// Completed, but some sectors could not be read.
pub const UNREADABLE: u8 = 3;
/// A verification found a mismatch.
pub const VERIFY_FAILED: u8 = 4;
/// The peer went away (unplugged, stopped); running again resumes.
pub const PEER_GONE: u8 = 5;
/// Refused for safety: mounted or too small target, not confirmed.
pub const REFUSED: u8 = 6;
pub const INTERRUPTED: u8 = 130;

/// An error that should end the program with a particular exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
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

/// The exit code an error chain asks for (the first `Exit` in it), else `ERROR`.
pub fn code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Exit>().map(|x| x.code))
        .unwrap_or(ERROR)
}
