//! Passage as an OpenID Connect provider, the protocol's rules without the HTTP: the gateway
//! hands in parameter lists and header strings and gets plain values back, which it turns into
//! responses. No I/O, no store, no clock.
//!
//! What is implemented, and from which text:
//!
//! * the authorization code flow (RFC 6749 §4.1, OpenID Connect Core 1.0 §3.1) with PKCE
//!   (RFC 7636), `S256` only, required of public clients: [`authorize`], [`pkce`];
//! * the token endpoint's client authentication (`client_secret_basic`, `client_secret_post`,
//!   `none`) and grants (`authorization_code`, `refresh_token`): [`token`]; revocation
//!   (RFC 7009) and introspection (RFC 7662) authenticate clients the same way;
//! * the registered applications: [`client`];
//! * the discovery document (OpenID Connect Discovery 1.0, RFC 8414): [`discovery`];
//! * the sign-in, second-factor, error and signed-out pages, without JavaScript, and the CSRF
//!   protection of their forms: [`pages`], [`csrf`];
//! * the opaque codes and refresh tokens, stored only as digests: [`tokens`].
//!
//! Some decisions hold throughout:
//!
//! * **Redirect URIs are matched exactly** (RFC 9700 §2.1): no prefix, no wildcard, no
//!   normalisation. Until the `redirect_uri` of a request is known to be registered for its
//!   client, errors are shown on Passage's own page and never sent to that URI.
//! * **Parameters are read strictly**: a parameter Passage reads may appear once (RFC 6749
//!   §3.1, §3.2); one sent without a value counts as left out; parameters Passage does not
//!   know are ignored, as RFC 6749 §3.1 requires.
//! * **Passage keeps no browser session**: every authorization asks for the password, so
//!   `prompt=none` always answers `login_required`, and `max_age` is always met.
//! * **Secrets never reach logs**: nothing in this crate implements `Debug` so as to print a
//!   code, a refresh token, a verifier or a client secret hash.

pub mod authorize;
pub mod client;
pub mod csrf;
pub mod discovery;
pub mod error;
pub mod pages;
pub mod pkce;
pub mod token;
pub mod tokens;

pub use error::OidcError;

mod params;
mod scope;
#[cfg(test)]
mod testing;
