//! Last value per topic, for snapshots, in a trie keyed by topic levels: a
//! snapshot walks only the branches its filter names, so `devices/d1/metrics`
//! costs three steps however many topics are stored, and a wide filter stops
//! at its [`Budget`]. Bounded by count and by bytes: past either cap the
//! topic updated longest ago is forgotten first.

use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;
use std::sync::Arc;

use crate::event::{block_bytes, Event, EventId};
use crate::topic::FilterLevel;

pub struct LastValues {
    root: Node,
    /// seq of each topic's last event → topic, oldest first.
    by_age: BTreeMap<EventId, Arc<str>>,
    len: usize,
    bytes: usize,
    cap: usize,
    cap_bytes: usize,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    value: Option<Arc<Event>>,
}

/// A `by_age` entry: a B-tree slot (`EventId` + `Arc<str>`) in nodes that may be
/// half empty, with the node's own pointers, rounded up.
const AGE_ENTRY_BYTES: usize = 2 * (size_of::<EventId>() + size_of::<Arc<str>>()) + 16;

/// One trie level besides its name: the map slot (key + node) at a load
/// factor down to ~45 % after growth, and its control byte.
const LEVEL_BYTES: usize = 2 * (size_of::<Box<str>>() + size_of::<Node>()) + 8;

/// What keeping `event` as a last value costs, estimated from above: the
/// event itself, its age entry, and one trie level per topic level with its
/// name's block, as if no level were shared with another topic.
pub fn entry_bytes(event: &Event) -> usize {
    let levels: usize = event
        .topic
        .split('/')
        .map(|name| LEVEL_BYTES + block_bytes(name.len()))
        .sum();
    event.heap_bytes() + AGE_ENTRY_BYTES + levels
}

/// How much one walk may do: nodes visited and events returned. A walk that
/// runs out stops and says so, so no filter (`#` over 100,000 topics) can
/// hold the bus for long.
#[derive(Debug)]
pub struct Budget {
    visits_left: usize,
    events_left: usize,
    truncated: bool,
}

/// Nodes a walk may visit per event it may return: a filter like
/// `devices/+/metrics` visits about two nodes per matching topic; the slack
/// covers branches that hold nothing that matches.
pub const VISITS_PER_EVENT: usize = 4;

impl Budget {
    pub fn new(max_events: usize) -> Self {
        Self {
            visits_left: max_events
                .saturating_mul(VISITS_PER_EVENT)
                .saturating_add(64),
            events_left: max_events,
            truncated: false,
        }
    }

    /// Whether the walk stopped before it saw everything.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    fn step(&mut self) -> bool {
        if self.visits_left == 0 {
            self.truncated = true;
            return false;
        }
        self.visits_left -= 1;
        true
    }

    fn take(&mut self) -> bool {
        if self.events_left == 0 {
            self.truncated = true;
            return false;
        }
        self.events_left -= 1;
        true
    }

    fn spent(&self) -> bool {
        self.truncated
    }
}

impl LastValues {
    pub fn new(cap: usize, cap_bytes: usize) -> Self {
        Self {
            root: Node::default(),
            by_age: BTreeMap::new(),
            len: 0,
            bytes: 0,
            cap: cap.max(1),
            cap_bytes,
        }
    }

