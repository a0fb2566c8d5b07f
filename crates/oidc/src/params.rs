//! Reading a decoded `application/x-www-form-urlencoded` parameter list (a query string or a
//! form body, as the gateway parsed it), with RFC 6749's rules: a parameter sent without a
//! value counts as left out (§3.1), and a parameter that is read may not be sent twice (§3.1,
//! §3.2). Parameters nobody reads are ignored, repeated or not.

/// The value of `name`, when it is present with a non-empty value (the first such).
pub(crate) fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, value)| key.as_str() == name && !value.is_empty())
        .map(|(_, value)| value.as_str())
}

/// The first of `names` (in their order) that is present more than once with a value.
pub(crate) fn first_duplicate(
    params: &[(String, String)],
    names: &[&'static str],
) -> Option<&'static str> {
    names.iter().copied().find(|&name| {
        params
            .iter()
            .filter(|(key, value)| key.as_str() == name && !value.is_empty())
            .count()
            > 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn an_empty_value_counts_as_left_out() {
        let params = list(&[("a", ""), ("a", "1"), ("b", "")]);
        assert_eq!(get(&params, "a"), Some("1"));
        assert_eq!(get(&params, "b"), None);
        assert_eq!(get(&params, "c"), None);
        assert_eq!(first_duplicate(&params, &["a", "b"]), None);
    }

    #[test]
    fn only_the_names_read_are_checked_for_repeats() {
        let params = list(&[("x", "1"), ("x", "2"), ("a", "1"), ("b", "1"), ("b", "2")]);
        assert_eq!(first_duplicate(&params, &["a", "b"]), Some("b"));
        assert_eq!(first_duplicate(&params, &["a"]), None);
        // The same value twice is still twice.
        let params = list(&[("a", "1"), ("a", "1")]);
        assert_eq!(first_duplicate(&params, &["a"]), Some("a"));
    }
}
