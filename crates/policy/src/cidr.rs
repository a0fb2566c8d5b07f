//! Address ranges of named networks: `addr/prefix` parsed by hand with `std::net`, so the
//! rules are ours and few. IPv4 addresses match IPv4 ranges only, IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`) count as IPv4 on both sides, and host bits are cleared, not refused.

use std::net::IpAddr;

/// One address range, its network bits only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    /// An IPv4 range.
    V4 {
        /// The network address, host bits clear.
        network: u32,
        /// Leading bits that must match, at most 32.
        prefix: u32,
    },
    /// An IPv6 range.
    V6 {
        /// The network address, host bits clear.
        network: u128,
        /// Leading bits that must match, at most 128.
        prefix: u32,
    },
}

/// Why a range's text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before the `/` is no IPv4 or IPv6 address.
    #[error("\"{0}\" is not an IP address")]
    Address(String),
    /// The part after the `/` is not a plain decimal number.
    #[error("\"{0}\" is not a prefix length")]
    Prefix(String),
    /// More prefix bits than the address has.
    #[error("prefix /{prefix} is longer than the address ({max} bits)")]
    TooLong {
        /// The prefix written.
        prefix: u32,
        /// 32 for IPv4, 128 for IPv6.
        max: u32,
    },
}

impl Cidr {
    /// Parses `addr/prefix` (a bare address is a single host: `/32` or `/128`). Returns the
    /// range and whether the text had host bits set; they are cleared (`10.1.2.3/8` is
    /// `10.0.0.0/8`), as routers do, and the caller may warn about them.
    pub fn parse(text: &str) -> Result<(Cidr, bool), CidrError> {
        let (written, prefix_text) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address = written
            .parse::<IpAddr>()
            .map_err(|_| CidrError::Address(written.to_owned()))?;
        let max: u32 = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(digits) => {
                // `u32::from_str` also takes a leading `+`; a prefix is digits only.
                if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
                    return Err(CidrError::Prefix(digits.to_owned()));
                }
                digits
                    .parse::<u32>()
                    .map_err(|_| CidrError::Prefix(digits.to_owned()))?
            }
        };
        if prefix > max {
            return Err(CidrError::TooLong { prefix, max });
        }
        Ok(match address {
            IpAddr::V4(v4) => Cidr::v4(u32::from(v4), prefix),
            // A mapped range is an IPv4 range written the IPv6 way; a shorter prefix reaches
            // beyond the mapped space and stays IPv6 (matching no IPv4 client).
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => Cidr::v4(u32::from(v4), prefix - 96),
                _ => Cidr::v6(u128::from(v6), prefix),
            },
        })
    }

    /// An IPv4 range from an address's bits, and whether host bits had to be cleared.
    fn v4(bits: u32, prefix: u32) -> (Cidr, bool) {
        let network = bits & mask_v4(prefix);
        (Cidr::V4 { network, prefix }, network != bits)
    }

    /// An IPv6 range from an address's bits, and whether host bits had to be cleared.
    fn v6(bits: u128, prefix: u32) -> (Cidr, bool) {
        let network = bits & mask_v6(prefix);
        (Cidr::V6 { network, prefix }, network != bits)
    }

    /// Whether `ip` is in this range. An IPv4-mapped IPv6 address is taken as the IPv4
    /// address it carries (a dual-stack listener reports IPv4 clients that way).
    pub fn contains(self, ip: IpAddr) -> bool {
        match (self, ip.to_canonical()) {
            (Cidr::V4 { network, prefix }, IpAddr::V4(ip)) => {
                (u32::from(ip) & mask_v4(prefix)) == network
            }
            (Cidr::V6 { network, prefix }, IpAddr::V6(ip)) => {
                (u128::from(ip) & mask_v6(prefix)) == network
            }
            _ => false,
        }
    }
}

/// The network bits of an IPv4 `prefix` (shifting by the full width would overflow).
fn mask_v4(prefix: u32) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// The network bits of an IPv6 `prefix`.
fn mask_v6(prefix: u32) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_contain_their_addresses_and_families_stay_apart() {
        // (range, address, contained)
        let table: &[(&str, &str, bool)] = &[
            ("203.0.113.0/24", "203.0.113.9", true),
            ("203.0.113.0/24", "203.0.114.9", false),
            // Host bits are cleared, not refused.
            ("203.0.113.77/24", "203.0.113.1", true),
            ("10.0.0.1", "10.0.0.1", true),
            ("10.0.0.1", "10.0.0.2", false),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("192.0.2.128/25", "192.0.2.200", true),
            ("192.0.2.128/25", "192.0.2.127", false),
            ("2001:db8:1::/48", "2001:db8:1:ffff::1", true),
            ("2001:db8:1::/48", "2001:db8:2::1", false),
            ("::/0", "2001:db8::1", true),
            // An IPv4 address matches IPv4 ranges only, even the whole IPv6 space...
            ("::/0", "192.0.2.1", false),
            ("0.0.0.0/0", "2001:db8::1", false),
            // ...and a mapped address is the IPv4 address it carries.
            ("::/0", "::ffff:192.0.2.1", false),
            ("203.0.113.0/24", "::ffff:203.0.113.9", true),
            ("::ffff:203.0.113.0/120", "203.0.113.5", true),
            ("::ffff:203.0.113.0/120", "::ffff:203.0.113.5", true),
        ];
        for &(range, address, contained) in table {
            let (cidr, _) = Cidr::parse(range).unwrap();
            assert_eq!(cidr.contains(ip(address)), contained, "{range} ∋ {address}");
        }
    }

    #[test]
    fn host_bits_are_reported() {
        let table: &[(&str, bool)] = &[
            ("203.0.113.0/24", false),
            ("203.0.113.77/24", true),
            ("2001:db8:1::/48", false),
            ("2001:db8:1::1/48", true),
            ("10.0.0.1", false),
        ];
        for &(range, masked) in table {
            assert_eq!(Cidr::parse(range).unwrap().1, masked, "{range}");
        }
    }

    #[test]
    fn malformed_ranges_are_refused() {
        let table: &[(&str, CidrError)] = &[
            ("", CidrError::Address(String::new())),
            ("offices", CidrError::Address("offices".into())),
            ("10.0.0/24", CidrError::Address("10.0.0".into())),
            (" 10.0.0.0/8", CidrError::Address(" 10.0.0.0".into())),
            ("/24", CidrError::Address(String::new())),
            ("10.0.0.0/", CidrError::Prefix(String::new())),
            ("10.0.0.0/+8", CidrError::Prefix("+8".into())),
            ("10.0.0.0/-1", CidrError::Prefix("-1".into())),
            ("10.0.0.0/24/8", CidrError::Prefix("24/8".into())),
            (
                "10.0.0.0/99999999999",
                CidrError::Prefix("99999999999".into()),
            ),
            (
                "10.0.0.0/33",
                CidrError::TooLong {
                    prefix: 33,
                    max: 32,
                },
            ),
            (
                "2001:db8::/129",
                CidrError::TooLong {
                    prefix: 129,
                    max: 128,
                },
            ),
        ];
        for (range, error) in table {
            assert_eq!(Cidr::parse(range), Err(error.clone()), "{range:?}");
        }
    }
}
