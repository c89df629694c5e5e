//! Topic names and topic filters (`+`, `#`); the families of DESIGN.md are
//! [`crate::families`]'s.
//!
//! Pure functions only: the bus indexes filters with [`FilterIndex`], ingest and
//! HTTP publish validate names with [`validate_topic`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Longest topic name or filter accepted, in bytes. MQTT allows 65,535; nothing
/// in edgebus's families comes close, and a bound keeps one hostile name from
/// costing more than a few hundred bytes in every envelope and index.
pub const MAX_TOPIC_BYTES: usize = 256;

/// Most levels in a topic or filter (`devices/d1/metrics` has three).
pub const MAX_TOPIC_LEVELS: usize = 16;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {MAX_TOPIC_BYTES} bytes")]
    TooLong,
    #[error("topic has more than {MAX_TOPIC_LEVELS} levels")]
    TooManyLevels,
    #[error("topic contains a control character")]
    ControlCharacter,
    #[error("topic name contains a wildcard (`+` or `#`)")]
    WildcardInName,
    #[error("`#` must be the last level of a filter")]
    HashNotLast,
    #[error("a wildcard must occupy a whole level")]
    PartialWildcard,
}

/// Checks a topic *name* (what is published, never a filter).
///
/// Control characters are refused, not just NUL as MQTT does: topic levels end
/// up in SSE `event:` lines and log lines, where CR/LF would inject fields.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

fn check_common(text: &str) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if text.split('/').count() > MAX_TOPIC_LEVELS {
        return Err(TopicError::TooManyLevels);
    }
    if text.chars().any(char::is_control) {
        return Err(TopicError::ControlCharacter);
    }
    Ok(())
}

/// One level of a parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(Box<str>),
    Plus,
    Hash,
}

/// One level of a filter, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterLevel<'a> {
    Exact(&'a str),
    Plus,
    Hash,
}

