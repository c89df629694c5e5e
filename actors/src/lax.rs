//! The coercions the EdgeWatch bridge's pydantic v2 model applied in lax
//! mode, and no more: what `[compat.edgewatch] lax_frames` accepts beside
//! the strict frame rules. Pure.
//!
//! The bridge ran `Metrics.model_validate(json.loads(raw))` (Python mode,
//! lax), so a `float` field took a number, a boolean or a numeric string,
//! and the `int` timestamp took an integer, a boolean, a whole float or an
//! integer string. The string rules below follow pydantic-core's own
//! (`str_as_float`, `str_as_int`); the differential test in
//! `tests/e2e/edgewatch.rs` holds them against the real model.
//!
//! Where pydantic accepted more than edgebus ever will, edgebus stays
//! strict: NaN and infinities (also as `"inf"` strings, which pydantic let
//! through for `agent_mem_mb`), timestamps beyond `u64`, duplicate keys and
//! NaN/Infinity literals (which Python's `json.loads` read).

/// A coercion applied to one field of an accepted frame (label of
/// `edgebus_frames_coerced_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coercion {
    /// `"42.5"` for a number.
    NumberFromString,
    /// `"1700000000"` (or `"1_700_000_000"`, `"1700000000.0"`) for the timestamp.
    IntFromString,
    /// `1700000000.0` for the timestamp.
    IntFromFloat,
    /// `true`/`false` as 1/0.
    NumberFromBool,
}

impl Coercion {
    pub const ALL: [Coercion; 4] = [
        Coercion::NumberFromString,
        Coercion::IntFromString,
        Coercion::IntFromFloat,
        Coercion::NumberFromBool,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Coercion::NumberFromString => "number_from_string",
            Coercion::IntFromString => "int_from_string",
            Coercion::IntFromFloat => "int_from_float",
            Coercion::NumberFromBool => "number_from_bool",
        }
    }
}

/// The coercions one frame needed, counted by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coercions([u8; Coercion::ALL.len()]);

impl Coercions {
    pub fn add(&mut self, coercion: Coercion) {
        let slot = &mut self.0[coercion as usize];
        *slot = slot.saturating_add(1);
    }

    pub fn count(&self, coercion: Coercion) -> u8 {
        self.0[coercion as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }

    /// Each kind applied at least once, with how often.
    pub fn iter(&self) -> impl Iterator<Item = (Coercion, u8)> + '_ {
        Coercion::ALL
            .into_iter()
            .map(|c| (c, self.count(c)))
            .filter(|(_, n)| *n > 0)
    }
}

/// An integer read laxly, as the timestamp sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaxInt {
    Value(u64),
    /// Below zero (`ge=0` refused it too).
    Negative,
    /// Beyond what pydantic read as an int from a float (`i64`), or beyond
    /// `u64` (pydantic's ints were unbounded; edgebus's timestamp is not).
    TooLarge,
    /// Not an integer at all.
    NotAnInt,
}

/// A float field's string: trimmed and parsed as Rust parses `f64` (what
/// pydantic-core does), else, untrimmed, with single underscores between
/// characters removed. Non-finite results come back as such; the caller's
/// range check refuses them.
pub fn float_from_str(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .or_else(|| strip_underscores(text)?.parse().ok())
}

/// An int field's string: a JSON integer as is, else after trimming, a
/// leading `+`, leading zeros, a `.0…` tail and single underscores are
/// taken off (pydantic-core's `clean_int_str`).
pub fn int_from_str(text: &str) -> LaxInt {
    if let Some(int) = json_int(text) {
        return int;
    }
    match clean_int_str(text) {
        Some(cleaned) => json_int(&cleaned).unwrap_or(LaxInt::NotAnInt),
        None => LaxInt::NotAnInt,
    }
}

/// A float for an int field: whole, finite and strictly inside `i64`'s
/// range (pydantic-core's `float_as_int`), then not below zero.
pub fn int_from_float(value: f64) -> LaxInt {
    if !value.is_finite() || value % 1.0 != 0.0 {
        return LaxInt::NotAnInt;
    }
    if !((i64::MIN as f64) < value && value < (i64::MAX as f64)) {
        return LaxInt::TooLarge;
    }
    match value as i64 {
        v if v < 0 => LaxInt::Negative,
        v => LaxInt::Value(v.unsigned_abs()),
    }
}

/// Underscores removed when none leads, trails or doubles; `None` when
/// there is none to remove or one is misplaced.
fn strip_underscores(text: &str) -> Option<String> {
    if text.starts_with('_') || text.ends_with('_') || !text.contains('_') || text.contains("__") {
        return None;
    }
    Some(text.replace('_', ""))
}

/// `-?(0|[1-9][0-9]*)` and nothing else (jiter's `NumberInt::from_bytes`).
fn json_int(text: &str) -> Option<LaxInt> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let bytes = digits.as_bytes();
    let well_formed = match bytes {
        [] => false,
        [b'0'] => true,
        [b'0', ..] => false,
        _ => bytes.iter().all(u8::is_ascii_digit),
    };
    if !well_formed {
        return None;
    }
    let zero = digits == "0";
    Some(match (negative, digits.parse::<u64>()) {
        (true, _) if zero => LaxInt::Value(0),
        (true, _) => LaxInt::Negative,
        (false, Ok(v)) => LaxInt::Value(v),
        (false, Err(_)) => LaxInt::TooLarge,
    })
}

