//! Sealed answers: the agent's verdict, readable and believable only by the gateway that
//! sealed the password.
//!
//! Every envelope yields a fresh 256-bit **answer key** that only its sealer (the gateway) and
//! its opener (the agent) know: version 1 derives it from the wrapped content key, version 2
//! from the hybrid shared secret (HKDF-SHA256, distinct labels). The agent seals its answer
//! under it with AES-256-GCM, binding it to the request:
//!
//! ```text
//! answer = nonce (12 random bytes) | AES-256-GCM(key, nonce, plaintext, aad) + tag
//! aad    = "passage.answer.v1" | len-prefixed(payload nonce, agent id, tenant, username)
//! ```
//!
//! The dispatcher in between can neither read the answer nor forge one, replay an earlier
//! sign-in's, or swap two sign-ins' answers: each opens only under its own key and binding.

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey},
    hkdf,
    rand::{SecureRandom, SystemRandom},
};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{EnvelopeError, NONCE_LEN};

const AAD_LABEL: &[u8] = b"passage.answer.v1";
const GCM_NONCE_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;

/// The key an answer is sealed under. Prints as `[redacted]`, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AnswerKey([u8; 32]);

impl std::fmt::Debug for AnswerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerKey([redacted])")
    }
}

/// What an answer is bound to: the sign-in it answers.
#[derive(Debug, Clone, Copy)]
pub struct AnswerBinding<'a> {
    /// The sealed payload's nonce.
    pub nonce: &'a [u8; NONCE_LEN],
    /// The agent that answers.
    pub agent_id: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// The username of the sign-in.
    pub username: &'a str,
}

impl AnswerBinding<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = AAD_LABEL.to_vec();
        for field in [
            self.nonce.as_slice(),
            self.agent_id.as_bytes(),
            self.tenant.as_bytes(),
            self.username.as_bytes(),
        ] {
            aad.extend_from_slice(&(field.len() as u32).to_be_bytes());
            aad.extend_from_slice(field);
        }
        aad
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (no salt) of `ikm` with `info`, 32 bytes.
pub(crate) fn derive(ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
        .extract(ikm)
        .expand(&[info], Len(out.len()))
        .and_then(|okm| okm.fill(&mut out))
        // 32 bytes is far below HKDF-SHA256's limit of 8160.
        .expect("HKDF-SHA256 expands to 32 bytes");
    out
}

impl AnswerKey {
    /// The answer key derived from `secret` under `label`.
    pub(crate) fn derive(secret: &[u8], label: &[u8]) -> Self {
        Self(derive(secret, label))
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("32-byte AES-256 key"))
    }

    /// Seals `plaintext` as the answer to the sign-in `binding` describes.
    pub fn seal(
        &self,
        binding: &AnswerBinding<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut nonce = [0u8; GCM_NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| EnvelopeError::BadAnswer)?;
        let mut sealed = Vec::with_capacity(GCM_NONCE_LEN + plaintext.len() + GCM_TAG_LEN);
        sealed.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        let result = self.aead().seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(binding.aad()),
            &mut body,
        );
        if result.is_err() {
            body.zeroize();
            return Err(EnvelopeError::BadAnswer);
        }
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    /// Opens an answer sealed for `binding`; anything else — another key, another sign-in,
    /// a tampered or truncated answer — is [`EnvelopeError::BadAnswer`].
    pub fn open(
        &self,
        binding: &AnswerBinding<'_>,
        sealed: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        if sealed.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
            return Err(EnvelopeError::BadAnswer);
        }
        let (nonce, body) = sealed.split_at(GCM_NONCE_LEN);
        let nonce: [u8; GCM_NONCE_LEN] = nonce.try_into().map_err(|_| EnvelopeError::BadAnswer)?;
        let mut buf = body.to_vec();
        match self.aead().open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(binding.aad()),
            &mut buf,
        ) {
            Ok(plain) => {
                let plain = plain.to_vec();
                buf.zeroize();
                Ok(plain)
            }
            Err(_) => Err(EnvelopeError::BadAnswer),
        }
    }
}
