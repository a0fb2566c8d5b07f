//! The sealed-password envelope: how the gateway hands a password to one agent so that
//! nothing in between (the dispatcher, its logs, a proxy) can read or reuse it — and how the
//! agent's answer comes back so that nothing in between can read or forge it.
//!
//! Two versions, both opened by every agent:
//!
//! * **version 2** ([`hybrid`]): sealed to the agent's hybrid X25519 + ML-KEM-768 key with the
//!   X-Wing combiner — post-quantum, and about 1/17 of version 1's opening cost on machines
//!   without AVX-512 (~50 µs against ~0.9–1 ms);
//! * **version 1** (below): RSA-OAEP, for agents whose certificate certifies no hybrid key yet.
//!
//! Either way the envelope yields an [answer key](answer) known only to the gateway that
//! sealed it and the agent that opens it; the agent seals its verdict under it.
//!
//! # Format (version 1)
//!
//! ```text
//! 0x01 | len(wrapped key): u16 BE | RSA-OAEP-SHA256(content key) | AES-256-GCM(payload) + tag
//! ```
//!
//! * The content key is 32 fresh random bytes per envelope; RSA-OAEP (SHA-256, MGF1-SHA-256)
//!   wraps it to the agent's public key, with the OAEP label [`OAEP_LABEL`].
//! * The payload is the protobuf `passage.v1.PasswordPayload`: username, password, tenant,
//!   `not_after`, nonce. AES-256-GCM seals it with the SHA-256 of the agent's public key as
//!   associated data, so an envelope opens only under the key it was sealed to.
//! * Because every content key seals exactly one message, the GCM nonce is fixed (zero).
//!
//! RSA-OAEP alone cannot carry the payload: RSA-2048 with SHA-256 fits 190 bytes, and a
//! username may be 256. Opening uses `aws-lc-rs` (constant-time RSA; the `rsa` crate's
//! decryption has a timing side channel, RUSTSEC-2023-0071) and costs one RSA private-key
//! operation: callers run [`AgentKey::open`] on a bounded blocking pool.
//!
//! Version 1's answer key is HKDF-SHA256 of the content key with the label
//! `passage.v1.answer-key`.

pub mod answer;
pub mod hybrid;
mod replay;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey},
    digest::{SHA256, digest},
    encoding::AsDer,
    rand::{SecureRandom, SystemRandom},
    rsa::{
        KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
        PrivateDecryptingKey, PublicEncryptingKey,
    },
};
use passage_credentials::{Password, Secret};
use passage_proto::v1::PasswordPayload;
use prost::Message;
use zeroize::Zeroize;

pub use answer::{AnswerBinding, AnswerKey};
pub use hybrid::{HybridKey, HybridPublicKey};
pub use replay::ReplayGuard;

/// Envelope format version of RSA-OAEP sealing (version 1).
pub const VERSION: u8 = 1;
/// The label version 1's answer key is derived from the content key with.
const V1_ANSWER_KEY_LABEL: &[u8] = b"passage.v1.answer-key";
/// OAEP label binding the wrapped key to this protocol.
pub const OAEP_LABEL: &[u8] = b"passage.v1.sealed-password";
/// Size of the random nonce inside each payload.
pub const NONCE_LEN: usize = 16;
const CONTENT_KEY_LEN: usize = 32;
const GCM_TAG_LEN: usize = 16;

/// Why an envelope could not be sealed or was refused when opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The public key is not an RSA SubjectPublicKeyInfo we accept.
    #[error("the agent's public key is not a usable RSA key")]
    BadPublicKey,
    /// The private key could not be generated or parsed.
    #[error("the agent's private key is not a usable RSA PKCS#8 key")]
    BadPrivateKey,
    /// The ciphertext is malformed or was not sealed to this key.
    #[error("the sealed password does not open with this agent's key")]
    DecryptFailed,
    /// The payload names another user than the request carrying it.
    #[error("the sealed password belongs to another username")]
    UsernameMismatch,
    /// The payload belongs to another tenant.
    #[error("the sealed password belongs to another tenant")]
    WrongTenant,
    /// The payload's `not_after` has passed, or lies too far in the future.
    #[error("the sealed password has expired")]
    Expired,
    /// The payload's nonce was seen before.
    #[error("the sealed password was already used")]
    Replayed,
    /// The payload is well-formed but its password is empty or malformed.
    #[error("the sealed password is malformed")]
    BadPayload,
    /// A sealed answer does not open with this answer key for this sign-in.
    #[error("the answer does not open for this sign-in")]
    BadAnswer,
}

