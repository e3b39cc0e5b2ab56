//! Quoting user input and peer bytes in error texts and log lines.
//!
//! An error message that echoes what it was given must stay bounded and must not let that input
//! write to the terminal or forge a log line. [`quoted`] keeps at most [`MAX_QUOTED_CHARS`]
//! characters, escapes every control character (`\n`, `\r`, `\t`, `\u{1b}`, …) the way Rust's
//! `escape_debug` does, and says how long the input really was when it had to cut it.
//!
//! ```
//! use waypost_core_types::quote::quoted;
//!
//! assert_eq!(quoted("users").to_string(), "users");
//! assert_eq!(quoted("a\u{1b}[31mb\r\n").to_string(), r"a\u{1b}[31mb\r\n");
//! let long = "x".repeat(10 << 20);
//! let text = quoted(&long).to_string();
//! assert!(text.len() < 200);
//! assert!(text.ends_with("… (10485760 bytes)"));
//! ```

use std::fmt;

/// Most characters of an input that [`quoted`] shows.
pub const MAX_QUOTED_CHARS: usize = 64;

/// A bounded, escaped view of `input` for an error text; see the [module docs](self).
pub fn quoted(input: &str) -> Quoted<'_> {
    Quoted {
        input,
        max_chars: MAX_QUOTED_CHARS,
    }
}

/// Like [`quoted`], with another bound (for response bodies, which are worth more context).
pub fn quoted_up_to(input: &str, max_chars: usize) -> Quoted<'_> {
    Quoted { input, max_chars }
}

/// The value [`quoted`] returns; its `Display` writes the bounded, escaped text.
#[derive(Clone, Copy)]
pub struct Quoted<'a> {
    input: &'a str,
    max_chars: usize,
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shown, c) in self.input.chars().enumerate() {
            if shown == self.max_chars {
                return write!(f, "… ({} bytes)", self.input.len());
            }
            if c.is_control() {
                // `\n`, `\r`, `\t`, `\0`, `\u{1b}`: never the raw character.
                write!(f, "{}", c.escape_debug())?;
            } else if is_bidi_control(c) {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The Unicode bidirectional controls, which can reorder what a terminal shows.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(
            quoted("user-service_1.a:b@c").to_string(),
            "user-service_1.a:b@c"
        );
        assert_eq!(quoted("").to_string(), "");
        assert_eq!(quoted("héllo wörld").to_string(), "héllo wörld");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(quoted("a\nb").to_string(), r"a\nb");
        assert_eq!(quoted("\u{7}\u{0}\u{7f}").to_string(), r"\u{7}\0\u{7f}");
        assert_eq!(quoted("\u{9b}31m").to_string(), r"\u{9b}31m");
        let bidi = quoted("a\u{202e}b").to_string();
        assert_eq!(bidi, r"a\u{202e}b");
        assert!(!quoted("\u{1b}[2J\r")
            .to_string()
            .chars()
            .any(char::is_control));
    }

    #[test]
    fn long_input_is_cut_at_a_character_boundary() {
        let input = "é".repeat(100);
        let text = quoted(&input).to_string();
        assert!(text.starts_with(&"é".repeat(MAX_QUOTED_CHARS)));
        assert!(text.ends_with("… (200 bytes)"));
        assert_eq!(quoted(&"a".repeat(64)).to_string(), "a".repeat(64));
        assert_eq!(quoted_up_to("abcdef", 3).to_string(), "abc… (6 bytes)");
    }

    #[test]
    fn debug_wraps_in_quotes() {
        assert_eq!(format!("{:?}", quoted("a\tb")), r#""a\tb""#);
    }
}
