//! The bounded outbox of the Slack actor, and its drop policy: when full, the
//! oldest *summary* goes first (a newer one will follow); only when no
//! summary is left does the oldest alert go. Every drop is reported to the
//! caller, which counts it. Pure.

use std::collections::VecDeque;

/// What a message is, for the drop policy and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// A rule or fleet-health alert, or its resolution.
    Alert,
    /// A per-attacker security roll-up.
    Digest,
    /// The periodic fleet summary: superseded by the next one.
    Summary,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 3] = [NoticeKind::Alert, NoticeKind::Digest, NoticeKind::Summary];

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Alert => "alert",
            NoticeKind::Digest => "digest",
            NoticeKind::Summary => "summary",
        }
    }
}

/// One Slack message. `text` is raw: the Slack actor escapes it when it
/// builds the request, so no caller can forget to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    pub text: String,
}

impl Notice {
    pub fn alert(text: impl Into<String>) -> Self {
        Self {
            kind: NoticeKind::Alert,
            text: text.into(),
        }
    }
}

#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<Notice>,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `notice`; returns the kind of the message dropped to make room.
    pub fn push(&mut self, notice: Notice) -> Option<NoticeKind> {
        if self.queue.len() < self.capacity {
            self.queue.push_back(notice);
            return None;
        }
        let dropped = if let Some(i) = self
            .queue
            .iter()
            .position(|n| n.kind == NoticeKind::Summary)
        {
            self.queue.remove(i).map(|n| n.kind)
        } else if notice.kind == NoticeKind::Summary {
            // Only alerts are queued: the summary itself is the one to go.
            return Some(NoticeKind::Summary);
        } else {
            self.queue.pop_front().map(|n| n.kind)
        };
        self.queue.push_back(notice);
        dropped
    }

    pub fn pop(&mut self) -> Option<Notice> {
        self.queue.pop_front()
    }

    /// Empties the outbox (shutdown), returning what was left.
    pub fn take_all(&mut self) -> Vec<Notice> {
        self.queue.drain(..).collect()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(kind: NoticeKind, text: &str) -> Notice {
        Notice {
            kind,
            text: text.into(),
        }
    }

    fn texts(o: &mut Outbox) -> Vec<String> {
        o.take_all().into_iter().map(|n| n.text).collect()
    }

    #[test]
    fn under_capacity_everything_is_kept_in_order() {
        let mut o = Outbox::new(3);
        assert_eq!(o.push(n(NoticeKind::Alert, "a1")), None);
        assert_eq!(o.push(n(NoticeKind::Summary, "s1")), None);
        assert_eq!(o.push(n(NoticeKind::Digest, "d1")), None);
        assert_eq!(o.pop().unwrap().text, "a1");
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_summary_before_any_alert() {
        let mut o = Outbox::new(4);
        for (k, t) in [
            (NoticeKind::Alert, "a1"),
            (NoticeKind::Summary, "s1"),
            (NoticeKind::Alert, "a2"),
            (NoticeKind::Summary, "s2"),
        ] {
            o.push(n(k, t));
        }
        assert_eq!(
            o.push(n(NoticeKind::Alert, "a3")),
            Some(NoticeKind::Summary)
        );
        assert_eq!(
            o.push(n(NoticeKind::Alert, "a4")),
            Some(NoticeKind::Summary)
        );
        assert_eq!(texts(&mut o), vec!["a1", "a2", "a3", "a4"]);
    }

    #[test]
    fn a_summary_meeting_a_full_outbox_of_alerts_is_the_one_dropped() {
        let mut o = Outbox::new(2);
        o.push(n(NoticeKind::Alert, "a1"));
        o.push(n(NoticeKind::Alert, "a2"));
        assert_eq!(
            o.push(n(NoticeKind::Summary, "s1")),
            Some(NoticeKind::Summary)
        );
        assert_eq!(texts(&mut o), vec!["a1", "a2"]);
    }

    #[test]
    fn with_only_alerts_left_the_oldest_alert_goes() {
        let mut o = Outbox::new(2);
        o.push(n(NoticeKind::Alert, "a1"));
        o.push(n(NoticeKind::Digest, "d1"));
        assert_eq!(o.push(n(NoticeKind::Alert, "a2")), Some(NoticeKind::Alert));
        assert_eq!(o.push(n(NoticeKind::Alert, "a3")), Some(NoticeKind::Digest));
        assert_eq!(texts(&mut o), vec!["a2", "a3"]);
        assert!(o.is_empty());
    }
}
