//! Slack mrkdwn escaping. Slack treats `&`, `<` and `>` as control
//! characters (`<!channel>`, `<@U…>`, `<https://evil|click>`); replacing
//! exactly these three with HTML entities neutralises every mention and link
//! a payload could smuggle in, and nothing else needs escaping (Slack:
//! "You shouldn't HTML entity-encode the entire text").

use std::borrow::Cow;

/// Slack truncates `text` beyond 40,000 characters; stay under it.
pub const MAX_TEXT_CHARS: usize = 39_000;

fn entity(c: char) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        _ => None,
    }
}

/// `text` with `&`, `<`, `>` replaced by `&amp;`, `&lt;`, `&gt;`.
pub fn escape_mrkdwn(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match entity(c) {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Escapes and cuts to at most `max_chars` escaped characters, never inside
/// an entity, marking a cut with `…`.
pub fn escape_capped(text: &str, max_chars: usize) -> String {
    let full = escape_mrkdwn(text);
    if full.chars().count() <= max_chars {
        return full.into_owned();
    }
    let budget = max_chars.saturating_sub(1); // room for the ellipsis
    let mut out = String::with_capacity(budget + 3);
    let mut used = 0usize;
    for c in text.chars() {
        let piece_len = entity(c).map_or(1, str::len);
        if used + piece_len > budget {
            break;
        }
        match entity(c) {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
        used += piece_len;
    }
    if max_chars > 0 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn unescape(s: &str) -> String {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }

    #[test]
    fn mentions_and_links_are_neutralised() {
        assert_eq!(
            escape_mrkdwn("<!channel> & <https://evil|click> @here *bold*"),
            "&lt;!channel&gt; &amp; &lt;https://evil|click&gt; @here *bold*"
        );
        assert_eq!(
            escape_mrkdwn("<@U123> <!subteam^S1>"),
            "&lt;@U123&gt; &lt;!subteam^S1&gt;"
        );
        assert_eq!(
            escape_mrkdwn("&amp;"),
            "&amp;amp;",
            "already-escaped text is escaped again"
        );
    }

    #[test]
    fn plain_text_is_not_copied() {
        assert!(matches!(
            escape_mrkdwn("cpu_high at d1 — 95%"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn capping_never_splits_an_entity() {
        assert_eq!(escape_capped("abc", 10), "abc");
        assert_eq!(escape_capped("abcdef", 4), "abc…");
        assert_eq!(escape_capped("ab<cd", 6), "ab…");
        assert_eq!(escape_capped("ab<", 6), "ab&lt;");
        assert_eq!(escape_capped("<<<<", 9), "&lt;&lt;…");
    }

    proptest! {
        #[test]
        fn escaping_round_trips_and_leaves_no_control_character(s in "\\PC{0,64}") {
            let e = escape_mrkdwn(&s);
            prop_assert!(!e.contains('<') && !e.contains('>'));
            // Every `&` starts one of the three entities.
            for (i, _) in e.match_indices('&') {
                let rest = &e[i..];
                prop_assert!(rest.starts_with("&amp;") || rest.starts_with("&lt;") || rest.starts_with("&gt;"));
            }
            prop_assert_eq!(unescape(&e), s);
        }

        #[test]
        fn capped_text_stays_within_the_cap(s in "[a-z<>&]{0,80}", cap in 1usize..40) {
            let e = escape_capped(&s, cap);
            prop_assert!(e.chars().count() <= cap, "{e:?}");
            prop_assert!(!e.contains('<'));
        }
    }
}
