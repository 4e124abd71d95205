//! The binary body of DIGESTS, the answer to DIGESTS_REQ (restore --resume):
//! the backup's chunk size (u32 LE), the number of digests n (u32 LE), then n
//! SHA-256 digests of 32 bytes, all zeros for a chunk the backup does not hold.

/// Why a DIGESTS body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestsError {
    #[error("the peer sent a truncated DIGESTS message")]
    Truncated,
    #[error("the peer sent a malformed DIGESTS message")]
    Malformed,
}

/// Fixed part before the digests.
const FIXED: usize = 8;

/// Encodes a DIGESTS body.
pub fn encode(chunk_size: u32, digests: &[[u8; 32]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED + digests.len() * 32);
    out.extend_from_slice(&chunk_size.to_le_bytes());
    out.extend_from_slice(&(digests.len() as u32).to_le_bytes());
    out.extend(digests.iter().flatten());
    out
}

/// A decoded DIGESTS body, borrowing the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digests<'a> {
    /// The chunk size the backup was made with (not checked here: the caller
    /// knows which sizes it accepts).
    pub chunk_size: u32,
    digests: &'a [[u8; 32]],
}

impl<'a> Digests<'a> {
    /// Decodes a body whose count matches its length exactly.
    pub fn decode(payload: &'a [u8]) -> Result<Digests<'a>, DigestsError> {
        let field = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(
                payload.get(at..at + 4)?.try_into().ok()?,
            ))
        };
        let (Some(chunk_size), Some(n)) = (field(0), field(4)) else {
            return Err(DigestsError::Truncated);
        };
        let (digests, rest) = payload[FIXED..].as_chunks::<32>();
        if !rest.is_empty() || digests.len() as u64 != u64::from(n) {
            return Err(DigestsError::Malformed);
        }
        Ok(Digests {
            chunk_size,
            digests,
        })
    }

    /// How many digests it carries.
    pub fn len(&self) -> u32 {
        self.digests.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The digest recorded for the `i`-th chunk it covers; `None` where the
    /// backup holds nothing (all zeros) or beyond its end.
    pub fn recorded(&self, i: usize) -> Option<&'a [u8; 32]> {
        self.digests.get(i).filter(|d| d.iter().any(|&b| b != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_golden_bytes() {
        let body = encode(1 << 20, &[[0u8; 32], [7u8; 32]]);
        let mut golden = vec![0, 0, 0x10, 0, 2, 0, 0, 0];
        golden.extend([0u8; 32]);
        golden.extend([7u8; 32]);
        assert_eq!(body, golden);
        let d = Digests::decode(&body).unwrap();
        assert_eq!((d.chunk_size, d.len()), (1 << 20, 2));
        assert_eq!(d.recorded(0), None);
        assert_eq!(d.recorded(1), Some(&[7u8; 32]));
        assert_eq!(d.recorded(2), None);
    }

    #[test]
    fn refuses_lengths_that_disagree() {
        assert_eq!(Digests::decode(&[1, 2, 3]), Err(DigestsError::Truncated));
        assert_eq!(Digests::decode(&[0; 7]), Err(DigestsError::Truncated));
        let mut body = encode(1 << 20, &[[1u8; 32]; 2]);
        assert!(Digests::decode(&body).is_ok());
        body.pop();
        assert_eq!(Digests::decode(&body), Err(DigestsError::Malformed));
        let mut body = encode(1 << 20, &[[1u8; 32]; 2]);
        body[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Digests::decode(&body), Err(DigestsError::Malformed));
        assert!(Digests::decode(&encode(0, &[])).unwrap().is_empty());
    }
}
