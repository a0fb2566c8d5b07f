//! The ES256 signing key: generation, loading with a permission check, and its public JWK.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::{
    digest::{SHA256, digest},
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, KeyAlgorithm, PublicKeyUse},
};
use passage_credentials::{Secret, secret_file};

use crate::TokenError;

/// A P-256 signing key with its key id and public JWK.
///
/// The parsed key pair is kept: `jsonwebtoken::encode` re-parses (and re-validates) a PKCS#8
/// key on every signature, which measured at about a third of the gateway's CPU per sign-in
/// (see docs/benchmarks.md), so tokens are signed here with the parsed key.
pub struct SigningKey {
    pkcs8: Secret,
    pair: EcdsaKeyPair,
    kid: String,
    jwk: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("private", &"[redacted]")
            .finish()
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self, TokenError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| TokenError::Key("generating a P-256 key failed".into()))?;
        let der = pair
            .to_pkcs8v1()
            .map_err(|_| TokenError::Key("encoding the key failed".into()))?;
        Self::from_pkcs8_der(der.as_ref())
    }

    /// Loads a PKCS#8 DER P-256 key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, TokenError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| TokenError::Key("not a PKCS#8 P-256 private key".into()))?;
        let public = pair.public_key().as_ref();
        let kid = URL_SAFE_NO_PAD.encode(&digest(&SHA256, public).as_ref()[..12]);
        let mut jwk = Jwk::from_encoding_key(&EncodingKey::from_ec_der(der), Algorithm::ES256)
            .map_err(|err| TokenError::Key(format!("building the JWK: {err}")))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        Ok(Self {
            pkcs8: Secret::new(der.to_vec()),
            pair,
            kid,
            jwk,
        })
    }

    /// The key id (`kid`) tokens carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key, PKCS#8 DER (to keep it in the store, sealed).
    pub fn pkcs8(&self) -> &Secret {
        &self.pkcs8
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs `header` and `claims` as a compact JWS (RFC 7515): ES256 signatures are the
    /// fixed-length `r || s` that `ECDSA_P256_SHA256_FIXED_SIGNING` produces.
    pub(crate) fn sign_jwt<T: serde::Serialize>(
        &self,
        header: &Header,
        claims: &T,
    ) -> Result<String, TokenError> {
        let message = format!("{}.{}", b64_json(header)?, b64_json(claims)?);
        let signature = self
            .pair
            .sign(&SystemRandom::new(), message.as_bytes())
            .map_err(|_| TokenError::Sign("ECDSA signing failed".into()))?;
        Ok(format!(
            "{message}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

fn b64_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, TokenError> {
    serde_json::to_vec(value)
        .map(|json| URL_SAFE_NO_PAD.encode(json))
        .map_err(|err| TokenError::Sign(err.to_string()))
}

/// Loads the key at `path`, or creates it (mode 0600) if the file does not exist.
///
/// A key file readable by group or others is refused: whoever reads it can mint tokens.
pub fn load_or_create_signing_key(path: &Path) -> Result<SigningKey, TokenError> {
    match std::fs::read(path) {
        Ok(der) => {
            secret_file::check_permissions(path).map_err(|err| TokenError::Key(err.to_string()))?;
            SigningKey::from_pkcs8_der(&der)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate()?;
            secret_file::write_new(path, key.pkcs8.expose())
                .map_err(|err| TokenError::Key(format!("writing {}: {err}", path.display())))?;
            Ok(key)
        }
        Err(err) => Err(TokenError::Key(format!(
            "reading {}: {err}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.der");
        let first = load_or_create_signing_key(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let again = load_or_create_signing_key(&path).unwrap();
        assert_eq!(first.kid(), again.kid());
        assert!(!format!("{again:?}").contains("MIG"));
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.der");
        load_or_create_signing_key(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_signing_key(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
