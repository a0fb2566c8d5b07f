//! The ES256 signing key: generation, loading with a permission check, and its public JWK.

use std::path::Path;

use aws_lc_rs::{
    digest::{SHA256, digest},
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm, EncodingKey,
    jwk::{Jwk, KeyAlgorithm, PublicKeyUse},
};
use passage_credentials::{Secret, secret_file};

use crate::{TokenError, encoding_key};

/// A P-256 signing key with its key id and public JWK.
pub struct SigningKey {
    pkcs8: Secret,
    encoding: EncodingKey,
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
        let encoding = encoding_key(der);
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256)
            .map_err(|err| TokenError::Key(format!("building the JWK: {err}")))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        Ok(Self {
            pkcs8: Secret::new(der.to_vec()),
            encoding,
            kid,
            jwk,
        })
    }

    /// The key id (`kid`) tokens carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
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
