//! Cross-site request forgery protection for the sign-in and second-factor forms: a
//! double-submit cookie.
//!
//! When Passage shows a form it makes a random token, puts it in the form as the hidden field
//! `csrf` and in the cookie [`COOKIE`]; a submission is accepted only when both come back and
//! are equal ([`matches`]). Another site can make a browser post to Passage, but it can
//! neither read the token from Passage's page nor read or set Passage's cookie, so it cannot
//! send a matching pair. Passage keeps nothing: the pair is bound to the form it was shown
//! with, and the form lives as long as the cookie ([`set_cookie`]'s `Max-Age`).
//!
//! The cookie's attributes carry the rest:
//!
//! * the `__Host-` prefix makes browsers accept the cookie only when it is `Secure`, has
//!   `Path=/` and no `Domain`: a sibling subdomain (or a man in the middle on plain HTTP)
//!   cannot plant a cookie of its choosing for Passage's host, which is the classic way to
//!   defeat a double-submit cookie;
//! * `SameSite=Strict`: the browser never sends it with a request started by another site,
//!   so a cross-site post fails the check even before the comparison; the form's own post
//!   comes from Passage's page and carries it. (Setting the cookie on the cross-site
//!   navigation that opens the sign-in page is allowed.)
//! * `HttpOnly`: no script reads it (the pages have none, and their Content-Security-Policy
//!   allows none).

use aws_lc_rs::constant_time::verify_slices_are_equal;

use crate::tokens::opaque_token;

/// The CSRF cookie's name.
pub const COOKIE: &str = "__Host-passage-csrf";

/// A new CSRF token: 32 random bytes, URL-safe base64 without padding (43 characters), safe
/// in a cookie and a form unescaped.
///
/// # Panics
///
/// When the system random source fails.
pub fn new_token() -> String {
    opaque_token()
}

/// Whether a form submission carries the token of its cookie: both present, not empty, and
/// equal (compared in constant time).
pub fn matches(cookie: Option<&str>, form: Option<&str>) -> bool {
    match (cookie, form) {
        (Some(cookie), Some(form)) if !cookie.is_empty() && !form.is_empty() => {
            verify_slices_are_equal(cookie.as_bytes(), form.as_bytes()).is_ok()
        }
        _ => false,
    }
}

/// The `Set-Cookie` value giving `token` to the browser for `max_age_s` seconds.
///
/// Only the characters of a token made by [`new_token`] (`A-Z a-z 0-9 - _`) are written: a
/// token that came back from a browser cannot add attributes to the cookie.
pub fn set_cookie(token: &str, max_age_s: u64) -> String {
    let token: String = token
        .chars()
        .filter(|&c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    format!("{COOKIE}={token}; Max-Age={max_age_s}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value removing the CSRF cookie (once its form was used).
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_cookie_safe() {
        let token = new_token();
        assert_eq!(token.len(), 43);
        assert_ne!(token, new_token());
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn a_submission_matches_only_its_own_cookie() {
        let token = new_token();
        assert!(matches(Some(token.as_str()), Some(token.as_str())));
        assert!(!matches(Some(token.as_str()), Some(new_token().as_str())));
        assert!(!matches(Some(token.as_str()), Some(&token[..42])));
        assert!(!matches(Some(token.as_str()), None));
        assert!(!matches(None, Some(token.as_str())));
        assert!(!matches(None, None));
        assert!(!matches(Some(""), Some("")));
    }

    #[test]
    fn the_cookie_is_host_only_secure_http_only_and_strict() {
        let cookie = set_cookie("abc-_9", 3600);
        assert_eq!(
            cookie,
            "__Host-passage-csrf=abc-_9; Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Strict"
        );
        assert!(!cookie.contains("Domain"));
        assert_eq!(
            clear_cookie(),
            "__Host-passage-csrf=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn a_hostile_token_adds_no_attribute() {
        let cookie = set_cookie("x; Domain=evil.example; SameSite=None\r\nX: y", 60);
        assert_eq!(
            cookie,
            "__Host-passage-csrf=xDomainevilexampleSameSiteNoneXy; Max-Age=60; Path=/; Secure; \
             HttpOnly; SameSite=Strict"
        );
    }
}
