//! AES-256-GCM (NIST SP 800-38D) over a file in pieces, in memory that does not grow with it.
//!
//! The `aes-gcm` crate seals and opens whole buffers only, so GCM is composed here from the
//! RustCrypto primitives that crate is built on (`aes`, `ctr`'s 32-bit big-endian counter,
//! `ghash`), as SP 800-38D §7 defines it, with no associated data:
//!
//! - H = E_K(0¹²⁸); J0 = IV ‖ 0³¹ ‖ 1 for a 12-byte IV, else GHASH_H(IV ‖ 0^(s+64) ‖ [len(IV)]₆₄);
//! - C = P ⊕ the keystream from inc32(J0) (the counter wraps in its low 32 bits);
//! - tag = GHASH_H(C ‖ 0^v ‖ [0]₆₄ ‖ [len(C)]₆₄) ⊕ E_K(J0), compared in constant time.
//!
//! The unit tests compare it with `aes-gcm` for many lengths, piece lengths and both IV
//! lengths; tests/interop compares it with Python's `cryptography` (OpenSSL).
//!
//! A file travels in pieces of one length (the last may be shorter) at increasing offsets
//! ([`Pieces`]). Decryption takes two passes over the same pieces: [`MediaVerifier`] checks the
//! tag of the whole file, and only a verified file yields a [`MediaOpener`], which decrypts a
//! piece only if it is the piece verified at that offset (its SHA-256 was kept). So no plaintext
//! is released before the whole file authenticated, whatever the caller sends the second time.

use std::num::NonZeroUsize;

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit, KeyIvInit, StreamCipher};
use aes::Aes256;
use ctr::Ctr32BE;
use ghash::universal_hash::UniversalHash;
use ghash::GHash;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::link::{MediaKey, IV_LEN};
use crate::error::ErrorCause;

/// The GCM tag, appended to the encrypted file.
pub const TAG_LEN: usize = 16;
/// The most GCM encrypts under one key and IV: 2³² − 2 blocks (SP 800-38D §5.2.1.1).
pub const MAX_PLAINTEXT_LEN: u64 = (1 << 36) - 32;
const BLOCK_LEN: usize = 16;
/// Bytes of a piece's SHA-256 kept to recognise the piece in the second pass.
const PIECE_DIGEST_LEN: usize = 16;

/// Why a piece or a file was refused. Messages carry lengths and offsets only. Exhaustive, like
/// every error omemod maps variant by variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The file is shorter than its tag: it was cut off.
    #[error("the file has {len} bytes, fewer than its {TAG_LEN}-byte tag: it was cut off")]
    Truncated {
        /// The file's length.
        len: u64,
    },
    /// More plaintext than GCM can encrypt under one key and IV.
    #[error("{len} bytes are more than AES-GCM encrypts under one key ({MAX_PLAINTEXT_LEN})")]
    TooLong {
        /// The plaintext's length.
        len: u64,
    },
    /// A piece at another offset than the next one.
    #[error("a piece at offset {got}, but the next one is at {expected}")]
    Offset {
        /// The next piece's offset.
        expected: u64,
        /// The offset given.
        got: u64,
    },
    /// A piece of another length than the one at its offset.
    #[error("a piece of {got} bytes, but the one at this offset has {expected}")]
    PieceLength {
        /// The length of the piece at that offset.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The file was finished (or verified) before all its pieces arrived.
    #[error("{received} of {len} bytes arrived; the file is not complete")]
    Incomplete {
        /// Bytes that arrived.
        received: u64,
        /// The file's length.
        len: u64,
    },
    /// The tag does not match: a wrong key, or the file was cut off or altered.
    #[error("the file does not authenticate: wrong key, or the file was cut off or altered")]
    TagMismatch,
    /// In the opening pass, a piece differs from the piece verified at its offset.
    #[error("the piece at offset {offset} differs from the one verified")]
    Changed {
        /// The piece's offset.
        offset: u64,
    },
}

impl MediaError {
    /// Whom the error is due to: a short or unauthentic file is its sender's; the rest is the
    /// caller's.
    pub fn cause(&self) -> ErrorCause {
        match self {
            MediaError::Truncated { .. } | MediaError::TagMismatch => ErrorCause::PeerMisbehaved,
            MediaError::TooLong { .. }
            | MediaError::Offset { .. }
            | MediaError::PieceLength { .. }
            | MediaError::Incomplete { .. }
            | MediaError::Changed { .. } => ErrorCause::Request,
        }
    }
}

