//! What one contact is: an email address, normalised.
//!
//! Two spellings of one address are one contact (and one lead credit), so every
//! address is normalised before it is compared or stored:
//!
//! 1. surrounding whitespace is trimmed, and one pair of angle brackets around
//!    the whole address is taken off (`<ann@example.com>` is `ann@example.com`,
//!    as Postfix and mail headers write it);
//! 2. it is put in Unicode Normalization Form C (NFC) and lowercased whole, then
//!    put in NFC again, so that `é` as one code point or as `e` and a combining
//!    accent is one address;
//! 3. an internationalised domain is written in its ASCII (punycode) form, by
//!    UTS #46 as browsers do (`bücher.de` is `xn--bcher-kva.de`), so that both
//!    spellings of one domain are one contact.
//!
//! The validity check is deliberately plain, not RFC 5322: it refuses what is
//! certainly not deliverable and what would make two contacts look alike, and it
//! is the same check everywhere an address enters. [`check`] says what is wrong
//! with an address it refuses, in words for people.

use std::fmt;

use unicode_normalization::UnicodeNormalization as _;

/// Longest valid address, in characters, after normalisation (RFC 5321's path limit
/// of 256 less the angle brackets).
pub const MAX_LEN: usize = 254;

/// Longest label of a domain, in its ASCII form (RFC 1035).
pub const MAX_LABEL: usize = 63;

/// Normalises `raw` into the contact's identity, or `None` if it is not a valid
/// address (see [`check`]).
pub fn normalize(raw: &str) -> Option<String> {
    check(raw).ok()
}

/// Whether `raw` is a valid address (see [`check`]), without building its
/// normal form: for a decision that only counts its recipients.
pub fn is_valid(raw: &str) -> bool {
    match unwrapped(raw) {
        Ok(address) if address.is_ascii() => check_ascii(address.as_bytes()).is_ok(),
        Ok(address) => check_general(address).is_ok(),
        Err(_) => false,
    }
}

/// Normalises `raw` into the contact's identity, or says why it is not a valid
/// address: exactly one `@`; a non-empty local part; a domain with at least one
/// dot and no empty label, valid as an internationalised domain name and, in
/// its ASCII form, a host name (labels of letters, digits and `-`, neither
/// starting nor ending with `-`, at most [`MAX_LABEL`] characters each); no
/// whitespace, control, invisible or bidirectional formatting characters, and
/// no `<` or `>` but the one pair around it; at most [`MAX_LEN`] characters.
pub fn check(raw: &str) -> Result<String, Problem> {
    let address = unwrapped(raw)?;
    // Nearly every address is ASCII: checked in one pass over its bytes, where
    // the general path walks characters through Unicode's tables (most of a
    // decision's own work in the component). Lowercasing an ASCII address
    // changes nothing that makes it valid or not.
    if address.is_ascii() {
        check_ascii(address.as_bytes())?;
        return Ok(address.to_ascii_lowercase());
    }
    check_general(address)
}

/// `raw` with surrounding whitespace and one pair of angle brackets around it
/// taken off; never empty.
fn unwrapped(raw: &str) -> Result<&str, Problem> {
    let trimmed = raw.trim();
    let trimmed = match trimmed.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
        Some(inner) => inner,
        None => trimmed,
    };
    if trimmed.is_empty() {
        return Err(Problem::Empty);
    }
    Ok(trimmed)
}

/// The kinds of ASCII bytes [`check_ascii`] tells apart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Letters and digits: anywhere.
    Ordinary,
    /// What `forbidden` refuses among ASCII characters: controls, space, '<', '>'.
    Forbidden,
    At,
    Dot,
    /// `-`: in a domain, not at either end of a label.
    Hyphen,
    /// Printable characters a local part may hold and a host name may not.
    LocalOnly,
}

/// The kind of each ASCII byte.
static ASCII_CLASS: [Class; 128] = {
    let mut class = [Class::Ordinary; 128];
    let mut b = 0;
    while b < 128 {
        class[b] = match b as u8 {
            b' ' | b'<' | b'>' | 0x7f | 0..0x20 => Class::Forbidden,
            b'@' => Class::At,
            b'.' => Class::Dot,
            b'-' => Class::Hyphen,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => Class::Ordinary,
            _ => Class::LocalOnly,
        };
        b += 1;
    }
    class
};

