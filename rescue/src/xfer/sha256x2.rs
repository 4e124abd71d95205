//! SHA-256 of two independent messages at once, interleaved on the CPU's SHA
//! extensions.
//!
//! One SHA-256 stream is bound by the latency of `sha256rnds2`: each pair of
//! rounds waits for the previous one, and the execution unit idles in between.
//! Two messages hashed in lockstep fill those gaps, so verifying two chunks
//! costs little more than one (the same idea as ISA-L's `sha256_ni_x2`). Chunk
//! digests are independent, so the sender's and the receiver's per-chunk hashing
//! use this; the whole-image digest is one stream and cannot.
//!
//! Falls back to `sha2` (which picks its own best code) on CPUs without SHA-NI.

use sha2::{Digest, Sha256};

/// The SHA-256 digests of `a` and `b`.
pub(crate) fn digest_pair(a: &[u8], b: &[u8]) -> ([u8; 32], [u8; 32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if shani::available() {
            // SAFETY: the CPU has the SHA, SSSE3 and SSE4.1 extensions.
            return unsafe { shani::digest_pair(a, b) };
        }
    }
    (Sha256::digest(a).into(), Sha256::digest(b).into())
}

const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256 of a long message fed in order, piece by piece (a whole disk image,
/// chunk by chunk), that can also return each piece's own SHA-256 from the same
/// pass over its bytes (the receiver's chunk check and whole-image digest).
#[derive(Clone)]
pub(crate) struct Sha256Stream {
    state: [u32; 8],
    buf: [u8; 64],
    buf_len: usize,
    len: u64,
}

impl Default for Sha256Stream {
    fn default() -> Self {
        Sha256Stream {
            state: H0,
            buf: [0; 64],
            buf_len: 0,
            len: 0,
        }
    }
}

impl Sha256Stream {
    pub fn new() -> Sha256Stream {
        Sha256Stream::default()
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.buf_len > 0 {
            let n = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
            self.buf_len += n;
            data = &data[n..];
            if self.buf_len < 64 {
                return;
            }
            sha2::block_api::compress256(&mut self.state, &[self.buf]);
            self.buf_len = 0;
        }
        let (blocks, rest) = data.as_chunks::<64>();
        sha2::block_api::compress256(&mut self.state, blocks);
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    /// Feeds `n` zero bytes.
    pub(crate) fn update_zeros(&mut self, mut n: u64) {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.update(&ZEROS[..k]);
            n -= k as u64;
        }
    }

    /// Feeds `data` and returns its own SHA-256, both from one interleaved pass
    /// when the CPU allows and the stream is at a block boundary.
    pub(crate) fn update_and_digest(&mut self, data: &[u8]) -> [u8; 32] {
        #[cfg(target_arch = "x86_64")]
        {
            if self.buf_len == 0 && shani::available() {
                let (blocks, rest) = data.as_chunks::<64>();
                let mut own = H0;
                // SAFETY: the CPU has the SHA, SSSE3 and SSE4.1 extensions.
                unsafe { shani::compress_x2(&mut self.state, &mut own, blocks, blocks) };
                self.len += (blocks.len() * 64) as u64;
                self.update(rest);
                return pad_and_output(&mut own, data);
            }
        }
        self.update(data);
        Sha256::digest(data).into()
    }

    pub(crate) fn finish(mut self) -> [u8; 32] {
        pad_tail(&mut self.state, &self.buf[..self.buf_len], self.len)
    }
}

/// Processes the last partial block of a message of `len` bytes (`m`'s whole
/// blocks already in `state`) with SHA-256's padding, and returns the digest.
fn pad_and_output(state: &mut [u32; 8], m: &[u8]) -> [u8; 32] {
    pad_tail(state, &m[m.len() / 64 * 64..], m.len() as u64)
}

fn pad_tail(state: &mut [u32; 8], rest: &[u8], len: u64) -> [u8; 32] {
    let mut pad = [0u8; 128];
    pad[..rest.len()].copy_from_slice(rest);
    pad[rest.len()] = 0x80;
    let n = if rest.len() < 56 { 64 } else { 128 };
    pad[n - 8..n].copy_from_slice(&(len * 8).to_be_bytes());
    let (blocks, _) = pad[..n].as_chunks::<64>();
    sha2::block_api::compress256(state, blocks);
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state.iter()) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod shani {
    use std::arch::x86_64::*;

    use super::{H0, pad_and_output};

    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    pub(crate) fn available() -> bool {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("ssse3")
    }

    /// The state as the SHA instructions want it: (ABEF, CDGH).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn load_state(s: &[u32; 8]) -> (__m128i, __m128i) {
        // SAFETY: unaligned loads of 16 bytes from an 8-word array.
        let (dcba, hgfe) = unsafe {
            (
                _mm_loadu_si128(s.as_ptr().cast()),
                _mm_loadu_si128(s.as_ptr().add(4).cast()),
            )
        };
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
        (
            _mm_alignr_epi8(cdab, efgh, 8),
            _mm_blend_epi16(efgh, cdab, 0xF0),
        )
    }

    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    unsafe fn store_state(abef: __m128i, cdgh: __m128i, s: &mut [u32; 8]) {
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
        let hgfe = _mm_alignr_epi8(dchg, feba, 8);
        // SAFETY: unaligned stores of 16 bytes into an 8-word array.
        unsafe {
            _mm_storeu_si128(s.as_mut_ptr().cast(), dcba);
            _mm_storeu_si128(s.as_mut_ptr().add(4).cast(), hgfe);
        }
    }

    /// Message words 4g..4g+4 from the previous four groups.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    #[inline]
    fn schedule(w0: __m128i, w1: __m128i, w2: __m128i, w3: __m128i) -> __m128i {
        let t = _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8(w3, w2, 4));
        _mm_sha256msg2_epu32(t, w3)
    }

    /// Four rounds: returns the new (ABEF, CDGH).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    #[inline]
    fn rounds4(abef: __m128i, cdgh: __m128i, w: __m128i, g: usize) -> (__m128i, __m128i) {
        let k = &K[4 * g..4 * g + 4];
        // SAFETY: an unaligned 16-byte load of four words of K.
        let k = unsafe { _mm_loadu_si128(k.as_ptr().cast()) };
        let wk = _mm_add_epi32(w, k);
        let cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
        let abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E));
        (abef, cdgh)
    }

    /// Compresses one block into each of two states, the two interleaved.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(crate) unsafe fn compress_x2(
        sa: &mut [u32; 8],
        sb: &mut [u32; 8],
        a: &[[u8; 64]],
        b: &[[u8; 64]],
    ) {
        let bswap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
        // SAFETY: SHA extensions are enabled for this function.
        let ((mut a0, mut a1), (mut b0, mut b1)) = unsafe { (load_state(sa), load_state(sb)) };
        for (ba, bb) in a.iter().zip(b) {
            let (sa0, sa1, sb0, sb1) = (a0, a1, b0, b1);
            // SAFETY: 16-byte loads inside 64-byte blocks.
            let load = |blk: &[u8; 64], i: usize| unsafe {
                _mm_shuffle_epi8(_mm_loadu_si128(blk.as_ptr().add(16 * i).cast()), bswap)
            };
            let (mut wa0, mut wa1, mut wa2, mut wa3) =
                (load(ba, 0), load(ba, 1), load(ba, 2), load(ba, 3));
            let (mut wb0, mut wb1, mut wb2, mut wb3) =
                (load(bb, 0), load(bb, 1), load(bb, 2), load(bb, 3));
            // Four rounds of both messages for group g, whose words are in wa/wb.
            macro_rules! rounds {
                ($g:expr, $wa:expr, $wb:expr) => {
                    (a0, a1) = rounds4(a0, a1, $wa, $g);
                    (b0, b1) = rounds4(b0, b1, $wb, $g);
                };
            }
            // Group g's words replace group g-4's: w0 w1 w2 w3 -> new w0.
            macro_rules! next {
                ($w0:ident, $w1:ident, $w2:ident, $w3:ident, $v0:ident, $v1:ident, $v2:ident, $v3:ident) => {
                    $w0 = schedule($w0, $w1, $w2, $w3);
                    $v0 = schedule($v0, $v1, $v2, $v3);
                };
            }
            rounds!(0, wa0, wb0);
            rounds!(1, wa1, wb1);
            rounds!(2, wa2, wb2);
            rounds!(3, wa3, wb3);
            for q in 1..4 {
                next!(wa0, wa1, wa2, wa3, wb0, wb1, wb2, wb3);
                rounds!(4 * q, wa0, wb0);
                next!(wa1, wa2, wa3, wa0, wb1, wb2, wb3, wb0);
                rounds!(4 * q + 1, wa1, wb1);
                next!(wa2, wa3, wa0, wa1, wb2, wb3, wb0, wb1);
                rounds!(4 * q + 2, wa2, wb2);
                next!(wa3, wa0, wa1, wa2, wb3, wb0, wb1, wb2);
                rounds!(4 * q + 3, wa3, wb3);
            }
            a0 = _mm_add_epi32(a0, sa0);
            a1 = _mm_add_epi32(a1, sa1);
            b0 = _mm_add_epi32(b0, sb0);
            b1 = _mm_add_epi32(b1, sb1);
        }
        // SAFETY: as above.
        unsafe {
            store_state(a0, a1, sa);
            store_state(b0, b1, sb);
        }
    }

    /// # Safety
    /// The CPU must have the SHA, SSSE3 and SSE4.1 extensions (see `available`).
    pub(crate) unsafe fn digest_pair(a: &[u8], b: &[u8]) -> ([u8; 32], [u8; 32]) {
        let ((ba, _), (bb, _)) = (a.as_chunks::<64>(), b.as_chunks::<64>());
        let n = ba.len().min(bb.len());
        let (mut sa, mut sb) = (H0, H0);
        // SAFETY: the caller checked the CPU.
        unsafe { compress_x2(&mut sa, &mut sb, &ba[..n], &bb[..n]) };
        sha2::block_api::compress256(&mut sa, &ba[n..]);
        sha2::block_api::compress256(&mut sb, &bb[n..]);
        (pad_and_output(&mut sa, a), pad_and_output(&mut sb, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(m: &[u8]) -> [u8; 32] {
        Sha256::digest(m).into()
    }

    #[test]
    fn matches_sha2_for_every_tail_length() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for la in [
            0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 1000, 4096, 5000,
        ] {
            for lb in [0, 3, 56, 64, 200, 4096, 4999] {
                let (a, b) = (&data[..la], &data[5000 - lb..]);
                assert_eq!(digest_pair(a, b), (sha(a), sha(b)), "lengths {la} {lb}");
            }
        }
    }

    #[test]
    fn stream_matches_sha2() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        // Pieces of awkward sizes, some zero runs, some pieces digested on their own.
        let mut s = Sha256Stream::new();
        let mut whole = Sha256::new();
        let mut pos = 0;
        for (i, n) in [0usize, 1, 63, 64, 65536, 100, 4096, 28, 131072, 7, 1000]
            .iter()
            .enumerate()
        {
            let piece = &data[pos..pos + n];
            pos += n;
            if i % 3 == 2 {
                s.update(piece);
            } else {
                assert_eq!(s.update_and_digest(piece), sha(piece));
            }
            whole.update(piece);
            if i == 4 {
                s.update_zeros(70_000);
                whole.update(vec![0u8; 70_000]);
            }
        }
        assert_eq!(s.finish(), <[u8; 32]>::from(whole.finalize()));
        assert_eq!(Sha256Stream::new().finish(), sha(b""));
    }

    #[test]
    fn matches_sha2_on_a_megabyte() {
        let a: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let b = vec![0u8; 1 << 20];
        assert_eq!(digest_pair(&a, &b), (sha(&a), sha(&b)));
        assert_eq!(digest_pair(&b, &a), (sha(&b), sha(&a)));
    }
}