/// How a file of `len` bytes is cut: pieces of `piece_len` bytes (the last one shorter) at
/// increasing offsets, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pieces {
    len: u64,
    piece_len: NonZeroUsize,
    next: u64,
}

impl Pieces {
    /// The pieces of a file of `len` bytes, none taken yet.
    pub fn new(len: u64, piece_len: NonZeroUsize) -> Pieces {
        Pieces {
            len,
            piece_len,
            next: 0,
        }
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next piece's offset: the bytes taken so far.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// Whether every piece was taken.
    pub fn is_complete(&self) -> bool {
        self.next == self.len
    }

    /// Checks that a piece of `got` bytes at `offset` is the next one.
    fn check(&self, offset: u64, got: usize) -> Result<(), MediaError> {
        if offset != self.next {
            return Err(MediaError::Offset {
                expected: self.next,
                got: offset,
            });
        }
        let left = self.len - self.next;
        let expected = usize::try_from(left)
            .map_or(self.piece_len.get(), |left| left.min(self.piece_len.get()));
        if got != expected || got == 0 {
            return Err(MediaError::PieceLength { expected, got });
        }
        Ok(())
    }

    /// Takes the piece just checked.
    fn advance(&mut self, len: usize) {
        self.next += len as u64;
    }

    /// The number of the piece at `offset`.
    fn index(&self, offset: u64) -> usize {
        usize::try_from(offset / self.piece_len.get() as u64).unwrap_or(usize::MAX)
    }
}

/// GHASH over the ciphertext as it goes by, whatever its pieces' lengths.
struct Mac {
    ghash: GHash,
    /// E_K(J0), which masks the tag.
    tag_mask: Zeroizing<[u8; BLOCK_LEN]>,
    /// Ciphertext that does not fill a block yet.
    pending: [u8; BLOCK_LEN],
    pending_len: usize,
    /// Ciphertext bytes hashed.
    len: u64,
}

impl Mac {
    fn absorb(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.pending_len > 0 {
            let take = data.len().min(BLOCK_LEN - self.pending_len);
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < BLOCK_LEN {
                return;
            }
            self.ghash.update_padded(&self.pending);
            self.pending_len = 0;
        }
        let whole = data.len() - data.len() % BLOCK_LEN;
        self.ghash.update_padded(&data[..whole]);
        let tail = &data[whole..];
        self.pending[..tail.len()].copy_from_slice(tail);
        self.pending_len = tail.len();
    }

    fn tag(mut self) -> [u8; TAG_LEN] {
        self.ghash.update_padded(&self.pending[..self.pending_len]);
        let mut lengths = [0u8; BLOCK_LEN];
        lengths[8..].copy_from_slice(&(self.len * 8).to_be_bytes());
        self.ghash.update_padded(&lengths);
        let mut tag: [u8; TAG_LEN] = self.ghash.finalize().into();
        for (t, m) in tag.iter_mut().zip(self.tag_mask.iter()) {
            *t ^= m;
        }
        tag
    }
}

/// The keystream from inc32(J0).
struct Keystream(Ctr32BE<Aes256>);

impl Keystream {
    fn apply(&mut self, data: &mut [u8]) -> Result<(), MediaError> {
        // Cannot run out: every caller's length is bounded by MAX_PLAINTEXT_LEN, within the
        // 2³² − 1 blocks of the counter.
        self.0
            .try_apply_keystream(data)
            .map_err(|_| MediaError::TooLong {
                len: MAX_PLAINTEXT_LEN + 1,
            })
    }
}

/// The keystream and the MAC of a key, per SP 800-38D §7.1.
fn gcm(key: &MediaKey) -> (Keystream, Mac) {
    let aes_key = GenericArray::from_slice(key.key());
    let aes = Aes256::new(aes_key);
    let mut h = Zeroizing::new([0u8; BLOCK_LEN]);
    aes.encrypt_block(GenericArray::from_mut_slice(h.as_mut()));
    let ghash = GHash::new(GenericArray::from_slice(h.as_ref()));
    let iv = key.iv();
    let mut j0 = Zeroizing::new([0u8; BLOCK_LEN]);
    if iv.len() == IV_LEN {
        j0[..IV_LEN].copy_from_slice(iv);
        j0[BLOCK_LEN - 1] = 1;
    } else {
        let mut g = ghash.clone();
        g.update_padded(iv);
        let mut lengths = [0u8; BLOCK_LEN];
        lengths[8..].copy_from_slice(&(iv.len() as u64 * 8).to_be_bytes());
        g.update_padded(&lengths);
        j0.copy_from_slice(&g.finalize());
    }
    let mut tag_mask = Zeroizing::new(*j0);
    aes.encrypt_block(GenericArray::from_mut_slice(tag_mask.as_mut()));
    // inc32: the low 32 bits count, wrapping; the counter flavour wraps the same way.
    let low = u32::from_be_bytes([j0[12], j0[13], j0[14], j0[15]]).wrapping_add(1);
    j0[12..].copy_from_slice(&low.to_be_bytes());
    let ctr = Ctr32BE::<Aes256>::new(aes_key, GenericArray::from_slice(j0.as_ref()));
    let mac = Mac {
        ghash,
        tag_mask,
        pending: [0; BLOCK_LEN],
        pending_len: 0,
        len: 0,
    };
    (Keystream(ctr), mac)
}

fn digest(piece: &[u8]) -> [u8; PIECE_DIGEST_LEN] {
    let full = Sha256::digest(piece);
    let mut d = [0u8; PIECE_DIGEST_LEN];
    d.copy_from_slice(&full[..PIECE_DIGEST_LEN]);
    d
}

/// Encrypts a file of a known length, piece by piece; [`MediaSealer::finish`] gives the tag to
/// append.
pub struct MediaSealer {
    keystream: Keystream,
    mac: Mac,
    pieces: Pieces,
}

impl std::fmt::Debug for MediaSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSealer")
            .field("pieces", &self.pieces)
            .finish_non_exhaustive()
    }
}

