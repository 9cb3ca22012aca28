//! The rules a nickname follows: trimmed, bounded, visible, and a guest's name only for that guest.

use crate::error::AppError;

/// Checks and trims a requested nickname.
///
/// # Errors
/// [`AppError::BadNickname`] when it is empty after trimming, longer than `max_chars` characters, or holds a
/// control character or an invisible one (see `invisible`).
pub fn clean_nickname(raw: &str, max_chars: usize) -> Result<String, AppError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(AppError::BadNickname("a nickname cannot be empty".into()));
    }
    if name.chars().count() > max_chars {
        return Err(AppError::BadNickname(format!("a nickname has at most {max_chars} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(AppError::BadNickname("a nickname cannot hold control characters".into()));
    }
    if let Some(c) = name.chars().find(|&c| invisible(c)) {
        return Err(AppError::BadNickname(format!(
            "a nickname cannot hold invisible or direction-changing characters (U+{:04X})",
            c as u32
        )));
    }
    Ok(name.to_owned())
}

/// The number of a guest name `游客N` (`N` decimal digits), which only the guest given it may use.
pub fn guest_number(name: &str) -> Option<&str> {
    name.strip_prefix("游客").filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Characters that print nothing or reorder what follows: Unicode's format characters (general category `Cf`:
/// zero-width spaces and joiners, the bidi embeddings, overrides and isolates, the byte-order mark, tags) and
/// the blank fillers that are letters by category. Two nicknames that differ only by these look the same, and a
/// bidi override turns the rest of a line around.
fn invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x206F | 0x2800 | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF9..=0xFFFB
        | 0x0600..=0x0605 | 0x06DD | 0x070F | 0x08E2 | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{clean_nickname, invisible};

    /// Nickname-ish text: mostly letters and spaces, with the characters the rules are about (controls, zero-width
    /// and bidi characters, fillers, surrogates' neighbours, astral tags) mixed in, and any character at all.
    fn raw_name() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            ' ',
            '\t',
            '\n',
            '\u{0}',
            '\u{7f}',
            '\u{85}',
            '\u{a0}',
            '\u{ad}',
            '\u{200b}',
            '\u{200d}',
            '\u{200e}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{3000}',
            '\u{3164}',
            '\u{feff}',
            '\u{fe0f}',
            '\u{e0041}',
            '游',
            '客',
            '7',
            'é',
            'ß',
            '\u{1f600}',
        ]);
        let piece = prop_oneof![4 => prop::char::range('a', 'z'), 3 => special, 1 => any::<char>()];
        prop::collection::vec(piece, 0..48).prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever is asked for, cleaning never panics, and what it accepts is the trimmed request, not empty, at
        /// most `max` characters, with no control, invisible or direction-changing character; cleaning it again
        /// gives it back unchanged.
        #[test]
        fn a_clean_nickname_is_trimmed_bounded_visible_and_stable(raw in raw_name(), max in 0usize..40) {
            match clean_nickname(&raw, max) {
                Ok(name) => {
                    prop_assert_eq!(name.as_str(), raw.trim());
                    prop_assert!(!name.is_empty());
                    prop_assert!(name.chars().count() <= max);
                    prop_assert!(!name.chars().any(|c| c.is_control() || invisible(c)), "{:?}", name);
                    prop_assert_eq!(clean_nickname(&name, max).ok(), Some(name.clone()), "idempotent");
                }
                Err(error) => prop_assert_eq!(error.code(), "bad_nickname"),
            }
        }

        /// A name made only of visible characters within the bound is accepted as it is (trimmed).
        #[test]
        fn a_visible_name_within_the_bound_is_kept(name in "[a-zA-Z0-9游客é ]{1,32}") {
            prop_assume!(!name.trim().is_empty());
            prop_assert_eq!(clean_nickname(&format!("  {name} "), 32).ok(), Some(name.trim().to_owned()));
        }
    }
}