/// pydantic-core's `clean_int_str`: `None` when nothing could be cleaned.
fn clean_int_str(text: &str) -> Option<String> {
    let len_before = text.len();
    let mut s = text.trim();
    if let Some(rest) = s.strip_prefix('+') {
        if rest.starts_with('-') {
            return None;
        }
        s = rest;
    }
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        if rest.starts_with('-') || rest.starts_with('+') {
            return None;
        }
        negative = true;
        s = rest;
    }
    s = strip_leading_zeros(s)?;
    if let Some(i) = s.find('.') {
        let decimals = &s[i + 1..];
        if !decimals.is_empty() && decimals.chars().all(|c| c == '0') {
            s = &s[..i];
        }
    }
    let sign = if negative { "-" } else { "" };
    if let Some(stripped) = strip_underscores(s) {
        return Some(format!("{sign}{stripped}"));
    }
    if len_before == s.len() {
        return None;
    }
    Some(format!("{sign}{s}"))
}

/// Leading zeros off, keeping one before a `.` or when all are zeros
/// (underscores among them go too).
fn strip_leading_zeros(s: &str) -> Option<&str> {
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, '0')) => {}
        Some((_, c)) if c.is_ascii_digit() || c == '-' => return Some(s),
        _ => return None,
    }
    for (i, c) in chars {
        match c {
            '0' | '_' => {}
            '1'..='9' | '-' => return Some(&s[i..]),
            '.' => return Some(&s[i - 1..]),
            _ => return None,
        }
    }
    Some(&s[s.len() - 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_strings_read_as_pydantic_reads_a_float() {
        for (text, want) in [
            ("42", 42.0),
            ("42.5", 42.5),
            (" 42.5\n", 42.5),
            ("\u{a0}42", 42.0),
            ("1e2", 100.0),
            ("+.5", 0.5),
            ("5.", 5.0),
            ("-0", -0.0),
            ("4_2", 42.0),
            ("1_e2", 100.0),
            ("1._5", 1.5),
            ("1e-400", 0.0),
        ] {
            assert_eq!(float_from_str(text), Some(want), "{text:?}");
        }
        for text in [
            "", " ", "0x10", "4 2", "4__2", "_42", "42_", "1,5", "１２", " 4_2", "e5", "--5",
        ] {
            assert_eq!(float_from_str(text), None, "{text:?}");
        }
        // Read, then refused by the range check like pydantic's `le`/NaN rule.
        assert!(float_from_str("nan").is_some_and(f64::is_nan));
        assert_eq!(float_from_str("inf"), Some(f64::INFINITY));
    }

    #[test]
    fn integer_strings_read_as_pydantic_reads_an_int() {
        for (text, want) in [
            ("42", 42),
            ("+5", 5),
            ("-0", 0),
            ("0042", 42),
            ("00", 0),
            ("4_2", 42),
            ("1_000", 1000),
            ("42.0", 42),
            ("42.00", 42),
            (" 42.0", 42),
            ("1_0.0", 10),
            ("0.0", 0),
            ("-0.0", 0),
            ("\t42\n", 42),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(int_from_str(text), LaxInt::Value(want), "{text:?}");
        }
        for text in [
            "42.5", "42.", ".0", "1e2", "0x10", "", " ", "4 2", "4__2", "_42", "10.0_0", "+-5",
            "--5", "inf", "１２", "0e0", "00.5",
        ] {
            assert_eq!(int_from_str(text), LaxInt::NotAnInt, "{text:?}");
        }
        assert_eq!(int_from_str("-1"), LaxInt::Negative);
        assert_eq!(int_from_str("-0042"), LaxInt::Negative);
        assert_eq!(int_from_str("18446744073709551616"), LaxInt::TooLarge);
    }

    #[test]
    fn whole_floats_inside_i64_are_ints() {
        assert_eq!(
            int_from_float(1_700_000_000.0),
            LaxInt::Value(1_700_000_000)
        );
        assert_eq!(int_from_float(-0.0), LaxInt::Value(0));
        assert_eq!(
            int_from_float(9.2e18),
            LaxInt::Value(9_200_000_000_000_000_000)
        );
        assert_eq!(int_from_float(2f64.powi(63)), LaxInt::TooLarge);
        assert_eq!(int_from_float(1e20), LaxInt::TooLarge);
        assert_eq!(int_from_float(-1.0), LaxInt::Negative);
        for bad in [42.5, 1e-10, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(int_from_float(bad), LaxInt::NotAnInt, "{bad}");
        }
    }

    #[test]
    fn coercions_are_counted_by_kind() {
        let mut c = Coercions::default();
        assert!(c.is_empty());
        c.add(Coercion::NumberFromString);
        c.add(Coercion::NumberFromString);
        c.add(Coercion::IntFromFloat);
        let seen: Vec<_> = c.iter().map(|(k, n)| (k.as_str(), n)).collect();
        assert_eq!(seen, vec![("number_from_string", 2), ("int_from_float", 1)]);
    }
}
