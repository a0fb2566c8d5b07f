//! Private keys at rest: sealed with a key-encryption key (KEK) that lives outside the store.
//!
//! The store holds private keys (each tenant CA's PKCS#8 key). Kept as plain DER, anyone with
//! a database dump, a backup, a copied SQLite file or read access to PostgreSQL could sign agent
//! certificates. Sealed with a [`KeyEncryptionKey`], those rows are unreadable without the KEK,
//! and the KEK lives elsewhere: a file named by `store_encryption_key_file`, usually mounted
//! from a Kubernetes secret. A dump alone, or the KEK alone, is not enough.
//!
//! This does not protect against a compromised running replica: it holds the KEK to use the
//! keys.
//!
//! # Format (version 1)
//!
//! ```text
//! "PSGKEK1\0" (8 bytes) | nonce (12 random bytes) | AES-256-GCM(plaintext) + tag (16 bytes)
//! ```
//!
//! * The magic prefix tells a sealed value from a plaintext PKCS#8 DER, which always starts
//!   with `0x30` (a DER SEQUENCE), so stores written before encryption was switched on can be
//!   recognised with [`is_sealed`] and sealed in place.
//! * The associated data is the magic prefix followed by a caller-chosen context naming the
//!   row, such as `b"tenant_cas.key_der:acme"`: a sealed value opens only where it was sealed,
//!   so copying one tenant's sealed key into another tenant's row does not work.
//! * The nonce is random per seal. NIST bounds one key to 2^32 seals with random 96-bit
//!   nonces; the store seals a handful of keys, and each seal needs no state to be kept.
//! * A wrong key, a wrong context, truncation or any altered byte fails the GCM tag check and
//!   is reported as [`KeyEncryptionError::Decrypt`], never as garbage plaintext.
//!
//! # The key file
//!
//! Either exactly 32 raw bytes, or the standard (padded) base64 text of 32 bytes with any
//! surrounding whitespace, which is what [`KeyEncryptionKey::to_text`] writes and what
//! `openssl rand -base64 32` prints. Like private key files, it is refused when group or others
//! may read it.

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey},
    digest::{self, SHA256},
    rand::{SecureRandom, SystemRandom},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use passage_credentials::{Secret, secret_file};
use zeroize::{Zeroize, Zeroizing};

/// Prefix of every sealed value; also the start of its associated data.
const MAGIC: &[u8; 8] = b"PSGKEK1\0";
/// AES-256 key length.
const KEY_LEN: usize = 32;
/// AES-GCM nonce length.
const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// Length of the padded base64 text of a key.
const KEY_TEXT_LEN: usize = 44;
/// Domain separation for [`KeyEncryptionKey::fingerprint`].
const FINGERPRINT_LABEL: &[u8] = b"passage.store.key-encryption-key.fingerprint.v1\0";

/// Why a key-encryption key could not be loaded or made, or a value not sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyEncryptionError {
    /// The key file could not be read, or group or others may read it.
    #[error("store_encryption_key_file {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The key file holds neither 32 raw bytes nor the base64 text of 32 bytes.
    #[error(
        "store_encryption_key_file {path}: not a key-encryption key (want 32 random bytes, raw or \
         as base64 text); make one with `passage store key create --out FILE`"
    )]
    BadKey {
        /// The key file.
        path: PathBuf,
    },
    /// The system's random source failed.
    #[error("no random source for the store's key encryption")]
    Random,
    /// The value does not open: wrong key, wrong context, not a sealed value, or altered.
    #[error(
        "a private key in the store does not open with this key-encryption key; is \
         store_encryption_key_file the key the store was encrypted with?"
    )]
    Decrypt,
    /// Sealing failed.
    #[error("encrypting a private key for the store failed")]
    Encrypt,
}

/// A 256-bit key-encryption key (AES-256-GCM). Prints as `[redacted]`; wiped from memory on
/// drop.
#[derive(Clone)]
pub struct KeyEncryptionKey {
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyEncryptionKey([redacted])")
    }
}

