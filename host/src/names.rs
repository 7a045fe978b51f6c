//! Account and campaign names: one rule, applied by every front end (HTTP,
//! Postfix, the CLI, replay events, imports) before a name reaches the policy.
//!
//! A name is an identity: two spellings of one name must be one account (or one
//! campaign), and no name may collide with the host's own scopes (the alert log
//! lives behind a `"\u{1}alerts/"` prefix), forge a log line or a table row, or
//! look like another name. So every name is first normalised, then checked:
//!
//! 1. surrounding whitespace is trimmed;
//! 2. it is put in Unicode Normalization Form C (NFC), so that `é` typed as one
//!    code point or as `e` and a combining accent is one name;
//! 3. it is lowercased (Unicode's full lowercase mapping, then NFC again),
//!    unless the operator says names are case-sensitive
//!    ([`NameRules::case_sensitive`]: `case_sensitive_names = true` in serve's
//!    config, or `CREDITGATE_CASE_SENSITIVE_NAMES=1` for every command);
//! 4. the result must not be empty, must be at most [`MAX_CHARS`] characters,
//!    and must not contain `/`, a control character (Unicode `Cc`: `\n`, NUL,
//!    `\u{1}`, ...), any whitespace but the plain space, or an invisible or
//!    bidirectional formatting character ([`is_invisible`]: U+200B..U+200F,
//!    U+202A..U+202E, U+2066..U+2069, U+FEFF, ...).
//!
//! A name that fails is refused with a [`NameError`] that quotes it (escaped) and
//! says what is accepted; nothing is stored. Names stored before this rule are
//! left as they are and still listed (escaped) by the CLI.
//!
//! [`escape`] and [`Escaped`] are how any value from outside is written into a log
//! field or a table cell: control, invisible and bidi characters and backslashes
//! are written as Rust escapes, so that one value is one line and one cell.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use unicode_normalization::UnicodeNormalization as _;
use unicode_normalization::is_nfc_quick;

/// Longest name, in characters after normalisation. 254, like an email address,
/// so that an account named by its sender address always fits; at most 1,016
/// bytes, within the store's 1,024-byte limit on names with room for the host's
/// scope prefixes.
pub const MAX_CHARS: usize = 254;

/// How names are normalised; the same for every front end of one deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct NameRules {
    /// Keep case: `Acme` and `acme` are two accounts. Default false: names are
    /// lowercased, so that `RACE2` at the gateway is the account `race2`.
    pub case_sensitive: bool,
}

/// The environment variable every command reads for [`NameRules::case_sensitive`].
pub const CASE_SENSITIVE_ENV: &str = "CREDITGATE_CASE_SENSITIVE_NAMES";

impl NameRules {
    /// The rules the environment asks for: case-sensitive when
    /// `$CREDITGATE_CASE_SENSITIVE_NAMES` is `1`, `true` or `yes`.
    pub fn from_env() -> Self {
        let value = std::env::var(CASE_SENSITIVE_ENV).unwrap_or_default();
        NameRules {
            case_sensitive: matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes"
            ),
        }
    }

    /// An account name, normalised and checked.
    pub fn account(self, raw: &str) -> Result<String, NameError> {
        self.normalize(NameKind::Account, raw)
    }

    /// A campaign name, normalised and checked.
    pub fn campaign(self, raw: &str) -> Result<String, NameError> {
        self.normalize(NameKind::Campaign, raw)
    }

    /// `raw` normalised and checked as a name of `kind` (see the module docs).
    pub fn normalize(self, kind: NameKind, raw: &str) -> Result<String, NameError> {
        let trimmed = raw.trim();
        // Nearly every name is ASCII: no normalisation tables, and one copy.
        let name = if trimmed.is_ascii() {
            if self.case_sensitive {
                trimmed.to_owned()
            } else {
                trimmed.to_ascii_lowercase()
            }
        } else {
            let nfc: String =
                if is_nfc_quick(trimmed.chars()) == unicode_normalization::IsNormalized::Yes {
                    trimmed.to_owned()
                } else {
                    trimmed.nfc().collect()
                };
            if self.case_sensitive {
                nfc
            } else {
                nfc.to_lowercase().nfc().collect()
            }
        };
        let error = |problem| NameError {
            kind,
            value: raw.to_owned(),
            problem,
        };
        if name.is_empty() {
            return Err(error(Problem::Empty));
        }
        let mut chars = 0;
        for (at, c) in name.chars().enumerate() {
            chars += 1;
            if c == '/' {
                return Err(error(Problem::Slash { at }));
            }
            if c.is_control() || (c.is_whitespace() && c != ' ') || is_invisible(c) {
                return Err(error(Problem::Character { at, c }));
            }
        }
        if chars > MAX_CHARS {
            return Err(error(Problem::TooLong { chars }));
        }
        Ok(name)
    }
}

/// What a name names, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Account,
    Campaign,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Account => "account name",
            NameKind::Campaign => "campaign name",
        })
    }
}

