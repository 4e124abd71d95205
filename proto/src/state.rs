//! A backup's state as LISTING reports it: on the wire the word a person reads
//! ("complete (unreadable sectors)"), decoded into a type so the restoring side
//! tests what it means, not how it is spelled.

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
}

const ALL: [BackupState; 4] = [
    BackupState::InProgress,
    BackupState::Complete,
    BackupState::CompleteWithErrors,
    BackupState::Failed,
];

impl BackupState {
    /// How the state is shown, and sent.
    pub fn word(self) -> &'static str {
        match self {
            BackupState::InProgress => "incomplete: resumable",
            BackupState::Complete => "complete",
            BackupState::CompleteWithErrors => "complete (unreadable sectors)",
            BackupState::Failed => "failed verification",
        }
    }

    /// The state a word names; `None` for one this build does not know.
    pub(crate) fn from_word(word: &str) -> Option<BackupState> {
        ALL.into_iter().find(|s| s.word() == word)
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
        s.serialize_str(self.word())
    }
}

impl<'de> Deserialize<'de> for BackupState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = String::deserialize(d)?;
        BackupState::from_word(&word).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown backup state \"{}\" (known: {})",
                word.escape_debug().take(64).collect::<String>(),
                ALL.map(BackupState::word).join(", ")
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
            assert_eq!(json, format!("\"{}\"", s.word()));
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