/// What the gateway seals for one sign-in.
pub struct PayloadFields<'a> {
    /// The username the request carries.
    pub username: &'a str,
    /// The password.
    pub password: &'a Password,
    /// A password change: the new password, sealed with the old one.
    pub new_password: Option<&'a Password>,
    /// The tenant.
    pub tenant: &'a str,
    /// When the agent must stop accepting the envelope.
    pub not_after: SystemTime,
}

/// A public key that passwords can be sealed to: an agent's RSA key (version 1) or its hybrid
/// X25519 + ML-KEM-768 key (version 2).
pub struct SealingKey {
    scheme: Scheme,
    key_digest: [u8; 32],
}

enum Scheme {
    Rsa(OaepPublicEncryptingKey),
    Hybrid(HybridPublicKey),
}

/// A sealed password and what the sealer keeps to read the answer.
pub struct Sealed {
    /// The envelope, for the agent.
    pub ciphertext: Vec<u8>,
    /// The payload's nonce, which the answer is bound to.
    pub nonce: [u8; NONCE_LEN],
    /// The key the agent's answer is sealed under.
    pub answer_key: AnswerKey,
}

impl SealingKey {
    /// Parses a DER SubjectPublicKeyInfo of an RSA key of at least 2048 bits (version 1).
    pub fn from_der(spki_der: &[u8]) -> Result<Self, EnvelopeError> {
        let public =
            PublicEncryptingKey::from_der(spki_der).map_err(|_| EnvelopeError::BadPublicKey)?;
        if public.key_size_bits() < 2048 {
            return Err(EnvelopeError::BadPublicKey);
        }
        let key = OaepPublicEncryptingKey::new(public).map_err(|_| EnvelopeError::BadPublicKey)?;
        Ok(Self {
            scheme: Scheme::Rsa(key),
            key_digest: key_digest(spki_der),
        })
    }

    /// Parses a hybrid public key, `pk_M | pk_X` (version 2).
    pub fn hybrid(public: &[u8]) -> Result<Self, EnvelopeError> {
        Ok(Self {
            scheme: Scheme::Hybrid(HybridPublicKey::from_bytes(public)?),
            key_digest: key_digest(public),
        })
    }

    /// The envelope version this key seals with.
    pub fn version(&self) -> u8 {
        match self.scheme {
            Scheme::Rsa(_) => VERSION,
            Scheme::Hybrid(_) => hybrid::VERSION,
        }
    }

    /// Seals `fields` with a fresh content key and nonce.
    pub fn seal(&self, fields: &PayloadFields<'_>) -> Result<Sealed, EnvelopeError> {
        let rng = SystemRandom::new();
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce)
            .map_err(|_| EnvelopeError::BadPublicKey)?;
        let not_after = fields
            .not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut payload = PasswordPayload {
            username: fields.username.to_owned(),
            password: fields.password.expose().as_bytes().to_vec(),
            tenant: fields.tenant.to_owned(),
            not_after,
            nonce: nonce.to_vec(),
            new_password: fields
                .new_password
                .map(|p| p.expose().as_bytes().to_vec())
                .unwrap_or_default(),
        }
        .encode_to_vec();

        let (mut out, mut content_key, answer_key) = match &self.scheme {
            Scheme::Rsa(key) => {
                let mut content_key = [0u8; CONTENT_KEY_LEN];
                rng.fill(&mut content_key)
                    .map_err(|_| EnvelopeError::BadPublicKey)?;
                let wrapped_len = key.ciphertext_size();
                let mut out = Vec::with_capacity(3 + wrapped_len + payload.len() + GCM_TAG_LEN);
                out.push(VERSION);
                out.extend_from_slice(&(wrapped_len as u16).to_be_bytes());
                out.resize(3 + wrapped_len, 0);
                let wrapped = key
                    .encrypt(
                        &OAEP_SHA256_MGF1SHA256,
                        &content_key,
                        &mut out[3..],
                        Some(OAEP_LABEL),
                    )
                    .map_err(|_| EnvelopeError::BadPublicKey)?;
                debug_assert_eq!(wrapped.len(), wrapped_len);
                let answer_key = AnswerKey::derive(&content_key, V1_ANSWER_KEY_LABEL);
                (out, content_key, answer_key)
            }
            Scheme::Hybrid(key) => {
                let encapsulated = key.encapsulate()?;
                let mut out = Vec::with_capacity(
                    1 + encapsulated.ciphertext.len() + payload.len() + GCM_TAG_LEN,
                );
                out.push(hybrid::VERSION);
                out.extend_from_slice(&encapsulated.ciphertext);
                (
                    out,
                    encapsulated.content_key,
                    encapsulated.answer_key.clone(),
                )
            }
        };