impl MediaSealer {
    /// Starts encrypting `plaintext_len` bytes under `key`, in pieces of `piece_len` bytes.
    pub fn new(
        key: &MediaKey,
        plaintext_len: u64,
        piece_len: NonZeroUsize,
    ) -> Result<MediaSealer, MediaError> {
        if plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(MediaError::TooLong { len: plaintext_len });
        }
        let (keystream, mac) = gcm(key);
        Ok(MediaSealer {
            keystream,
            mac,
            pieces: Pieces::new(plaintext_len, piece_len),
        })
    }

    /// The plaintext's pieces and how far encryption got.
    pub fn pieces(&self) -> &Pieces {
        &self.pieces
    }

    /// Encrypts the piece at `offset` in place.
    pub fn seal(&mut self, offset: u64, piece: &mut [u8]) -> Result<(), MediaError> {
        self.pieces.check(offset, piece.len())?;
        self.keystream.apply(piece)?;
        self.mac.absorb(piece);
        self.pieces.advance(piece.len());
        Ok(())
    }

    /// The tag to append after the last piece.
    pub fn finish(self) -> Result<[u8; TAG_LEN], MediaError> {
        if !self.pieces.is_complete() {
            return Err(MediaError::Incomplete {
                received: self.pieces.next_offset(),
                len: self.pieces.len(),
            });
        }
        Ok(self.mac.tag())
    }
}

/// The first pass of decryption: hashes the downloaded file (ciphertext ‖ tag) piece by piece
/// and checks the tag; releases no plaintext.
pub struct MediaVerifier {
    keystream: Keystream,
    mac: Mac,
    pieces: Pieces,
    digests: Vec<[u8; PIECE_DIGEST_LEN]>,
    tag: [u8; TAG_LEN],
}

impl std::fmt::Debug for MediaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaVerifier")
            .field("pieces", &self.pieces)
            .finish_non_exhaustive()
    }
}

impl MediaVerifier {
    /// Starts checking a downloaded file of `file_len` bytes (ciphertext and tag), in pieces of
    /// `piece_len` bytes. Keeps 16 bytes per piece until the file is opened.
    pub fn new(
        key: &MediaKey,
        file_len: u64,
        piece_len: NonZeroUsize,
    ) -> Result<MediaVerifier, MediaError> {
        let Some(ciphertext_len) = file_len.checked_sub(TAG_LEN as u64) else {
            return Err(MediaError::Truncated { len: file_len });
        };
        if ciphertext_len > MAX_PLAINTEXT_LEN {
            return Err(MediaError::TooLong {
                len: ciphertext_len,
            });
        }
        let (keystream, mac) = gcm(key);
        Ok(MediaVerifier {
            keystream,
            mac,
            pieces: Pieces::new(file_len, piece_len),
            digests: Vec::new(),
            tag: [0; TAG_LEN],
        })
    }

