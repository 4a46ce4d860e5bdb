//! MQTT-style topic names and topic filters.
//!
//! Starling routes messages by topic, using the rules of MQTT 3.1.1 / 5.0
//! section 4.7 so that people who know MQTT need to learn nothing new:
//!
//! * A topic **name** (what a message is published to) is a `/`-separated
//!   list of levels such as `sensors/kitchen/temp`. It may not contain the
//!   wildcard characters `+` or `#`.
//! * A topic **filter** (what a subscriber asks for) may additionally use
//!   `+` to match exactly one level and `#` (only as the whole last level) to
//!   match a level and everything below it.
//! * Filters that start with a wildcard do not match names starting with `$`,
//!   which are reserved for system topics such as `$SYS/...`.
//!
//! On top of MQTT, Starling caps every topic at [`MAX_TOPIC_LEN`] bytes so that
//! a topic always fits inside a single datagram.

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

/// Longest topic name or filter accepted, in bytes of UTF-8.
///
/// Starling's own cap (MQTT allows 65535) so that a topic always fits in a
/// datagram alongside its header and payload.
pub const MAX_TOPIC_LEN: usize = 255;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// The string is empty; MQTT requires at least one character.
    Empty,
    /// The string is longer than the limit, in bytes of UTF-8.
    TooLong {
        /// Length of the refused string in bytes.
        len: usize,
        /// The limit that was exceeded ([`MAX_TOPIC_LEN`]).
        max: usize,
    },
    /// The string contains U+0000 (NUL), which MQTT forbids.
    Nul,
    /// A topic *name* contains `+` or `#`; wildcards are only allowed in filters.
    WildcardInName {
        /// Byte offset of the first `+` or `#`.
        at: usize,
    },
    /// A `+` in a filter shares its level with other characters.
    BadPlus {
        /// Byte offset of the offending `+`.
        at: usize,
    },
    /// A `#` in a filter is not the whole last level.
    BadHash {
        /// Byte offset of the offending `#`.
        at: usize,
    },
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TopicError::Empty => f.write_str("topic is empty"),
            TopicError::TooLong { len, max } => {
                write!(f, "topic is {len} bytes; the limit is {max}")
            }
            TopicError::Nul => f.write_str("topic contains a NUL character (U+0000)"),
            TopicError::WildcardInName { at } => write!(
                f,
                "topic name contains a wildcard ('+' or '#') at byte {at}; \
                 wildcards are only allowed in subscription filters"
            ),
            TopicError::BadPlus { at } => write!(f, "'+' at byte {at} must occupy a whole level, as in 'a/+/b'"),
            TopicError::BadHash { at } => write!(f, "'#' at byte {at} must be the whole last level, as in 'a/#'"),
        }
    }
}

impl core::error::Error for TopicError {}