        let aead = aead_key(&content_key);
        content_key.zeroize();
        let sealed = aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(self.key_digest),
            &mut payload,
        );
        if sealed.is_err() {
            payload.zeroize();
            return Err(EnvelopeError::BadPublicKey);
        }
        out.extend_from_slice(&payload);
        Ok(Sealed {
            ciphertext: out,
            nonce,
            answer_key,
        })
    }
}

/// An agent's keys: its RSA key pair (version 1, and its TLS identity), and, once it has one,
/// its hybrid key pair (version 2). The private halves open envelopes; the public halves are
/// certified and advertised.
pub struct AgentKey {
    private: OaepPrivateDecryptingKey,
    pkcs8: Secret,
    public_der: Vec<u8>,
    hybrid: Option<HybridKey>,
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKey")
            .field("bits", &self.private.key_size_bits())
            .field("hybrid", &self.hybrid.is_some())
            .field("private", &"[redacted]")
            .finish()
    }
}

/// RSA modulus sizes an agent may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaBits {
    /// 2048 bits (the default; ~0.3 ms per decryption here).
    Rsa2048,
    /// 3072 bits.
    Rsa3072,
    /// 4096 bits.
    Rsa4096,
}

impl AgentKey {
    /// Generates a new key pair.
    pub fn generate(bits: RsaBits) -> Result<Self, EnvelopeError> {
        let size = match bits {
            RsaBits::Rsa2048 => KeySize::Rsa2048,
            RsaBits::Rsa3072 => KeySize::Rsa3072,
            RsaBits::Rsa4096 => KeySize::Rsa4096,
        };
        let key = PrivateDecryptingKey::generate(size).map_err(|_| EnvelopeError::BadPrivateKey)?;
        let pkcs8 = key.as_der().map_err(|_| EnvelopeError::BadPrivateKey)?;
        Self::from_pkcs8_der(pkcs8.as_ref())
    }