/// [`check_general`] for an ASCII address, with the same answer (see the
/// property test), in the same order of problems.
fn check_ascii(address: &[u8]) -> Result<(), Problem> {
    // One pass, each byte looked at once and classed by a table: in the
    // component every loop iteration also checks the epoch deadline, and a
    // `match` on the byte compiles to a jump table, whose indirect jump is
    // mispredicted from one kind of byte to the next.
    let mut first_at = None;
    let mut many_at = false;
    let mut dot = false;
    let mut empty_label = false;
    let mut not_host = None;
    let mut hyphen_at_end = false;
    let mut long_label = false;
    // Where the domain's current label starts.
    let mut label = 0;
    let mut prev = 0;
    for (i, &b) in address.iter().enumerate() {
        let class = ASCII_CLASS[usize::from(b & 0x7f)];
        if class != Class::Ordinary {
            if class == Class::Forbidden {
                return Err(Problem::Character {
                    at: i,
                    c: char::from(b),
                });
            }
            if class == Class::At {
                if first_at.is_some() {
                    many_at = true;
                } else {
                    first_at = Some(i);
                    label = i + 1;
                }
            } else if first_at.is_some() {
                match class {
                    Class::Dot => {
                        dot = true;
                        // A label is empty when a dot follows the '@' or another dot.
                        empty_label |= prev == b'@' || prev == b'.';
                        hyphen_at_end |= prev == b'-';
                        long_label |= i - label > MAX_LABEL;
                        label = i + 1;
                    }
                    Class::Hyphen => hyphen_at_end |= i == label,
                    _ => {
                        if not_host.is_none() {
                            not_host = Some(b);
                        }
                    }
                }
            }
        }
        prev = b;
    }
    hyphen_at_end |= prev == b'-';
    long_label |= address.len() - label > MAX_LABEL;
    let at = first_at.ok_or(Problem::NoAt)?;
    if many_at {
        return Err(Problem::ManyAt);
    }
    if at == 0 {
        return Err(Problem::EmptyLocal);
    }
    if let Some(b) = not_host {
        return Err(Problem::NotHostName { c: char::from(b) });
    }
    if !dot {
        return Err(Problem::NoDot);
    }
    if empty_label || prev == b'.' {
        return Err(Problem::EmptyLabel);
    }
    if hyphen_at_end {
        return Err(Problem::Hyphen);
    }
    if long_label {
        return Err(Problem::LongLabel);
    }
    if address.len() > MAX_LEN {
        return Err(Problem::TooLong {
            chars: address.len(),
        });
    }
    Ok(())
}

/// [`check`] of an address already unwrapped, character by character.
fn check_general(trimmed: &str) -> Result<String, Problem> {
    let address = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        let nfc: String = trimmed.nfc().collect();
        nfc.to_lowercase().nfc().collect()
    };
    if let Some((at, c)) = address.chars().enumerate().find(|&(_, c)| forbidden(c)) {
        return Err(Problem::Character { at, c });
    }
    let (local, domain) = address.split_once('@').ok_or(Problem::NoAt)?;
    if domain.contains('@') {
        return Err(Problem::ManyAt);
    }
    if local.is_empty() {
        return Err(Problem::EmptyLocal);
    }
    // An ASCII domain is already in its ASCII form: the address is returned as
    // it is, with no copy.
    let punycode = if domain.is_ascii() {
        None
    } else {
        Some(idna::domain_to_ascii(domain).map_err(|_| Problem::InvalidDomain)?)
    };
    let ascii = punycode.as_deref().unwrap_or(domain);
    let host = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    if let Some(c) = ascii.chars().find(|&c| !host(c)) {
        return Err(Problem::NotHostName { c });
    }
    if !ascii.contains('.') {
        return Err(Problem::NoDot);
    }
    if ascii.split('.').any(str::is_empty) {
        return Err(Problem::EmptyLabel);
    }
    if ascii
        .split('.')
        .any(|l| l.starts_with('-') || l.ends_with('-'))
    {
        return Err(Problem::Hyphen);
    }
    if ascii.split('.').any(|l| l.len() > MAX_LABEL) {
        return Err(Problem::LongLabel);
    }
    let chars = local.chars().count() + 1 + ascii.len();
    if chars > MAX_LEN {
        return Err(Problem::TooLong { chars });
    }
    Ok(match punycode {
        None => address,
        Some(ascii) => format!("{local}@{ascii}"),
    })
}

/// Characters no address may hold: whitespace, controls, the angle brackets left
/// after the pair around it, and the invisible and bidirectional formatting
/// characters that make one address look like another (zero-width space and
/// joiners, LRM/RLM, the embeddings and overrides U+202A..U+202E, the isolates,
/// the byte-order mark, ...).
fn forbidden(c: char) -> bool {
    c.is_whitespace() || c.is_control() || c == '<' || c == '>' || creditgate_text::is_invisible(c)
}

