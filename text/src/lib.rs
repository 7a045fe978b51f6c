//! Character classes the guest and the host must agree on. The guest refuses
//! an address that holds one of these characters and the host refuses such an
//! account name; were the two lists kept apart, a character added to one would
//! let through, on one side, what the other refuses.

/// Invisible and bidirectional formatting characters (Unicode `Cf` that render
/// as nothing, or reorder what follows: the look-alike makers): soft hyphen,
/// Arabic letter mark, Mongolian vowel separator, zero-width space and joiners,
/// LRM/RLM, the embeddings and overrides U+202A..U+202E, word joiner and
/// invisible operators U+2060..U+2064, the isolates U+2066..U+2069, deprecated
/// format characters U+206A..U+206F, the byte-order mark, interlinear
/// annotations and tag characters.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

#[cfg(test)]
mod tests {
    use super::is_invisible;

    #[test]
    fn the_look_alike_makers_are_invisible_and_letters_are_not() {
        for c in [
            '\u{00AD}',
            '\u{200B}',
            '\u{200F}',
            '\u{202E}',
            '\u{2066}',
            '\u{FEFF}',
            '\u{E0041}',
        ] {
            assert!(is_invisible(c), "U+{:04X}", u32::from(c));
        }
        for c in [
            'a',
            'é',
            ' ',
            '\u{2010}',
            '\u{2070}',
            '\u{FFFC}',
            '\u{E0080}',
        ] {
            assert!(!is_invisible(c), "U+{:04X}", u32::from(c));
        }
    }
}