    /// The file's pieces and how far the check got.
    pub fn pieces(&self) -> &Pieces {
        &self.pieces
    }

    /// The plaintext's length.
    pub fn plaintext_len(&self) -> u64 {
        self.pieces.len() - TAG_LEN as u64
    }

    /// Takes the piece at `offset`.
    pub fn update(&mut self, offset: u64, piece: &[u8]) -> Result<(), MediaError> {
        self.pieces.check(offset, piece.len())?;
        let ciphertext_end = self.plaintext_len();
        let split = usize::try_from(ciphertext_end.saturating_sub(offset))
            .map_or(piece.len(), |n| n.min(piece.len()));
        let (ciphertext, tag) = piece.split_at(split);
        self.mac.absorb(ciphertext);
        let tag_start =
            usize::try_from((offset + split as u64).saturating_sub(ciphertext_end)).unwrap_or(0);
        if let Some(dst) = self.tag.get_mut(tag_start..tag_start + tag.len()) {
            dst.copy_from_slice(tag);
        }
        self.digests.push(digest(piece));
        self.pieces.advance(piece.len());
        Ok(())
    }

    /// Checks the tag once every piece arrived; the opener of a file that authenticates.
    pub fn verify(self) -> Result<MediaOpener, MediaError> {
        if !self.pieces.is_complete() {
            return Err(MediaError::Incomplete {
                received: self.pieces.next_offset(),
                len: self.pieces.len(),
            });
        }
        let expected = self.mac.tag();
        if !bool::from(expected.ct_eq(&self.tag)) {
            return Err(MediaError::TagMismatch);
        }
        Ok(MediaOpener {
            keystream: self.keystream,
            pieces: Pieces::new(self.pieces.len, self.pieces.piece_len),
            digests: self.digests,
        })
    }
}

/// The second pass of decryption, over a file whose tag verified: decrypts the same pieces
/// again, each only if it is the piece verified at its offset.
pub struct MediaOpener {
    keystream: Keystream,
    pieces: Pieces,
    digests: Vec<[u8; PIECE_DIGEST_LEN]>,
}

impl std::fmt::Debug for MediaOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaOpener")
            .field("pieces", &self.pieces)
            .finish_non_exhaustive()
    }
}

impl MediaOpener {
    /// The file's pieces and how far opening got.
    pub fn pieces(&self) -> &Pieces {
        &self.pieces
    }