/// Checks the rules shared by names and filters: non-empty, length cap, no NUL.
fn validate_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: s.len(), max: MAX_TOPIC_LEN });
    }
    if s.as_bytes().contains(&0) {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks that `s` is a valid topic name (something a message can be published to).
///
/// Rules, checked in this order: not empty, at most [`MAX_TOPIC_LEN`] bytes,
/// no NUL, no `+` or `#` anywhere. Empty levels (`a//b`, `/a`, `a/`) and a
/// leading `$` are allowed, as in MQTT.
pub fn validate_topic(s: &str) -> Result<(), TopicError> {
    validate_common(s)?;
    // '+' and '#' are ASCII, so a byte search cannot hit the middle of a
    // multi-byte character, and the index is a byte offset as documented.
    match s.bytes().position(|b| b == b'+' || b == b'#') {
        Some(at) => Err(TopicError::WildcardInName { at }),
        None => Ok(()),
    }
}

/// Checks that `s` is a valid topic filter (something a subscriber can ask for).
///
/// Rules, checked in this order: not empty, at most [`MAX_TOPIC_LEN`] bytes,
/// no NUL, then level by level: `+` must be a whole level and `#` must be
/// the whole last level. The first offending wildcard is reported.
pub fn validate_filter(s: &str) -> Result<(), TopicError> {
    validate_common(s)?;
    let bytes = s.as_bytes();
    let mut level_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'/' => level_start = i + 1,
            b'+' => {
                let alone_before = i == level_start;
                let alone_after = bytes.get(i + 1).is_none_or(|&n| n == b'/');
                if !(alone_before && alone_after) {
                    return Err(TopicError::BadPlus { at: i });
                }
            }
            b'#' => {
                let alone_before = i == level_start;
                let is_last = i + 1 == bytes.len();
                if !(alone_before && is_last) {
                    return Err(TopicError::BadHash { at: i });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A validated topic name (borrowed), e.g. `sensors/kitchen/temp`.
///
/// Borrowed because names are usually checked straight out of a received
/// frame or a caller's string and only need to live as long as that buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topic<'a>(&'a str);

impl<'a> Topic<'a> {
    /// Validates `s` as a topic name; see [`validate_topic`] for the rules.
    pub fn new(s: &'a str) -> Result<Self, TopicError> {
        validate_topic(s)?;
        Ok(Topic(s))
    }

    /// The topic name as a string slice, with the original lifetime.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A validated topic filter (owned), e.g. `sensors/+/temp` or `sensors/#`.
///
/// Owned because subscriptions outlive the string the caller passed in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter(String);

impl TopicFilter {
    /// Validates `s` as a topic filter and copies it; see [`validate_filter`].
    pub fn new(s: &str) -> Result<Self, TopicError> {
        validate_filter(s)?;
        Ok(TopicFilter(String::from(s)))
    }

    /// The filter as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a message published to `topic` should be delivered to this filter.
    ///
    /// Compares level by level without allocating: `+` matches exactly one
    /// level (possibly empty), `#` matches its parent level and any number of
    /// child levels, and a filter starting with a wildcard never matches a
    /// name starting with `$` (MQTT 4.7.2).
    pub fn matches(&self, topic: &Topic<'_>) -> bool {
        let filter = self.0.as_str();
        let name = topic.as_str();
        if name.starts_with('$') && filter.starts_with(['+', '#']) {
            return false;
        }
        let mut f_levels = filter.split('/');
        let mut t_levels = name.split('/');
        loop {
            match (f_levels.next(), t_levels.next()) {
                // '#' is always the last filter level, and it matches the
                // parent level (no topic level left) as well as any children.
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(f), Some(t)) => {
                    if f != t {
                        return false;
                    }
                }
                (None, None) => return true,
                (Some(_), None) | (None, Some(_)) => return false,
            }
        }
    }

    /// Whether some topic name matches both filters: used to decide if a subscribe permission
    /// and a publish permission can ever meet (identity mode hands out keys only then).
    pub fn overlaps(&self, other: &TopicFilter) -> bool {
        let (a, b) = (self.0.as_str(), other.0.as_str());
        // A wildcard first level never matches `$` names, so it meets a `$` literal nowhere.
        let dollar = |x: &str| x.starts_with('$');
        let wild = |x: &str| x.starts_with(['+', '#']);
        if (dollar(a) && wild(b)) || (dollar(b) && wild(a)) {
            return false;
        }
        let mut la = a.split('/');
        let mut lb = b.split('/');
        loop {
            match (la.next(), lb.next()) {
                (Some("#"), _) | (_, Some("#")) => return true,
                (None, None) => return true,
                (Some(_), None) | (None, Some(_)) => return false,
                (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
                (Some(x), Some(y)) => {
                    if x != y {
                        return false;
                    }
                }
            }
        }
    }

    /// True when the filter contains no wildcard (it names exactly one topic).
    pub fn is_exact(&self) -> bool {
        // Validation guarantees '+' and '#' only appear as wildcards.
        !self.0.contains(['+', '#'])
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TopicFilter {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicFilter::new(s)
    }
}

#[cfg(test)]
mod tests {
    use crate::test_rng::XorShift;
    extern crate std;

    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn name(s: &str) -> Topic<'_> {
        Topic::new(s).unwrap_or_else(|e| panic!("{s:?} should be a valid name: {e}"))
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap_or_else(|e| panic!("{s:?} should be a valid filter: {e}"))
    }

    fn m(f: &str, t: &str) -> bool {
        filter(f).matches(&name(t))
    }

    // ---- MQTT v5 4.7.1.2: multi-level wildcard ----

    #[test]
    fn spec_4_7_1_2_multi_level() {
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"));
        assert!(m("sport/#", "sport"));
        // "#" is valid and receives every message (not starting with '$').
        assert!(m("#", "sport/tennis/player1"));
        assert!(m("#", "/"));
        assert!(m("#", "a"));
        assert!(TopicFilter::new("sport/tennis/#").is_ok());
        assert_eq!(TopicFilter::new("sport/tennis#"), Err(TopicError::BadHash { at: 12 }));
        assert_eq!(TopicFilter::new("sport/tennis/#/ranking"), Err(TopicError::BadHash { at: 13 }));
    }

    #[test]
    fn hash_matches_parent_and_empty_child() {
        assert!(m("sport/#", "sport/"));
        assert!(m("sport/#", "sport/tennis/player1"));
        assert!(!m("sport/#", "sports"));
        assert!(!m("sport/tennis/#", "sport"));
        assert!(m("/#", "/"));
        assert!(m("/#", "/finance"));
        assert!(!m("/#", "finance"));
    }

    // ---- MQTT v5 4.7.1.3: single-level wildcard ----

    #[test]
    fn spec_4_7_1_3_single_level() {
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(m("sport/tennis/+", "sport/tennis/player2"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/+", "sport"));
        assert!(m("sport/+", "sport/"));
        assert!(TopicFilter::new("+").is_ok());
        assert!(TopicFilter::new("+/tennis/#").is_ok());
        assert_eq!(TopicFilter::new("sport+"), Err(TopicError::BadPlus { at: 5 }));
        assert!(TopicFilter::new("sport/+/player1").is_ok());
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(!m("+", "/finance"));
    }

    #[test]
    fn plus_matches_one_possibly_empty_level() {
        assert!(m("+", "a"));
        assert!(!m("+", "a/b"));
        assert!(m("a/+/b", "a//b"));
        assert!(m("a/+/b", "a/x/b"));
        assert!(!m("a/+/b", "a/x/y/b"));
        assert!(m("+/+", "/"));
        assert!(m("+/tennis/#", "sport/tennis"));
        assert!(m("+/tennis/#", "sport/tennis/player1"));
        assert!(!m("+/tennis/#", "sport/golf/player1"));
        assert!(m("sport/+/player1", "sport/tennis/player1"));
        assert!(m("+/+/#", "a/b"));
        assert!(m("+/#", "a"));
    }

    // ---- MQTT v5 4.7.2: topics beginning with '$' ----

    #[test]
    fn spec_4_7_2_dollar_topics() {
        assert!(!m("#", "$SYS/x"));
        assert!(!m("#", "$SYS/monitor/Clients"));
        assert!(!m("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS/x"));
        assert!(m("$SYS/#", "$SYS"));
        assert!(m("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(!m("+", "$SYS"));
        assert!(!m("+/#", "$SYS/x"));
        // Only a leading '$' is special.
        assert!(m("#", "a/$SYS"));
        assert!(m("a/+", "a/$x"));
        assert!(m("$SYS", "$SYS"));
        assert!(Topic::new("$SYS/monitor/Clients").is_ok());
    }

    // ---- MQTT v5 4.7.3: topic semantics and usage ----

    #[test]
    fn spec_4_7_3_semantics() {
        // At least one character long.
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
        // Case sensitive.
        assert!(!m("ACCOUNTS", "Accounts"));
        assert!(m("Accounts", "Accounts"));
        // Spaces are allowed.
        assert!(m("Accounts payable", "Accounts payable"));
        // Leading and trailing '/' make distinct topics.
        assert!(!m("/finance", "finance"));
        assert!(!m("finance", "/finance"));
        assert!(!m("finance/", "finance"));
        // A topic consisting only of '/' is valid.
        assert!(Topic::new("/").is_ok());
        assert!(Topic::new("//").is_ok());
        assert!(m("/", "/"));
        // NUL is forbidden.
        assert_eq!(Topic::new("a\0b"), Err(TopicError::Nul));
        assert_eq!(TopicFilter::new("a/\0"), Err(TopicError::Nul));
    }

    #[test]
    fn empty_levels_are_valid_names() {
        for s in ["a//b", "/a", "a/", "/", "$", "$SYS", "a b/ c"] {
            assert!(Topic::new(s).is_ok(), "{s:?}");
            assert!(TopicFilter::new(s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn wildcard_in_name_reports_offset() {
        assert_eq!(Topic::new("a/b/+"), Err(TopicError::WildcardInName { at: 4 }));
        assert_eq!(Topic::new("#"), Err(TopicError::WildcardInName { at: 0 }));
        assert_eq!(Topic::new("ab#cd+"), Err(TopicError::WildcardInName { at: 2 }));
        // Offsets are in bytes, not characters: 'é' is two bytes.
        assert_eq!(Topic::new("é/+"), Err(TopicError::WildcardInName { at: 3 }));
        assert_eq!(validate_topic("x+"), Err(TopicError::WildcardInName { at: 1 }));
    }

    #[test]
    fn bad_filters_report_offset() {
        let cases: &[(&str, TopicError)] = &[
            ("a+", TopicError::BadPlus { at: 1 }),
            ("a/b+", TopicError::BadPlus { at: 3 }),
            ("+a", TopicError::BadPlus { at: 0 }),
            ("a/+b/c", TopicError::BadPlus { at: 2 }),
            ("++", TopicError::BadPlus { at: 0 }),
            ("a#", TopicError::BadHash { at: 1 }),
            ("a/#/b", TopicError::BadHash { at: 2 }),
            ("#/", TopicError::BadHash { at: 0 }),
            ("##", TopicError::BadHash { at: 0 }),
            ("#a", TopicError::BadHash { at: 0 }),
            ("a/#+", TopicError::BadHash { at: 2 }),
            ("a/+#", TopicError::BadPlus { at: 2 }),
            ("é+", TopicError::BadPlus { at: 2 }),
            ("€/a#", TopicError::BadHash { at: 5 }),
        ];
        for (s, want) in cases {
            assert_eq!(TopicFilter::new(s), Err(*want), "{s:?}");
            assert_eq!(validate_filter(s), Err(*want), "{s:?}");
            assert_eq!(s.parse::<TopicFilter>(), Err(*want), "{s:?}");
        }
        for s in ["#", "+", "+/+", "a/+/b", "a/#", "/+", "+/", "/#", "+/#", "a//+//#"] {
            assert!(validate_filter(s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn length_cap() {
        let ok = "a".repeat(MAX_TOPIC_LEN);
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(Topic::new(&ok).is_ok());
        assert!(TopicFilter::new(&ok).is_ok());
        let want = TopicError::TooLong { len: MAX_TOPIC_LEN + 1, max: MAX_TOPIC_LEN };
        assert_eq!(Topic::new(&long), Err(want));
        assert_eq!(TopicFilter::new(&long), Err(want));
        // The cap is in bytes: 128 two-byte characters = 256 bytes.
        let wide = "é".repeat(128);
        assert_eq!(wide.chars().count(), 128);
        assert_eq!(Topic::new(&wide), Err(TopicError::TooLong { len: 256, max: 255 }));
        // Length is checked before content.
        let long_wild = "+".repeat(300);
        assert_eq!(TopicFilter::new(&long_wild), Err(TopicError::TooLong { len: 300, max: 255 }));
    }

    #[test]
    fn multi_byte_utf8() {
        assert!(m("température/+", "température/cuisine"));
        assert!(m("日本/#", "日本/東京/気温"));
        assert!(m("+/🌡", "キッチン/🌡"));
        assert!(!m("é", "e"));
        assert!(filter("日本/東京").is_exact());
    }

    #[test]
    fn is_exact() {
        assert!(filter("a/b").is_exact());
        assert!(filter("$SYS").is_exact());
        assert!(!filter("a/+").is_exact());
        assert!(!filter("#").is_exact());
        assert!(!filter("a/#").is_exact());
    }

    #[test]
    fn display_and_accessors() {
        let t = name("a/b");
        assert_eq!(t.as_str(), "a/b");
        assert_eq!(t.to_string(), "a/b");
        let f: TopicFilter = "a/+".parse().unwrap();
        assert_eq!(f.as_str(), "a/+");
        assert_eq!(f.to_string(), "a/+");
        assert_eq!(TopicError::TooLong { len: 300, max: 255 }.to_string(), "topic is 300 bytes; the limit is 255");
        assert_eq!(TopicError::Empty.to_string(), "topic is empty");
        assert_eq!(TopicError::Nul.to_string(), "topic contains a NUL character (U+0000)");
        assert_eq!(TopicError::BadPlus { at: 3 }.to_string(), "'+' at byte 3 must occupy a whole level, as in 'a/+/b'");
        assert_eq!(
            TopicError::BadHash { at: 2 }.to_string(),
            "'#' at byte 2 must be the whole last level, as in 'a/#'"
        );
        let w = TopicError::WildcardInName { at: 4 }.to_string();
        assert!(w.contains("byte 4") && w.contains("subscription filters"), "{w}");
        // Usable as a boxed error.
        let _: std::boxed::Box<dyn core::error::Error> = std::boxed::Box::new(TopicError::Empty);
    }

    fn random_string(rng: &mut XorShift) -> String {
        const ALPHABET: &[char] = &['a', 'b', '/', '/', '$', 'é', '日', ' ', '+', '#', '\0'];
        let len = rng.below(12);
        (0..len).map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize]).collect()
    }

    #[test]
    fn property_exact_filter_from_name_matches_that_name() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut valid = 0;
        for _ in 0..20_000 {
            let s = random_string(&mut rng);
            let Ok(t) = Topic::new(&s) else {
                continue;
            };
            valid += 1;
            let f = TopicFilter::new(&s).expect("every valid name is a valid filter");
            assert!(f.is_exact(), "{s:?}");
            assert!(f.matches(&t), "{s:?}");
        }
        assert!(valid > 1000, "generator produced too few valid names: {valid}");
    }

    #[test]
    fn property_wildcarded_names_still_match() {
        let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
        for _ in 0..20_000 {
            let s = random_string(&mut rng);
            let Ok(t) = Topic::new(&s) else {
                continue;
            };
            let levels: Vec<&str> = s.split('/').collect();
            let dollar = s.starts_with('$');

            // Replacing any one level with '+' still matches (unless the
            // filter now starts with a wildcard and the name with '$').
            let i = rng.below(levels.len() as u64) as usize;
            let mut plus = levels.clone();
            plus[i] = "+";
            let f = filter(&plus.join("/"));
            assert_eq!(f.matches(&t), !(dollar && i == 0), "{f} vs {s:?}");

            // Replacing a suffix of levels (possibly none) with '#' matches too.
            let k = rng.below(levels.len() as u64 + 1) as usize;
            let mut hash: Vec<&str> = levels[..k].to_vec();
            hash.push("#");
            let f = filter(&hash.join("/"));
            assert_eq!(f.matches(&t), !(dollar && k == 0), "{f} vs {s:?}");

            // Adding a level never matches without a wildcard.
            let mut longer = String::from(s.as_str());
            longer.push_str("/x");
            assert!(!filter(&longer).matches(&t), "{longer:?} vs {s:?}");
        }
    }

    #[test]
    fn property_validation_agrees_with_reference() {
        // Straightforward reference implementation built from split('/').
        fn reference_filter_ok(s: &str) -> bool {
            if s.is_empty() || s.len() > MAX_TOPIC_LEN || s.contains('\0') {
                return false;
            }
            let levels: Vec<&str> = s.split('/').collect();
            levels.iter().enumerate().all(|(i, l)| {
                (!l.contains('+') || *l == "+") && (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
            })
        }
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        for _ in 0..20_000 {
            let s = random_string(&mut rng);
            assert_eq!(validate_filter(&s).is_ok(), reference_filter_ok(&s), "{s:?}");
            let name_ok = !s.is_empty() && !s.contains(['\0', '+', '#']);
            assert_eq!(validate_topic(&s).is_ok(), name_ok, "{s:?}");
        }
    }

    #[test]
    fn overlaps_is_symmetric_and_exact() {
        let f = |s: &str| TopicFilter::new(s).unwrap();
        let cases = [
            ("home/kitchen/#", "home/+/cmd", true),
            ("home/kitchen/temp", "home/+/cmd", false),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/#", "a", true),
            ("+/x", "y/+", true),
            ("a/+", "a/b/c", false),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/+", true),
            ("+", "$x", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(f(a).overlaps(&f(b)), want, "{a} vs {b}");
            assert_eq!(f(b).overlaps(&f(a)), want, "{b} vs {a}");
        }
    }
}