    pub fn insert(&mut self, event: &Arc<Event>) {
        let mut node = &mut self.root;
        for name in event.topic.split('/') {
            node = node.children.entry(name.into()).or_default();
        }
        match node.value.replace(event.clone()) {
            Some(old) => {
                self.by_age.remove(&old.id);
                self.bytes -= entry_bytes(&old);
            }
            None => self.len += 1,
        }
        self.by_age.insert(event.id, event.topic.clone());
        self.bytes += entry_bytes(event);
        while self.len > self.cap || self.bytes > self.cap_bytes {
            let Some((_, topic)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(old) = take(&mut self.root, topic.split('/')) {
                self.len -= 1;
                self.bytes -= entry_bytes(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Sum of [`entry_bytes`] over what is kept; never above the byte cap.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends to `out` every kept event whose topic the filter `levels`
    /// matches (MQTT rules, `$` topics included) and that `keep` accepts,
    /// within `budget`.
    pub fn collect(
        &self,
        levels: &[FilterLevel<'_>],
        budget: &mut Budget,
        keep: &mut dyn FnMut(&Event) -> bool,
        out: &mut Vec<Arc<Event>>,
    ) {
        walk(&self.root, levels, true, budget, keep, out);
    }
}

/// Removes the value at the topic `names` lead to, and every node left empty.
fn take(node: &mut Node, mut names: std::str::Split<'_, char>) -> Option<Arc<Event>> {
    match names.next() {
        None => node.value.take(),
        Some(name) => {
            let child = node.children.get_mut(name)?;
            let taken = take(child, names);
            if child.value.is_none() && child.children.is_empty() {
                node.children.remove(name);
            }
            taken
        }
    }
}

fn offer(
    node: &Node,
    budget: &mut Budget,
    keep: &mut dyn FnMut(&Event) -> bool,
    out: &mut Vec<Arc<Event>>,
) {
    if let Some(event) = &node.value {
        if keep(event) && budget.take() {
            out.push(event.clone());
        }
    }
}

/// A filter that starts with a wildcard never matches a `$` topic.
fn hidden(at_root: bool, name: &str) -> bool {
    at_root && name.starts_with('$')
}

fn walk(
    node: &Node,
    levels: &[FilterLevel<'_>],
    at_root: bool,
    budget: &mut Budget,
    keep: &mut dyn FnMut(&Event) -> bool,
    out: &mut Vec<Arc<Event>>,
) {
    if budget.spent() {
        return;
    }
    let Some((first, rest)) = levels.split_first() else {
        offer(node, budget, keep, out);
        return;
    };
    match first {
        FilterLevel::Exact(name) => {
            if let Some(child) = node.children.get(*name) {
                if budget.step() {
                    walk(child, rest, false, budget, keep, out);
                }
            }
        }
        FilterLevel::Plus => {
            for (name, child) in &node.children {
                if hidden(at_root, name) {
                    continue;
                }
                if !budget.step() {
                    return;
                }
                walk(child, rest, false, budget, keep, out);
            }
        }
        // `a/#` matches `a` itself and everything below it.
        FilterLevel::Hash => subtree(node, at_root, budget, keep, out),
    }
}

fn subtree(
    node: &Node,
    at_root: bool,
    budget: &mut Budget,
    keep: &mut dyn FnMut(&Event) -> bool,
    out: &mut Vec<Arc<Event>>,
) {
    offer(node, budget, keep, out);
    for (name, child) in &node.children {
        if hidden(at_root, name) {
            continue;
        }
        if budget.spent() || !budget.step() {
            return;
        }
        subtree(child, false, budget, keep, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, Draft, EventId};
    use crate::topic::TopicFilter;

    fn event(topic: &str, seq: u64) -> Arc<Event> {
        let draft = Draft::new(topic, 0, Body::Object(Default::default()));
        Arc::new(Event::from_draft(EventId { epoch: 1, seq }, draft))
    }

    fn topics(lv: &LastValues, filter: &str, max: usize) -> (Vec<String>, Budget) {
        let filter = TopicFilter::parse(filter).unwrap();
        let levels: Vec<FilterLevel> = filter.levels().collect();
        let mut budget = Budget::new(max);
        let mut out = Vec::new();
        lv.collect(&levels, &mut budget, &mut |_| true, &mut out);
        let mut topics: Vec<String> = out.iter().map(|e| e.topic.to_string()).collect();
        topics.sort();
        (topics, budget)
    }

    fn all(lv: &LastValues) -> Vec<String> {
        topics(lv, "#", usize::MAX / 8).0
    }

    #[test]
    fn keeps_only_the_newest_per_topic() {
        let mut lv = LastValues::new(10, usize::MAX);
        lv.insert(&event("a", 1));
        lv.insert(&event("a", 2));
        lv.insert(&event("b", 3));
        assert_eq!(lv.len(), 2);
        let filter = TopicFilter::parse("#").unwrap();
        let levels: Vec<FilterLevel> = filter.levels().collect();
        let mut out = Vec::new();
        lv.collect(&levels, &mut Budget::new(10), &mut |_| true, &mut out);
        let mut seqs: Vec<u64> = out.iter().map(|e| e.id.seq).collect();
        seqs.sort();
        assert_eq!(seqs, vec![2, 3]);
    }

    #[test]
    fn past_the_cap_the_stalest_topic_goes_first() {
        let mut lv = LastValues::new(2, usize::MAX);
        lv.insert(&event("a", 1));
        lv.insert(&event("b", 2));
        lv.insert(&event("a", 3));
        lv.insert(&event("c", 4));
        assert_eq!(all(&lv), vec!["a", "c"]);
    }

    #[test]
    fn past_the_byte_cap_the_stalest_topic_goes_first() {
        let one = entry_bytes(&event("t/1", 1));
        let mut lv = LastValues::new(100, 2 * one + one / 2);
        for seq in 1..=5 {
            lv.insert(&event(&format!("t/{seq}"), seq));
            assert!(lv.bytes() <= 2 * one + one / 2);
        }
        assert_eq!(all(&lv), vec!["t/4", "t/5"]);
        assert_eq!(lv.len(), 2);
    }

    #[test]
    fn forgetting_a_topic_prunes_its_branch() {
        let mut lv = LastValues::new(1, usize::MAX);
        lv.insert(&event("a/b/c", 1));
        lv.insert(&event("x", 2));
        assert!(!lv.root.children.contains_key("a"));
        assert_eq!(all(&lv), vec!["x"]);
    }

    #[test]
    fn the_walk_follows_mqtt_matching() {
        let mut lv = LastValues::new(100, usize::MAX);
        for (i, t) in ["a", "a/b", "a/b/c", "a/x/c", "b/b/c", "$SYS/b/c", "/b"]
            .iter()
            .enumerate()
        {
            lv.insert(&event(t, i as u64 + 1));
        }
        let m = |f: &str| topics(&lv, f, 100).0;
        assert_eq!(m("a/#"), vec!["a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(m("+/b/c"), vec!["a/b/c", "b/b/c"]);
        assert_eq!(m("a/+/c"), vec!["a/b/c", "a/x/c"]);
        assert_eq!(m("+"), vec!["a"]);
        assert_eq!(m("+/b"), vec!["/b", "a/b"]);
        assert_eq!(m("$SYS/#"), vec!["$SYS/b/c"]);
        assert!(!m("#").contains(&"$SYS/b/c".to_string()));
        assert_eq!(m("a/b/c"), vec!["a/b/c"]);
        assert!(m("a/b/c/d").is_empty());
    }

    #[test]
    fn a_narrow_filter_visits_only_its_branch() {
        let mut lv = LastValues::new(100_000, usize::MAX);
        for d in 0..20_000u64 {
            lv.insert(&event(&format!("devices/d{d}/metrics"), d + 1));
        }
        let filter = TopicFilter::parse("devices/d7/metrics").unwrap();
        let levels: Vec<FilterLevel> = filter.levels().collect();
        // A budget of one event allows 68 visits: the whole walk fits.
        let mut budget = Budget::new(1);
        let mut out = Vec::new();
        lv.collect(&levels, &mut budget, &mut |_| true, &mut out);
        assert_eq!(out.len(), 1);
        assert!(!budget.truncated());
        assert!(
            budget.visits_left >= 64,
            "visited {}",
            68 - budget.visits_left
        );
    }

    #[test]
    fn a_wide_filter_stops_at_its_budget_and_says_so() {
        let mut lv = LastValues::new(100_000, usize::MAX);
        for d in 0..20_000u64 {
            lv.insert(&event(&format!("attackers/a{d}/scored"), d + 1));
        }
        let (got, budget) = topics(&lv, "#", 100);
        assert_eq!(got.len(), 100);
        assert!(budget.truncated());
        // Nothing that matches: the visit budget stops the walk.
        let (got, budget) = topics(&lv, "+/+/nothing", 100);
        assert!(got.is_empty());
        assert!(budget.truncated());
        let (got, budget) = topics(&lv, "attackers/a5/#", 100);
        assert_eq!(got, vec!["attackers/a5/scored"]);
        assert!(!budget.truncated());
    }
}
