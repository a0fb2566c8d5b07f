//! Distinguished names (RFC 4514), parsed with `ldapdn`: a group's name is its first RDN's
//! value *unescaped* (`CN=Ops\, EU,OU=Groups,...` is `Ops, EU`), and two spellings of one DN
//! compare equal once normalised (attribute types and values case-folded, escapes undone).

use ldapdn::{escape::unescape_ldap_value_string_cow, parse::dn_from_str};

/// The value of the first RDN of `dn`, unescaped: the `cn` of a multi-valued RDN
/// (`cn=Ops+ou=EU`), else its first value. `None` when `dn` is not a valid DN.
pub fn first_rdn_value(dn: &str) -> Option<String> {
    let rdn = dn_from_str(dn).next()?.ok()?;
    let mut first = None;
    for atav in rdn {
        let (attribute, value) = atav.ok()?;
        let value = unescape_ldap_value_string_cow(value).ok()?.into_owned();
        if attribute.eq_ignore_ascii_case("cn") {
            return Some(value);
        }
        first.get_or_insert(value);
    }
    first
}

/// `dn` in a form where two spellings of the same DN are equal: each attribute type and value
/// lower-cased, values unescaped, spaces around separators dropped, the atavs of a
/// multi-valued RDN in a fixed order. `None` when `dn` is not a valid DN.
///
/// Values are compared case-insensitively, as every naming attribute Passage meets (`cn`, `ou`,
/// `dc`, `uid`) is.
pub fn normalise(dn: &str) -> Option<String> {
    let mut rdns = Vec::new();
    for rdn in dn_from_str(dn) {
        let mut atavs = Vec::new();
        for atav in rdn.ok()? {
            let (attribute, value) = atav.ok()?;
            let value = unescape_ldap_value_string_cow(value).ok()?;
            atavs.push(format!(
                "{}={}",
                attribute.trim().to_lowercase(),
                escape(&value.to_lowercase())
            ));
        }
        atavs.sort();
        rdns.push(atavs.join("+"));
    }
    (!rdns.is_empty()).then(|| rdns.join(","))
}

/// Escapes a value for a DN string (RFC 4514 section 2.4), so [`normalise`]'s output is
/// itself a DN that splits where the original did.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_unescaped_first_rdn_values() {
        assert_eq!(
            first_rdn_value("CN=Ops\\, EU,OU=Groups,DC=corp,DC=example,DC=com").as_deref(),
            Some("Ops, EU")
        );
        assert_eq!(
            first_rdn_value("cn=staff,ou=groups,dc=corp").as_deref(),
            Some("staff")
        );
        assert_eq!(
            first_rdn_value("ou=EU+CN=Ops,DC=corp").as_deref(),
            Some("Ops"),
            "a multi-valued RDN: its cn"
        );
        assert_eq!(
            first_rdn_value("CN=R\\26D \\3D Fun,DC=corp").as_deref(),
            Some("R&D = Fun"),
            "hex escapes"
        );
        assert_eq!(first_rdn_value("not a dn"), None);
        assert_eq!(first_rdn_value(""), None);
    }

    #[test]
    fn spellings_of_one_dn_normalise_alike() {
        let a = normalise("CN=Domain Admins,CN=Users,DC=corp,DC=example,DC=com").unwrap();
        let b = normalise("cn=domain admins, cn=users, dc=CORP, dc=example, dc=com").unwrap();
        assert_eq!(a, b);
        let sandbox = normalise("CN=Domain Admins,OU=Sandbox,DC=corp,DC=example,DC=com").unwrap();
        assert_ne!(a, sandbox, "same name, another place: another group");
        assert_eq!(
            normalise("cn=Ops\\2C EU,dc=corp"),
            normalise("CN=Ops\\, EU,DC=corp"),
            "hex and character escapes of a comma"
        );
        assert_ne!(
            normalise("cn=a\\,b,dc=corp"),
            normalise("cn=a,cn=b,dc=corp"),
            "an escaped comma does not split"
        );
        assert_eq!(
            normalise("cn=Ops+ou=EU,dc=corp"),
            normalise("ou=EU+cn=Ops,dc=corp"),
            "multi-valued RDNs in any order"
        );
    }
}
