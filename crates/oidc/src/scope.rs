//! Scope syntax (RFC 6749 §3.3): scope tokens separated by spaces, each of printable ASCII
//! but `"` and `\`. Checked rather than passed through, so that whoever splits the scope on
//! spaces (a relying party reading the access token's `scope` claim) sees the scopes that
//! were meant. Runs of spaces and repeated tokens are dropped; the order is kept, as
//! `passage-tokens` keeps it.

/// The scope's tokens in order, without repeats; the first character no scope token may hold
/// when there is one. An empty or all-space scope has no tokens.
pub(crate) fn tokens(scope: &str) -> Result<Vec<&str>, char> {
    let mut tokens: Vec<&str> = Vec::new();
    for token in scope.split(' ').filter(|token| !token.is_empty()) {
        if let Some(bad) = token.chars().find(|&c| !is_scope_char(c)) {
            return Err(bad);
        }
        if !tokens.contains(&token) {
            tokens.push(token);
        }
    }
    Ok(tokens)
}

/// `NQCHAR` of RFC 6749 Appendix A: `%x21 / %x23-5B / %x5D-7E`.
fn is_scope_char(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_and_repeats_are_dropped_and_the_order_kept() {
        assert_eq!(
            tokens("  openid profile  openid email ").unwrap(),
            ["openid", "profile", "email"]
        );
        assert!(tokens("").unwrap().is_empty());
        assert!(tokens("   ").unwrap().is_empty());
        assert_eq!(tokens("urn:x:read!#$[]~").unwrap(), ["urn:x:read!#$[]~"]);
    }

    #[test]
    fn quotes_backslashes_controls_and_non_ascii_are_refused() {
        assert_eq!(tokens("openid \"x\""), Err('"'));
        assert_eq!(tokens("openid a\\b"), Err('\\'));
        assert_eq!(tokens("openid\tprofile"), Err('\t'));
        assert_eq!(tokens("openid\nprofile"), Err('\n'));
        assert_eq!(tokens("openid caf\u{e9}"), Err('\u{e9}'));
        assert_eq!(tokens("openid \u{7f}"), Err('\u{7f}'));
    }
}
