//! A backup's state as LISTING reports it, decoded into a type so the restoring
//! side tests what it means, not how it is spelled. The wire's tokens are fixed
//! by the protocol (they were the words shown when it was written, and peers
//! match them exactly); how a state is shown (`word`) may change without them.
//! The store's manifest spells the same type its own way (kebab-case).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupState {
    /// Data is still arriving, or the transfer was interrupted: can be resumed.
    InProgress,
    /// Every disk was received and verified.
    Complete,
    /// Received, but the source had unreadable sectors (see the mapfiles).
    CompleteWithErrors,
    /// Verification failed; resume re-sends what is damaged.
    Failed,
    /// Every chunk is verified and durable; the server is computing the
    /// whole-image SHA-256 and marks it complete when done. Neither resumable
    /// nor restorable yet.
    Sealing,
}

const ALL: [BackupState; 5] = [
    BackupState::InProgress,
    BackupState::Complete,
    BackupState::CompleteWithErrors,
    BackupState::Failed,
    BackupState::Sealing,
];

impl BackupState {
    /// The token LISTING carries (docs/protocol.md); never change one.
    fn token(self) -> &'static str {
        match self {
            BackupState::InProgress => "incomplete: resumable",
            BackupState::Complete => "complete",
            BackupState::CompleteWithErrors => "complete (unreadable sectors)",
            BackupState::Failed => "failed verification",
            BackupState::Sealing => "verified, image SHA-256 pending",
        }
    }

    /// How the state is shown to a person: as it is sent, today.
    pub fn word(self) -> &'static str {
        self.token()
    }

    /// Whether the backup can be restored from.
    pub fn is_complete(self) -> bool {
        matches!(
            self,
            BackupState::Complete | BackupState::CompleteWithErrors
        )
    }
}

impl Serialize for BackupState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.token())
    }
}

impl<'de> Deserialize<'de> for BackupState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let token = String::deserialize(d)?;
        ALL.into_iter().find(|s| s.token() == token).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown backup state \"{}\" (known: {})",
                token.escape_debug().take(64).collect::<String>(),
                ALL.map(BackupState::token).join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn travels_as_its_word() {
        for s in ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.token()));
            assert_eq!(serde_json::from_str::<BackupState>(&json).unwrap(), s);
        }
        assert_eq!(
            serde_json::to_string(&BackupState::CompleteWithErrors).unwrap(),
            r#""complete (unreadable sectors)""#
        );
        // A spelling that merely starts like a restorable state is not one.
        let e = serde_json::from_str::<BackupState>(r#""complete-ish""#).unwrap_err();
        assert!(e.to_string().contains("unknown backup state"), "{e}");
        assert!(!BackupState::InProgress.is_complete());
        assert!(BackupState::CompleteWithErrors.is_complete());
    }
}