/// Why an address is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    Empty,
    /// `at` counts characters from 0, after normalisation.
    Character {
        at: usize,
        c: char,
    },
    NoAt,
    ManyAt,
    EmptyLocal,
    InvalidDomain,
    /// The domain, in its ASCII form, has `c`, which no host name has.
    NotHostName {
        c: char,
    },
    NoDot,
    EmptyLabel,
    /// A label of the domain starts or ends with `-`.
    Hyphen,
    /// A label of the domain is longer than [`MAX_LABEL`].
    LongLabel,
    TooLong {
        chars: usize,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => f.write_str("it is empty"),
            Problem::Character { at, c } => write!(
                f,
                "it has {} at character {}; an address has no whitespace, control, invisible \
                 or bidirectional formatting characters, and no '<' or '>' but one pair \
                 around it",
                match c {
                    '<' | '>' => format!("'{c}'"),
                    _ => format!("U+{:04X}", u32::from(*c)),
                },
                at + 1
            ),
            Problem::NoAt => f.write_str("it has no '@'"),
            Problem::ManyAt => f.write_str("it has more than one '@'"),
            Problem::EmptyLocal => f.write_str("nothing comes before the '@'"),
            Problem::InvalidDomain => {
                f.write_str("its domain is not a valid internationalised domain name")
            }
            Problem::NotHostName { c } => write!(
                f,
                "its domain has {}, which no host name has (letters, digits, '-' and '.' only)",
                match c {
                    ' '..='~' => format!("'{c}'"),
                    _ => format!("U+{:04X}", u32::from(*c)),
                }
            ),
            Problem::NoDot => f.write_str("its domain has no dot"),
            Problem::EmptyLabel => f.write_str(
                "its domain has an empty label (two dots in a row, or a dot at either end)",
            ),
            Problem::Hyphen => f.write_str("a label of its domain starts or ends with '-'"),
            Problem::LongLabel => write!(
                f,
                "a label of its domain is longer than {MAX_LABEL} characters"
            ),
            Problem::TooLong { chars } => write!(
                f,
                "it is {chars} characters long; an address has at most {MAX_LEN}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The ASCII fast path answers what the character-by-character path
        /// answers, problem for problem, on ASCII text heavy in the characters
        /// the rules look at.
        #[test]
        fn the_ascii_path_agrees_with_the_general_one(
            address in "[aB.@<> \\t\\x00\\x7fz_\"-]{1,12}|[a-z]{0,150}@[a-z.-]{0,80}",
        ) {
            prop_assume!(!address.is_empty());
            let general = check_general(&address);
            let fast = check_ascii(address.as_bytes()).map(|()| address.to_ascii_lowercase());
            prop_assert_eq!(&fast, &general);
            prop_assert_eq!(is_valid(&address), check(&address).is_ok());
        }
    }

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
            "<>",
            "<<ann@example.com>>",
            "Ann <ann@example.com>",
            "ann@example.com>",
            "ann\u{202e}@example.com",
            "an\u{200b}n@example.com",
            "\u{feff}ann@example.com",
            "ann@exa\u{200d}mple.com",
            "c@x.io\"",
            "ann@ex_ample.com",
            "ann@[192.0.2.1]",
            "ann@-example.com",
            "ann@example-.com",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?} should be invalid");
        }
    }

    #[test]
    fn says_what_is_wrong() {
        for (bad, expected) in [
            ("", "it is empty"),
            ("ann", "it has no '@'"),
            ("ann@@example.com", "it has more than one '@'"),
            ("@example.com", "nothing comes before the '@'"),
            ("ann@example", "its domain has no dot"),
            ("ann@example..com", "its domain has an empty label"),
            ("c@x.io\"", "its domain has '\"', which no host name has"),
            (
                "ann@b\u{fc}cher_.de",
                "its domain has '_', which no host name has",
            ),
            (
                "ann@example.-com",
                "a label of its domain starts or ends with '-'",
            ),
            ("ann\u{202e}@x.co", "it has U+202E at character 4"),
            ("Ann <a@x.co>", "it has U+0020 at character 4"),
        ] {
            let problem = check(bad).unwrap_err().to_string();
            assert!(problem.starts_with(expected), "{bad:?}: {problem}");
        }
        let long = format!("ann@{}.com", "a".repeat(MAX_LABEL + 1));
        assert_eq!(check(&long), Err(Problem::LongLabel));
        let longest = format!("ann@{}.com", "a".repeat(MAX_LABEL));
        assert!(check(&longest).is_ok());
    }

    #[test]
    fn angle_brackets_around_the_address_are_taken_off() {
        assert_eq!(
            normalize(" <Ann@Example.com> ").as_deref(),
            Some("ann@example.com")
        );
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

    /// Issue 14.6: one person is one contact, however the address is spelt.
    #[test]
    fn unicode_spellings_of_one_address_are_one_contact() {
        // `é` precomposed, or `e` and a combining acute accent.
        assert_eq!(
            normalize("\u{e9}lodie@exemple.fr"),
            normalize("e\u{301}lodie@exemple.fr")
        );
        assert_eq!(
            normalize("E\u{301}LODIE@exemple.fr").as_deref(),
            Some("\u{e9}lodie@exemple.fr")
        );
        // An internationalised domain, in Unicode or in punycode, any case.
        let ascii = Some("ann@xn--bcher-kva.de".to_owned());
        assert_eq!(normalize("ann@bücher.de"), ascii);
        assert_eq!(normalize("Ann@BÜCHER.de"), ascii);
        assert_eq!(normalize("ann@bu\u{308}cher.de"), ascii);
        assert_eq!(normalize("ann@xn--bcher-kva.de"), ascii);
        assert_eq!(normalize("<ann@XN--BCHER-KVA.DE>"), ascii);
    }
}