    /// Decrypts the piece at `offset` in place; the plaintext is its first bytes, as many as
    /// returned (the tag's bytes at the end of the file give none).
    pub fn open(&mut self, offset: u64, piece: &mut [u8]) -> Result<usize, MediaError> {
        self.pieces.check(offset, piece.len())?;
        let verified = self.digests.get(self.pieces.index(offset));
        if verified.is_none_or(|d| *d != digest(piece)) {
            return Err(MediaError::Changed { offset });
        }
        let ciphertext_end = self.pieces.len() - TAG_LEN as u64;
        let plaintext = usize::try_from(ciphertext_end.saturating_sub(offset))
            .map_or(piece.len(), |n| n.min(piece.len()));
        self.keystream.apply(&mut piece[..plaintext])?;
        self.pieces.advance(piece.len());
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::consts::{U12, U16};
    use aes_gcm::aead::Aead;
    use aes_gcm::AesGcm;
    use proptest::prelude::*;

    fn key(iv_len: usize) -> MediaKey {
        let iv: Vec<u8> = (0..iv_len as u8)
            .map(|i| i.wrapping_mul(37) ^ 0x5a)
            .collect();
        MediaKey::from_parts(&[0x42; 32], &iv).unwrap()
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 % 251) as u8).collect()
    }

    /// The reference: `aes-gcm` on the whole buffer, tag appended.
    fn reference_seal(key: &MediaKey, plain: &[u8]) -> Vec<u8> {
        let k = GenericArray::from_slice(key.key());
        match key.iv().len() {
            12 => AesGcm::<Aes256, U12>::new(k).encrypt(GenericArray::from_slice(key.iv()), plain),
            _ => AesGcm::<Aes256, U16>::new(k).encrypt(GenericArray::from_slice(key.iv()), plain),
        }
        .unwrap()
    }

    fn piece_len(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    fn seal(key: &MediaKey, plain: &[u8], piece: usize) -> Vec<u8> {
        let mut s = MediaSealer::new(key, plain.len() as u64, piece_len(piece)).unwrap();
        let mut out = Vec::new();
        for (i, chunk) in plain.chunks(piece).enumerate() {
            let mut buf = chunk.to_vec();
            s.seal((i * piece) as u64, &mut buf).unwrap();
            out.extend_from_slice(&buf);
        }
        out.extend_from_slice(&s.finish().unwrap());
        out
    }

    fn verify(key: &MediaKey, file: &[u8], piece: usize) -> Result<MediaOpener, MediaError> {
        let mut v = MediaVerifier::new(key, file.len() as u64, piece_len(piece))?;
        for (i, chunk) in file.chunks(piece).enumerate() {
            v.update((i * piece) as u64, chunk)?;
        }
        v.verify()
    }

    fn open(key: &MediaKey, file: &[u8], piece: usize) -> Result<Vec<u8>, MediaError> {
        let mut o = verify(key, file, piece)?;
        let mut out = Vec::new();
        for (i, chunk) in file.chunks(piece).enumerate() {
            let mut buf = chunk.to_vec();
            let n = o.open((i * piece) as u64, &mut buf)?;
            out.extend_from_slice(&buf[..n]);
        }
        assert!(o.pieces().is_complete());
        Ok(out)
    }

    #[test]
    fn agrees_with_aes_gcm_for_every_length_piece_and_iv() {
        for iv_len in [12, 16] {
            let key = key(iv_len);
            for len in [0, 1, 15, 16, 17, 31, 32, 33, 100, 1000, 4099] {
                let plain = plaintext(len);
                let reference = reference_seal(&key, &plain);
                for piece in [1, 7, 16, 17, 64, 1000, 5000] {
                    assert_eq!(
                        seal(&key, &plain, piece),
                        reference,
                        "{iv_len} {len} {piece}"
                    );
                    assert_eq!(
                        open(&key, &reference, piece).as_deref(),
                        Ok(plain.as_slice()),
                        "{iv_len} {len} {piece}"
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn random_files_round_trip_through_aes_gcm(
            plain in proptest::collection::vec(any::<u8>(), 0..3000),
            piece in 1usize..600,
            legacy in any::<bool>(),
            key_bytes in any::<[u8; 32]>(),
            iv_bytes in any::<[u8; 16]>(),
        ) {
            let iv_len = if legacy { 16 } else { 12 };
            let key = MediaKey::from_parts(&key_bytes, &iv_bytes[..iv_len]).unwrap();
            let reference = reference_seal(&key, &plain);
            prop_assert_eq!(&seal(&key, &plain, piece), &reference);
            prop_assert_eq!(open(&key, &reference, piece), Ok(plain));
        }
    }

    #[test]
    fn a_wrong_key_an_altered_or_cut_file_does_not_verify() {
        let key = key(12);
        let file = seal(&key, &plaintext(1000), 64);
        let other = MediaKey::from_parts(&[0x43; 32], key.iv()).unwrap();
        assert_eq!(
            verify(&other, &file, 64).err(),
            Some(MediaError::TagMismatch)
        );
        for at in [0, 500, 999, 1000, 1015] {
            let mut bad = file.clone();
            bad[at] ^= 1;
            assert_eq!(verify(&key, &bad, 64).err(), Some(MediaError::TagMismatch));
        }
        for cut in [1, 15, 16, 17, 500] {
            let short = &file[..file.len() - cut];
            assert_eq!(verify(&key, short, 64).err(), Some(MediaError::TagMismatch));
        }
        for len in [0, 1, 15] {
            assert_eq!(
                MediaVerifier::new(&key, len, piece_len(64)).err(),
                Some(MediaError::Truncated { len })
            );
        }
        // The empty file is just its tag.
        let empty = seal(&key, &[], 64);
        assert_eq!(empty.len(), TAG_LEN);
        assert_eq!(open(&key, &empty, 64), Ok(Vec::new()));
    }

    #[test]
    fn the_opening_pass_releases_only_the_pieces_verified() {
        let key = key(12);
        let file = seal(&key, &plaintext(300), 100);
        let mut o = verify(&key, &file, 100).unwrap();
        let mut first = file[..100].to_vec();
        assert_eq!(o.open(0, &mut first), Ok(100));
        assert_eq!(first, plaintext(300)[..100]);
        let mut changed = file[100..200].to_vec();
        changed[3] ^= 0x80;
        let before = changed.clone();
        assert_eq!(
            o.open(100, &mut changed),
            Err(MediaError::Changed { offset: 100 })
        );
        assert_eq!(changed, before, "nothing decrypted");
        // Nor may a piece be skipped, repeated, or cut otherwise.
        let mut third = file[200..300].to_vec();
        assert_eq!(
            o.open(200, &mut third),
            Err(MediaError::Offset {
                expected: 100,
                got: 200
            })
        );
        let mut half = file[100..150].to_vec();
        assert_eq!(
            o.open(100, &mut half),
            Err(MediaError::PieceLength {
                expected: 100,
                got: 50
            })
        );
    }

    #[test]
    fn pieces_must_come_in_order_and_whole() {
        let key = key(12);
        let mut s = MediaSealer::new(&key, 250, piece_len(100)).unwrap();
        let mut buf = vec![0u8; 100];
        assert_eq!(
            s.seal(100, &mut buf),
            Err(MediaError::Offset {
                expected: 0,
                got: 100
            })
        );
        assert_eq!(
            s.seal(0, &mut buf[..99]),
            Err(MediaError::PieceLength {
                expected: 100,
                got: 99
            })
        );
        assert_eq!(s.seal(0, &mut buf), Ok(()));
        assert_eq!(s.seal(100, &mut buf), Ok(()));
        assert_eq!(
            s.seal(200, &mut buf),
            Err(MediaError::PieceLength {
                expected: 50,
                got: 100
            })
        );
        assert_eq!(s.pieces().next_offset(), 200);
        assert_eq!(
            s.finish().err(),
            Some(MediaError::Incomplete {
                received: 200,
                len: 250
            })
        );
        let mut empty = MediaSealer::new(&key, 0, piece_len(100)).unwrap();
        assert_eq!(
            empty.seal(0, &mut []),
            Err(MediaError::PieceLength {
                expected: 0,
                got: 0
            })
        );
        let v = MediaVerifier::new(&key, 40, piece_len(100)).unwrap();
        assert_eq!(
            v.verify().err(),
            Some(MediaError::Incomplete {
                received: 0,
                len: 40
            })
        );
    }

    /// A 16-byte IV whose J0 ends in 0xffffffea under the key [0x42; 32] (found by search): the
    /// counter wraps after 21 blocks, as inc32 does, and must not carry into the IV part.
    const WRAPPING_IV: [u8; 16] = [0, 0, 0, 0, 0, 0xa5, 0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn the_counter_wraps_in_its_low_32_bits() {
        let key = MediaKey::from_parts(&[0x42; 32], &WRAPPING_IV).unwrap();
        let aes = Aes256::new(GenericArray::from_slice(key.key()));
        let mut h = [0u8; 16];
        aes.encrypt_block(GenericArray::from_mut_slice(&mut h));
        let mut g = GHash::new(GenericArray::from_slice(&h));
        g.update_padded(&WRAPPING_IV);
        g.update_padded(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 128]);
        let j0: [u8; 16] = g.finalize().into();
        let low = u32::from_be_bytes([j0[12], j0[13], j0[14], j0[15]]);
        assert_eq!(low, 0xffff_ffea);
        // The keystream written out block by block, counting in the low 32 bits only.
        let plain = plaintext(1000);
        let mut expected = plain.clone();
        for (i, block) in expected.chunks_mut(16).enumerate() {
            let mut counter = j0;
            counter[12..].copy_from_slice(&low.wrapping_add(1 + i as u32).to_be_bytes());
            aes.encrypt_block(GenericArray::from_mut_slice(&mut counter));
            for (b, k) in block.iter_mut().zip(counter) {
                *b ^= k;
            }
        }
        let sealed = seal(&key, &plain, 100);
        assert_eq!(sealed[..1000], expected[..]);
        assert_eq!(sealed, reference_seal(&key, &plain));
        assert_eq!(open(&key, &sealed, 64), Ok(plain));
    }

    #[test]
    fn lengths_beyond_gcm_are_refused() {
        let key = key(12);
        assert!(MediaSealer::new(&key, MAX_PLAINTEXT_LEN, piece_len(1)).is_ok());
        assert_eq!(
            MediaSealer::new(&key, MAX_PLAINTEXT_LEN + 1, piece_len(1)).err(),
            Some(MediaError::TooLong {
                len: MAX_PLAINTEXT_LEN + 1
            })
        );
        assert_eq!(
            MediaVerifier::new(&key, MAX_PLAINTEXT_LEN + 17, piece_len(1)).err(),
            Some(MediaError::TooLong {
                len: MAX_PLAINTEXT_LEN + 1
            })
        );
    }
}
