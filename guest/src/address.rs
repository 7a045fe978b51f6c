//! What one contact is: an email address, normalised.
//!
//! Two spellings of one address are one contact (and one lead credit), so every
//! address is normalised before it is compared or stored: trimmed of surrounding
//! whitespace and lowercased whole. The validity check is deliberately plain, not
//! RFC 5322: it refuses what is certainly not deliverable and what would make two
//! contacts look alike, and it is the same check everywhere an address enters.

/// Longest valid address, in characters, after normalisation (RFC 5321's path limit
/// of 256 less the angle brackets).
pub const MAX_LEN: usize = 254;

/// Normalises `raw` into the contact's identity, or `None` if it is not a valid
/// address: exactly one `@`; a non-empty local part; a domain with at least one dot
/// and no empty label; no whitespace or control characters inside; at most
/// [`MAX_LEN`] characters.
pub fn normalize(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    // Nearly every address is ASCII: lowercased without Unicode's case tables.
    let (address, len) = if trimmed.is_ascii() {
        (trimmed.to_ascii_lowercase(), trimmed.len())
    } else {
        let address = trimmed.to_lowercase();
        let len = address.chars().count();
        (address, len)
    };
    if len > MAX_LEN || address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (local, domain) = address.split_once('@')?;
    let valid = !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty());
    valid.then_some(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_surrounding_space() {
        assert_eq!(
            normalize("  Ann.Lee@Example.COM\t").as_deref(),
            Some("ann.lee@example.com")
        );
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in [
            "",
            "   ",
            "ann",
            "@example.com",
            "ann@",
            "ann@example",
            "ann@@example.com",
            "a@b@example.com",
            "ann@example..com",
            "ann@.example.com",
            "ann@example.com.",
            "ann lee@example.com",
            "ann@exa\tmple.com",
            "ann\u{7}@example.com",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?} should be invalid");
        }
    }

    #[test]
    fn length_limit_counts_characters_after_normalisation() {
        let local = "a".repeat(MAX_LEN - "@example.com".len());
        let at_limit = format!("{local}@example.com");
        assert_eq!(
            normalize(&at_limit).map(|a| a.chars().count()),
            Some(MAX_LEN)
        );
        assert_eq!(normalize(&format!("a{at_limit}")), None);
        // Surrounding whitespace does not count.
        assert!(normalize(&format!("  {at_limit}  ")).is_some());
    }

    #[test]
    fn non_ascii_is_lowercased_whole() {
        assert_eq!(
            normalize("ÉLODIE@Exemple.FR").as_deref(),
            Some("élodie@exemple.fr")
        );
    }
}