impl KeyEncryptionKey {
    /// Reads the key from `path`.
    ///
    /// Refused, like private key files, when group or others may read it. Accepts exactly 32
    /// raw bytes, or the standard base64 text of 32 bytes with surrounding whitespace (such as
    /// a trailing newline) ignored: what [`KeyEncryptionKey::to_text`] writes and what a
    /// Kubernetes secret usually holds. Thirty-two bytes that are all printable text are read
    /// as base64, and so refused: a 32-character password is not a key.
    pub fn from_file(path: &Path) -> Result<Self, KeyEncryptionError> {
        let contents = secret_file::read(path).map_err(|source| KeyEncryptionError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(contents.expose()).ok_or_else(|| KeyEncryptionError::BadKey {
            path: path.to_owned(),
        })
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyEncryptionError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        let bytes: &mut [u8; KEY_LEN] = &mut key;
        SystemRandom::new()
            .fill(bytes)
            .map_err(|_| KeyEncryptionError::Random)?;
        Ok(Self { key })
    }

    /// The key as standard base64 text plus a newline, for writing a new key file with
    /// [`secret_file::write_new`].
    pub fn to_text(&self) -> Secret {
        // Sized up front so that appending the newline never reallocates (and so never leaves
        // a copy of the key text behind in freed memory).
        let mut text = vec![0u8; KEY_TEXT_LEN + 1];
        let written = STANDARD
            .encode_slice(self.bytes(), &mut text)
            .expect("45 bytes hold the base64 text of 32 bytes");
        text.truncate(written);
        text.push(b'\n');
        Secret::new(text)
    }

    /// A short identifier of the key that is safe to log: the first 8 hex digits of SHA-256 over
    /// a fixed label and the key. It tells keys apart; it reveals nothing usable about the key.
    pub fn fingerprint(&self) -> String {
        let mut context = digest::Context::new(&SHA256);
        context.update(FINGERPRINT_LABEL);
        context.update(self.bytes());
        let hash = context.finish();
        hash.as_ref()[..4]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// Encrypts `plaintext`, binding it to `context` (associated data naming where the value is
    /// kept, such as `b"tenant_cas.key_der:acme"`) so that a sealed value cannot be moved to
    /// another row.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>, KeyEncryptionError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyEncryptionError::Random)?;
        let aead = self.aead_key().ok_or(KeyEncryptionError::Encrypt)?;

        // Exact capacity: appending the tag never reallocates, so no stray plaintext copy.
        let header_len = MAGIC.len() + NONCE_LEN;
        let mut out = Vec::with_capacity(header_len + plaintext.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = aead.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(context)),
            &mut out[header_len..],
        );
        match tag {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(out)
            }
            Err(_) => {
                // The buffer may still hold (some of) the plaintext.
                out.zeroize();
                Err(KeyEncryptionError::Encrypt)
            }
        }
    }

    /// Decrypts what [`KeyEncryptionKey::seal`] made with the same `context`.
    ///
    /// A wrong key, a wrong context, a value that is not sealed, truncation or any altered byte
    /// is [`KeyEncryptionError::Decrypt`], never a panic.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Secret, KeyEncryptionError> {
        let body = sealed
            .strip_prefix(MAGIC.as_slice())
            .ok_or(KeyEncryptionError::Decrypt)?;
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(KeyEncryptionError::Decrypt);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyEncryptionError::Decrypt)?;
        let aead = self.aead_key().ok_or(KeyEncryptionError::Decrypt)?;

        let mut buf = ciphertext.to_vec();
        let opened = aead
            .open_in_place(nonce, Aad::from(associated_data(context)), &mut buf)
            .map(|plaintext| plaintext.len());
        match opened {
            Ok(len) => {
                buf.truncate(len);
                Ok(Secret::new(buf))
            }
            Err(_) => {
                // On failure the buffer's contents are unspecified: wipe them.
                buf.zeroize();
                Err(KeyEncryptionError::Decrypt)
            }
        }
    }

    /// Builds a key from a key file's contents; `None` when they are not a key.
    fn parse(contents: &[u8]) -> Option<Self> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if contents.len() == KEY_LEN && !looks_like_text(contents) {
            key.copy_from_slice(contents);
            return Some(Self { key });
        }
        // Room for more than a key, so that longer text decodes and is then refused by length.
        let mut decoded = Zeroizing::new([0u8; 48]);
        let buffer: &mut [u8; 48] = &mut decoded;
        match STANDARD.decode_slice(contents.trim_ascii(), buffer) {
            Ok(KEY_LEN) => {
                key.copy_from_slice(&decoded[..KEY_LEN]);
                Some(Self { key })
            }
            _ => None,
        }
    }

    fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    fn aead_key(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, self.bytes())
            .ok()
            .map(LessSafeKey::new)
    }
}

