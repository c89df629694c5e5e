//! Last value per topic, for snapshots, bounded: past the cap the topic
//! updated longest ago is forgotten first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::event::Event;

pub struct LastValues {
    by_topic: HashMap<Arc<str>, Arc<Event>>,
    /// seq of each topic's last event → topic, oldest first.
    by_age: BTreeMap<u64, Arc<str>>,
    cap: usize,
}

impl LastValues {
    pub fn new(cap: usize) -> Self {
        Self {
            by_topic: HashMap::new(),
            by_age: BTreeMap::new(),
            cap: cap.max(1),
        }
    }

    pub fn insert(&mut self, event: &Arc<Event>) {
        if let Some(old) = self.by_topic.insert(event.topic.clone(), event.clone()) {
            self.by_age.remove(&old.id.seq);
        }
        self.by_age.insert(event.id.seq, event.topic.clone());
        if self.by_topic.len() > self.cap {
            if let Some((_, topic)) = self.by_age.pop_first() {
                self.by_topic.remove(&topic);
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.by_topic.values()
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, Draft, EventId};

    fn event(topic: &str, seq: u64) -> Arc<Event> {
        let draft = Draft::new(topic, 0, Body::Object(Default::default()));
        Arc::new(Event::from_draft(EventId { epoch: 1, seq }, draft))
    }

    #[test]
    fn keeps_only_the_newest_per_topic() {
        let mut lv = LastValues::new(10);
        lv.insert(&event("a", 1));
        lv.insert(&event("a", 2));
        lv.insert(&event("b", 3));
        assert_eq!(lv.len(), 2);
        let mut seqs: Vec<u64> = lv.iter().map(|e| e.id.seq).collect();
        seqs.sort();
        assert_eq!(seqs, vec![2, 3]);
    }

    #[test]
    fn past_the_cap_the_stalest_topic_goes_first() {
        let mut lv = LastValues::new(2);
        lv.insert(&event("a", 1));
        lv.insert(&event("b", 2));
        lv.insert(&event("a", 3));
        lv.insert(&event("c", 4));
        let mut topics: Vec<String> = lv.iter().map(|e| e.topic.to_string()).collect();
        topics.sort();
        assert_eq!(topics, vec!["a", "c"]);
    }
}