    /// Loads a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, EnvelopeError> {
        let key =
            PrivateDecryptingKey::from_pkcs8(der).map_err(|_| EnvelopeError::BadPrivateKey)?;
        if key.key_size_bits() < 2048 {
            return Err(EnvelopeError::BadPrivateKey);
        }
        let public_der = key
            .public_key()
            .as_der()
            .map_err(|_| EnvelopeError::BadPrivateKey)?
            .as_ref()
            .to_vec();
        let private =
            OaepPrivateDecryptingKey::new(key).map_err(|_| EnvelopeError::BadPrivateKey)?;
        Ok(Self {
            private,
            pkcs8: Secret::new(der.to_vec()),
            public_der,
            hybrid: None,
        })
    }

    /// These keys with `hybrid` for version 2 envelopes.
    pub fn with_hybrid(mut self, hybrid: HybridKey) -> Self {
        self.hybrid = Some(hybrid);
        self
    }

    /// These keys without the hybrid key pair (version 1 only).
    pub fn without_hybrid(mut self) -> Self {
        self.hybrid = None;
        self
    }

    /// The hybrid key pair, if the agent has one.
    pub fn hybrid(&self) -> Option<&HybridKey> {
        self.hybrid.as_ref()
    }

    /// The private key as PKCS#8 DER, for storing with mode 0600.
    pub fn pkcs8_der(&self) -> &Secret {
        &self.pkcs8
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_der
    }

    /// Decrypts an envelope. CPU-heavy: call from a blocking pool.
    ///
    /// This only opens the envelope; [`Opened::check`] decides whether it may be used.
    pub fn open(&self, envelope: &[u8]) -> Result<Opened, EnvelopeError> {
        let (&version, rest) = envelope.split_first().ok_or(EnvelopeError::DecryptFailed)?;
        let (aead, answer_key, key_digest, sealed) = match version {
            VERSION => {
                let (aead, answer_key, sealed) = self.unwrap_v1(rest)?;
                (aead, answer_key, key_digest(&self.public_der), sealed)
            }
            hybrid::VERSION => {
                let hybrid = self.hybrid.as_ref().ok_or(EnvelopeError::DecryptFailed)?;
                let kem_len = hybrid::ML_KEM_CIPHERTEXT_LEN + hybrid::X25519_LEN;
                if rest.len() < kem_len + GCM_TAG_LEN {
                    return Err(EnvelopeError::DecryptFailed);
                }
                let (kem, sealed) = rest.split_at(kem_len);
                let (mut content_key, answer_key) = hybrid.decapsulate(kem)?;
                let aead = aead_key(&content_key);
                content_key.zeroize();
                (
                    aead,
                    answer_key,
                    key_digest(hybrid.public().as_bytes()),
                    sealed,
                )
            }
            _ => return Err(EnvelopeError::DecryptFailed),
        };
        let mut buf = sealed.to_vec();
        let opened = aead.open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(key_digest),
            &mut buf,
        );
        let result = match opened {
            Ok(plain) => PasswordPayload::decode(&*plain).map_err(|_| EnvelopeError::BadPayload),
            Err(_) => Err(EnvelopeError::DecryptFailed),
        };
        buf.zeroize();
        let mut payload = result?;
        let password = Password::from_utf8(std::mem::take(&mut payload.password))
            .map_err(|_| EnvelopeError::BadPayload)?;
        let new_password = match std::mem::take(&mut payload.new_password) {
            bytes if bytes.is_empty() => None,
            bytes => Some(Password::from_utf8(bytes).map_err(|_| EnvelopeError::BadPayload)?),
        };
        let nonce: [u8; NONCE_LEN] = payload
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| EnvelopeError::BadPayload)?;
        Ok(Opened {
            username: payload.username,
            password,
            new_password,
            tenant: payload.tenant,
            not_after: UNIX_EPOCH + Duration::from_secs(payload.not_after.max(0) as u64),
            nonce,
            answer_key,
        })
    }

    /// Unwraps a version 1 envelope's content key (one RSA private-key operation).
    fn unwrap_v1<'e>(
        &self,
        rest: &'e [u8],
    ) -> Result<(LessSafeKey, AnswerKey, &'e [u8]), EnvelopeError> {
        if rest.len() < 2 {
            return Err(EnvelopeError::DecryptFailed);
        }
        let wrapped_len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let rest = &rest[2..];
        if wrapped_len != self.private.key_size_bytes() || rest.len() < wrapped_len + GCM_TAG_LEN {
            return Err(EnvelopeError::DecryptFailed);
        }
        let (wrapped, sealed) = rest.split_at(wrapped_len);
        let mut key_buf = vec![0u8; self.private.min_output_size()];
        let content_key = self
            .private
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                wrapped,
                &mut key_buf,
                Some(OAEP_LABEL),
            )
            .map_err(|_| EnvelopeError::DecryptFailed);
        let result = match content_key {
            Ok(k) if k.len() == CONTENT_KEY_LEN => Ok((
                aead_key(k),
                AnswerKey::derive(k, V1_ANSWER_KEY_LABEL),
                sealed,
            )),
            _ => Err(EnvelopeError::DecryptFailed),
        };
        key_buf.zeroize();
        result
    }
}

/// An opened envelope, not yet checked.
#[derive(Debug)]
pub struct Opened {
    /// The username sealed with the password.
    pub username: String,
    /// The password.
    pub password: Password,
    /// A password change: the new password.
    pub new_password: Option<Password>,
    /// The tenant sealed with the password.
    pub tenant: String,
    /// Expiry.
    pub not_after: SystemTime,
    /// Single-use nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The key to seal the answer under.
    pub answer_key: AnswerKey,
}

impl Opened {
    /// Accepts the payload for `username` in `tenant` at `now`, recording its nonce in `replay`,
    /// or says why not. The username comparison is exact: the gateway sealed what it forwards.
    pub fn check(
        &self,
        username: &str,
        tenant: &str,
        now: SystemTime,
        replay: &ReplayGuard,
    ) -> Result<(), EnvelopeError> {
        if self.username != username {
            return Err(EnvelopeError::UsernameMismatch);
        }
        if self.tenant != tenant {
            return Err(EnvelopeError::WrongTenant);
        }
        if self.not_after < now || self.not_after > now + replay.window() {
            return Err(EnvelopeError::Expired);
        }
        replay.record(self.nonce, self.not_after, now)
    }
}

fn key_digest(spki_der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, spki_der).as_ref());
    out
}

fn aead_key(content_key: &[u8]) -> LessSafeKey {
    // A 32-byte key always fits AES-256-GCM.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, content_key).expect("32-byte AES-256 key"))
}

#[cfg(test)]
mod tests;