/// A name refused by [`NameRules::normalize`]: which name, as given, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {} {}", .kind, quote(.value), .problem)]
pub struct NameError {
    pub kind: NameKind,
    /// The name as given (before trimming).
    pub value: String,
    pub problem: Problem,
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    Empty,
    TooLong {
        chars: usize,
    },
    /// `at` counts characters from 0, after normalisation.
    Slash {
        at: usize,
    },
    Character {
        at: usize,
        c: char,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => write!(f, "is empty; a name needs at least one visible character"),
            Problem::TooLong { chars } => write!(
                f,
                "is {chars} characters long; a name has at most {MAX_CHARS}"
            ),
            Problem::Slash { at } => write!(
                f,
                "has '/' at character {}; names may not contain '/'",
                at + 1
            ),
            Problem::Character { at, c } => write!(
                f,
                "has U+{:04X} at character {}; names may not contain control, invisible or \
                 bidirectional formatting characters, nor whitespace other than a space",
                u32::from(*c),
                at + 1
            ),
        }
    }
}

pub use creditgate_text::is_invisible;

/// `value` as it may be written into one log field or one table cell: control,
/// invisible and bidi characters, whitespace other than a space, and backslashes
/// escaped (`\n`, `\u{202e}`, `\\`). Borrowed when nothing needs escaping.
pub fn escape(value: &str) -> Cow<'_, str> {
    let needs =
        |c: char| c == '\\' || c.is_control() || (c.is_whitespace() && c != ' ') || is_invisible(c);
    if !value.chars().any(needs) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if needs(c) {
            out.extend(c.escape_debug());
            // `escape_debug` leaves some of them (whitespace such as U+2028) as is.
            if !out.ends_with('\\') && out.ends_with(c) {
                out.pop();
                out.extend(c.escape_unicode());
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `value` escaped (see [`escape`]), as a `Display` for log fields:
/// `info!(account = %Escaped(&name), ...)`.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(self.0))
    }
}

/// `value` in double quotes for a message, escaped (see [`escape`]; a `"` is
/// written `\"`), and cut to its first 64 characters (a 10,000-character name
/// says no more than its start).
pub fn quote(value: &str) -> String {
    const SHOWN: usize = 64;
    let shown: String = value.chars().take(SHOWN).collect();
    let cut = if shown.len() < value.len() { "…" } else { "" };
    format!("\"{}\"{cut}", escape(&shown).replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOLD: NameRules = NameRules {
        case_sensitive: false,
    };
    const KEEP: NameRules = NameRules {
        case_sensitive: true,
    };

    #[test]
    fn trims_and_folds_case_by_default() {
        for raw in [
            "race2",
            "RACE2",
            "race2 ",
            " race2",
            "race2\t",
            "\u{a0}Race2\n",
        ] {
            assert_eq!(FOLD.account(raw).as_deref(), Ok("race2"), "{raw:?}");
        }
        assert_eq!(KEEP.account(" RACE2 ").as_deref(), Ok("RACE2"));
    }

    #[test]
    fn unicode_is_put_in_nfc_before_folding() {
        let composed = "caf\u{e9}";
        let decomposed = "cafe\u{301}";
        assert_eq!(FOLD.account(decomposed).as_deref(), Ok(composed));
        assert_eq!(FOLD.account("CAFE\u{301}").as_deref(), Ok(composed));
        assert_eq!(KEEP.account("Cafe\u{301}").as_deref(), Ok("Caf\u{e9}"));
    }

    #[test]
    fn refuses_what_would_poison_the_store_or_the_logs() {
        for (raw, needle) in [
            ("", "is empty"),
            ("   ", "is empty"),
            ("\u{1}alerts/acme", "U+0001"),
            ("a/b", "'/' at character 2"),
            ("evil\nINFO forged", "U+000A"),
            ("nul\0", "U+0000"),
            ("acme\u{202e}lagel", "U+202E"),
            ("ac\u{200b}me", "U+200B"),
            ("a\u{2028}b", "U+2028"),
            ("tab\tinside", "U+0009"),
        ] {
            let e = FOLD.account(raw).unwrap_err().to_string();
            assert!(e.starts_with("account name \""), "{raw:?}: {e}");
            assert!(e.contains(needle), "{raw:?}: {e}");
            assert!(!e.contains('\n') && !e.contains('\u{202e}'), "{e}");
        }
        assert_eq!(FOLD.account("my account").as_deref(), Ok("my account"));
    }

    #[test]
    fn length_bound_counts_characters_and_says_the_limit() {
        let at_limit = "é".repeat(MAX_CHARS);
        assert!(FOLD.campaign(&at_limit).is_ok());
        assert!(at_limit.len() + "\u{1}alerts/".len() <= crate::store::MAX_NAME_LEN);
        let e = FOLD.campaign(&"x".repeat(1100)).unwrap_err().to_string();
        assert!(
            e.contains("is 1100 characters long; a name has at most 254"),
            "{e}"
        );
        assert!(e.starts_with("campaign name \"xxx"), "{e}");
        assert!(e.len() < 250, "the message quotes only the start: {e}");
    }

    #[test]
    fn escape_keeps_one_value_on_one_line() {
        assert!(matches!(escape("acme"), Cow::Borrowed("acme")));
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(escape("a\u{2028}b"), "a\\u{2028}b");
        assert_eq!(escape("nul\0\u{1}"), "nul\\0\\u{1}");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(Escaped("x\r\n").to_string(), "x\\r\\n");
        assert_eq!(quote("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
    }
}