/// Whether `stored` is a sealed value (it starts with the format's magic prefix) rather than a
/// plaintext PKCS#8 DER (which starts with `0x30`). Use it to read stores written before
/// encryption was switched on, and to seal their keys.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

/// The associated data: the magic prefix, then the caller's context.
fn associated_data(context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(MAGIC.len() + context.len());
    aad.extend_from_slice(MAGIC);
    aad.extend_from_slice(context);
    aad
}

/// Whether `bytes` are all printable ASCII or whitespace: text, not 32 random bytes (which are
/// all printable with a probability under 2^-43).
fn looks_like_text(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|byte| byte.is_ascii_graphic() || byte.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONTEXT: &[u8] = b"tenant_cas.key_der:acme";
    /// The start of a PKCS#8 DER private key.
    const DER: &[u8] = &[0x30, 0x82, 0x04, 0xbe, 0x02, 0x01, 0x00, 0x30, 0x0d, 0x06];

    fn key() -> KeyEncryptionKey {
        KeyEncryptionKey::generate().unwrap()
    }

    /// Writes `contents` to a new file in `dir` with `mode` (on Unix).
    fn key_file(dir: &tempfile::TempDir, contents: &[u8], mode: u32) -> PathBuf {
        let path = dir.path().join("store-encryption.key");
        std::fs::write(&path, contents).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = mode;
        path
    }

    fn text(key: &KeyEncryptionKey) -> String {
        String::from_utf8(key.to_text().expose().to_vec()).unwrap()
    }

    #[test]
    fn sealed_values_open_with_the_same_key_and_context() {
        let kek = key();
        let sealed = kek.seal(DER, CONTEXT).unwrap();
        assert_eq!(sealed.len(), MAGIC.len() + NONCE_LEN + DER.len() + TAG_LEN);
        assert!(!sealed.windows(DER.len()).any(|w| w == DER));
        assert_eq!(kek.open(&sealed, CONTEXT).unwrap().expose(), DER);

        // Fresh nonce each time.
        assert_ne!(sealed, kek.seal(DER, CONTEXT).unwrap());

        // Empty plaintext and empty context work too.
        let empty = kek.seal(b"", b"").unwrap();
        assert!(kek.open(&empty, b"").unwrap().expose().is_empty());
    }

    #[test]
    fn wrong_context_is_refused() {
        let kek = key();
        let sealed = kek.seal(DER, CONTEXT).unwrap();
        let contexts: [&[u8]; 3] = [b"tenant_cas.key_der:other", b"", b"tenant_cas.key_der:acm"];
        for context in contexts {
            assert!(
                matches!(kek.open(&sealed, context), Err(KeyEncryptionError::Decrypt)),
                "{context:?}"
            );
        }
    }

    #[test]
    fn wrong_key_is_refused() {
        let sealed = key().seal(DER, CONTEXT).unwrap();
        assert!(matches!(
            key().open(&sealed, CONTEXT),
            Err(KeyEncryptionError::Decrypt)
        ));
    }

    #[test]
    fn truncated_values_are_refused() {
        let kek = key();
        let sealed = kek.seal(DER, CONTEXT).unwrap();
        for len in 0..sealed.len() {
            assert!(
                matches!(
                    kek.open(&sealed[..len], CONTEXT),
                    Err(KeyEncryptionError::Decrypt)
                ),
                "{len}"
            );
        }
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let kek = key();
        let sealed = kek.seal(DER, CONTEXT).unwrap();
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 0x01;
            assert!(
                matches!(
                    kek.open(&altered, CONTEXT),
                    Err(KeyEncryptionError::Decrypt)
                ),
                "byte {i}"
            );
        }
    }

    #[test]
    fn plaintext_der_is_not_sealed() {
        let sealed = key().seal(DER, CONTEXT).unwrap();
        assert!(is_sealed(&sealed));
        assert!(!is_sealed(DER));
        assert!(!is_sealed(b""));
        assert!(!is_sealed(&MAGIC[..7]));
        assert!(matches!(
            key().open(DER, CONTEXT),
            Err(KeyEncryptionError::Decrypt)
        ));
    }

    #[test]
    fn key_file_with_base64_text_is_read() {
        let kek = key();
        let written = text(&kek);
        assert_eq!(written.len(), KEY_TEXT_LEN + 1);
        assert!(written.ends_with('\n'));

        let dir = tempfile::tempdir().unwrap();
        let path = key_file(&dir, written.as_bytes(), 0o600);
        let read = KeyEncryptionKey::from_file(&path).unwrap();
        assert_eq!(*read.key, *kek.key);
        assert_eq!(read.fingerprint(), kek.fingerprint());

        // Surrounding whitespace (CRLF, indentation) is ignored.
        std::fs::remove_file(&path).unwrap();
        let padded = format!("  {}\r\n\n", written.trim());
        let path = key_file(&dir, padded.as_bytes(), 0o400);
        assert_eq!(*KeyEncryptionKey::from_file(&path).unwrap().key, *kek.key);
    }

    #[test]
    fn key_file_written_by_write_new_is_read() {
        let kek = key();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("store.key");
        secret_file::write_new(&path, kek.to_text().expose()).unwrap();
        let read = KeyEncryptionKey::from_file(&path).unwrap();
        let sealed = kek.seal(DER, CONTEXT).unwrap();
        assert_eq!(read.open(&sealed, CONTEXT).unwrap().expose(), DER);
    }

    #[test]
    fn key_file_with_32_raw_bytes_is_read() {
        let raw: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0x80).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(&dir, &raw, 0o600);
        let read = KeyEncryptionKey::from_file(&path).unwrap();
        assert_eq!(read.key.as_slice(), raw.as_slice());
    }

    #[test]
    fn key_files_that_are_not_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let too_long = STANDARD.encode([7u8; 33]);
        let too_short = STANDARD.encode([7u8; 31]);
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode([7u8; 32]);
        let bad: [&[u8]; 8] = [
            &[0x81u8; 31],
            &[0x81u8; 33],
            b"",
            b"\n",
            b"a 32-character password, no key!",
            too_long.as_bytes(),
            too_short.as_bytes(),
            unpadded.as_bytes(),
        ];
        for contents in bad {
            let path = key_file(&dir, contents, 0o600);
            let err = KeyEncryptionKey::from_file(&path).unwrap_err();
            assert!(
                matches!(err, KeyEncryptionError::BadKey { .. }),
                "{contents:?}: {err}"
            );
            assert!(
                err.to_string()
                    .contains("passage store key create --out FILE")
            );
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn key_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let written = text(&key());
        for mode in [0o644, 0o640, 0o604] {
            let path = key_file(&dir, written.as_bytes(), mode);
            let err = KeyEncryptionKey::from_file(&path).unwrap_err();
            assert!(
                matches!(&err, KeyEncryptionError::Read { source, .. }
                    if source.kind() == io::ErrorKind::PermissionDenied),
                "{mode:o}: {err}"
            );
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn missing_key_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = KeyEncryptionKey::from_file(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(err, KeyEncryptionError::Read { .. }), "{err}");
    }

    #[test]
    fn debug_is_redacted() {
        let kek = key();
        let printed = format!("{kek:?}");
        assert!(printed.contains("[redacted]"), "{printed}");
        assert!(!printed.contains(text(&kek).trim()), "{printed}");
    }

    #[test]
    fn fingerprint_is_short_stable_and_tells_keys_apart() {
        let kek = key();
        let fingerprint = kek.fingerprint();
        assert_eq!(fingerprint.len(), 8);
        assert!(fingerprint.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(fingerprint, kek.clone().fingerprint());
        assert_ne!(fingerprint, key().fingerprint());
        assert!(!text(&kek).contains(&fingerprint));
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
            context in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let kek = key();
            prop_assert!(matches!(kek.open(&bytes, &context), Err(KeyEncryptionError::Decrypt)));
            let mut prefixed = MAGIC.to_vec();
            prefixed.extend_from_slice(&bytes);
            prop_assert!(matches!(kek.open(&prefixed, &context), Err(KeyEncryptionError::Decrypt)));
        }

        #[test]
        fn every_plaintext_and_context_round_trips(
            plaintext in proptest::collection::vec(any::<u8>(), 0..256),
            context in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let kek = key();
            let sealed = kek.seal(&plaintext, &context).unwrap();
            prop_assert!(is_sealed(&sealed));
            let opened = kek.open(&sealed, &context).unwrap();
            prop_assert_eq!(opened.expose(), plaintext.as_slice());
        }
    }
}