/// A validated MQTT topic filter such as `devices/+/metrics` or `attackers/#`.
#[derive(Clone, PartialEq, Eq)]
pub struct TopicFilter {
    raw: Arc<str>,
    levels: Vec<Level>,
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({:?})", self.raw)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl TopicFilter {
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        check_common(text)?;
        let mut levels = Vec::new();
        let mut parts = text.split('/').peekable();
        while let Some(part) = parts.next() {
            let level = match part {
                "+" => Level::Plus,
                "#" if parts.peek().is_none() => Level::Hash,
                "#" => return Err(TopicError::HashNotLast),
                p if p.contains(['+', '#']) => return Err(TopicError::PartialWildcard),
                p => Level::Exact(p.into()),
            };
            levels.push(level);
        }
        Ok(Self {
            raw: text.into(),
            levels,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The filter's levels, for walking a topic trie.
    pub fn levels(&self) -> impl Iterator<Item = FilterLevel<'_>> {
        self.levels.iter().map(|level| match level {
            Level::Exact(name) => FilterLevel::Exact(name),
            Level::Plus => FilterLevel::Plus,
            Level::Hash => FilterLevel::Hash,
        })
    }

    /// MQTT matching rules, including: `a/#` matches `a`, and a filter that
    /// starts with a wildcard never matches a topic that starts with `$`.
    pub fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && matches!(self.levels.first(), Some(Level::Plus | Level::Hash))
        {
            return false;
        }
        let mut names = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Hash => return true,
                Level::Plus => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                Level::Exact(want) => {
                    if names.next() != Some(want) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

/// Index of filters → keys, so routing one topic costs the depth of the topic,
/// not the number of subscriptions (1,000 per-device dashboards stay cheap).
#[derive(Debug)]
pub struct FilterIndex<K> {
    root: Node<K>,
    len: usize,
}

#[derive(Debug)]
struct Node<K> {
    exact: HashMap<Box<str>, Node<K>>,
    plus: Option<Box<Node<K>>>,
    /// Keys whose filter ends with `#` at this depth.
    hash: Vec<K>,
    /// Keys whose filter ends exactly at this depth.
    terminal: Vec<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            plus: None,
            hash: Vec::new(),
            terminal: Vec::new(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.terminal.is_empty()
    }
}

impl<K> Default for FilterIndex<K> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: PartialEq + Clone> FilterIndex<K> {
    /// Number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, filter: &TopicFilter, key: K) {
        let mut node = &mut self.root;
        for level in &filter.levels {
            match level {
                Level::Exact(name) => node = node.exact.entry(name.clone()).or_default(),
                Level::Plus => node = node.plus.get_or_insert_with(Box::default),
                Level::Hash => {
                    node.hash.push(key);
                    self.len += 1;
                    return;
                }
            }
        }
        node.terminal.push(key);
        self.len += 1;
    }

    /// Removes one (filter, key) entry; returns whether it was present.
    pub fn remove(&mut self, filter: &TopicFilter, key: &K) -> bool {
        let removed = Self::remove_in(&mut self.root, &filter.levels, key);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_in(node: &mut Node<K>, levels: &[Level], key: &K) -> bool {
        let take = |list: &mut Vec<K>| match list.iter().position(|k| k == key) {
            Some(i) => {
                list.swap_remove(i);
                true
            }
            None => false,
        };
        let Some((first, rest)) = levels.split_first() else {
            return take(&mut node.terminal);
        };
        match first {
            Level::Hash => take(&mut node.hash),
            Level::Plus => {
                let Some(child) = node.plus.as_mut() else {
                    return false;
                };
                let removed = Self::remove_in(child, rest, key);
                if child.is_empty() {
                    node.plus = None;
                }
                removed
            }
            Level::Exact(name) => {
                let Some(child) = node.exact.get_mut(name) else {
                    return false;
                };
                let removed = Self::remove_in(child, rest, key);
                if child.is_empty() {
                    node.exact.remove(name);
                }
                removed
            }
        }
    }

    /// Calls `visit` once per (filter, key) entry whose filter matches `topic`.
    /// A key with two matching filters is visited twice: callers de-duplicate.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&K)) {
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, topic.split('/'), !dollar, &mut visit);
    }

    fn walk<'t>(
        node: &Node<K>,
        mut names: std::str::Split<'t, char>,
        wildcards_ok: bool,
        visit: &mut impl FnMut(&K),
    ) {
        if wildcards_ok {
            node.hash.iter().for_each(&mut *visit);
        }
        match names.next() {
            None => node.terminal.iter().for_each(visit),
            Some(name) => {
                if let Some(child) = node.exact.get(name) {
                    Self::walk(child, names.clone(), true, visit);
                }
                if wildcards_ok {
                    if let Some(child) = &node.plus {
                        Self::walk(child, names, true, visit);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    #[test]
    fn plus_matches_exactly_one_level() {
        assert!(f("devices/+/metrics").matches("devices/d1/metrics"));
        assert!(!f("devices/+/metrics").matches("devices/d1/x/metrics"));
        assert!(!f("devices/+/metrics").matches("devices/metrics"));
        assert!(f("devices/+/metrics").matches("devices//metrics"));
    }

    #[test]
    fn hash_matches_the_parent_and_every_descendant() {
        assert!(f("attackers/#").matches("attackers"));
        assert!(f("attackers/#").matches("attackers/a/observation/dns"));
        assert!(f("#").matches("anything/at/all"));
        assert!(!f("attackers/#").matches("attackerz/a"));
    }

    #[test]
    fn wildcards_at_the_start_do_not_match_dollar_topics() {
        assert!(!f("#").matches("$SYS/broker"));
        assert!(!f("+/broker").matches("$SYS/broker"));
        assert!(f("$SYS/#").matches("$SYS/broker"));
    }

    #[test]
    fn malformed_filters_are_refused() {
        assert_eq!(TopicFilter::parse("a/#/b"), Err(TopicError::HashNotLast));
        assert_eq!(TopicFilter::parse("a/b+"), Err(TopicError::PartialWildcard));
        assert_eq!(TopicFilter::parse("a/#x"), Err(TopicError::PartialWildcard));
        assert_eq!(TopicFilter::parse(""), Err(TopicError::Empty));
        assert_eq!(
            TopicFilter::parse("a\nb"),
            Err(TopicError::ControlCharacter)
        );
        assert_eq!(
            TopicFilter::parse(&"a/".repeat(20)),
            Err(TopicError::TooManyLevels)
        );
        assert_eq!(
            TopicFilter::parse(&"a".repeat(300)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn topic_names_refuse_wildcards_and_control_characters() {
        assert!(validate_topic("devices/d1/metrics").is_ok());
        assert_eq!(
            validate_topic("devices/+/metrics"),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            validate_topic("attackers/x\r\ndata: y"),
            Err(TopicError::ControlCharacter)
        );
    }

    #[test]
    fn index_insert_match_and_remove() {
        let mut index = FilterIndex::default();
        index.insert(&f("devices/+/metrics"), 1u64);
        index.insert(&f("devices/d1/#"), 2);
        index.insert(&f("#"), 3);
        index.insert(&f("devices/d2/metrics"), 4);
        let mut hits = Vec::new();
        index.for_each_match("devices/d1/metrics", |k| hits.push(*k));
        hits.sort();
        assert_eq!(hits, vec![1, 2, 3]);
        assert!(index.remove(&f("devices/+/metrics"), &1));
        assert!(!index.remove(&f("devices/+/metrics"), &1));
        let mut hits = Vec::new();
        index.for_each_match("devices/d1/metrics", |k| hits.push(*k));
        hits.sort();
        assert_eq!(hits, vec![2, 3]);
        assert_eq!(index.len(), 3);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$s".to_string())
        ]
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof![level(), Just("+".to_string())]
    }

    proptest! {
        /// The trie and the direct matcher agree on every filter and topic.
        #[test]
        fn index_agrees_with_direct_matching(
            filters in prop::collection::vec(
                (prop::collection::vec(filter_level(), 1..4), any::<bool>()), 1..6),
            topic in prop::collection::vec(level(), 1..5),
        ) {
            let topic = topic.join("/");
            let mut index = FilterIndex::default();
            let mut parsed = Vec::new();
            for (i, (levels, hash)) in filters.iter().enumerate() {
                let mut text = levels.join("/");
                if *hash { text.push_str("/#"); }
                prop_assume!(!text.is_empty());
                let filter = TopicFilter::parse(&text).unwrap();
                index.insert(&filter, i);
                parsed.push(filter);
            }
            let mut from_index = Vec::new();
            index.for_each_match(&topic, |k| from_index.push(*k));
            from_index.sort();
            let direct: Vec<usize> = parsed.iter().enumerate()
                .filter(|(_, f)| f.matches(&topic)).map(|(i, _)| i).collect();
            prop_assert_eq!(from_index, direct);
        }
    }
}
