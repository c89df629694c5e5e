//! The bounded outbox of the Slack actor, and its drop policy. Alerts and the
//! rest (digests, summaries) have separate budgets, so no digest or summary
//! ever takes an alert's place, however many attackers a publisher invents:
//!
//! - alerts: a FIFO of `alerts` messages; when full, the oldest alert goes
//!   (the newest state of the fleet matters most);
//! - digests: a FIFO of `digests` messages; when full, the oldest digest goes;
//! - summaries: only the newest is kept; it supersedes one still queued.
//!
//! Alerts are sent first, in the order they came; digests and the summary
//! follow in the order they came, whenever no alert waits. Texts are cut to
//! their kind's [`NoticeKind::max_bytes`] on the way in, so the outbox holds
//! at most `alerts × MAX_NOTICE_BYTES + digests × MAX_NOTICE_BYTES +
//! MAX_SUMMARY_BYTES` of text. Every drop is reported to the caller, which
//! counts it. Pure.

use std::collections::VecDeque;

use super::summary::MAX_SUMMARY_CHARS;
use crate::notice::{Notice, NoticeKind};

/// Largest alert or digest text kept. Alert and digest texts are built from
/// bounded parts (a 64-character device id, a rule name, an attacker id cut
/// to 128 characters): a few hundred bytes; the cap makes that a promise.
pub const MAX_NOTICE_BYTES: usize = 2048;

/// Largest summary text kept: [`MAX_SUMMARY_CHARS`] characters of up to 4
/// bytes each.
pub const MAX_SUMMARY_BYTES: usize = 4 * MAX_SUMMARY_CHARS;

impl NoticeKind {
    /// Bytes of text a message of this kind may keep in the outbox.
    pub fn max_bytes(self) -> usize {
        match self {
            NoticeKind::Alert | NoticeKind::Digest => MAX_NOTICE_BYTES,
            NoticeKind::Summary => MAX_SUMMARY_BYTES,
        }
    }
}

/// How many messages of each budget may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// `slack.outbox_capacity`.
    pub alerts: usize,
    /// `slack.digest_outbox_capacity`.
    pub digests: usize,
}

#[derive(Debug)]
pub struct Outbox {
    alerts: VecDeque<Notice>,
    /// Digests and at most one summary, in arrival order.
    rest: VecDeque<Notice>,
    digests: usize,
    limits: OutboxLimits,
}

impl Outbox {
    pub fn new(limits: OutboxLimits) -> Self {
        Self {
            alerts: VecDeque::new(),
            rest: VecDeque::new(),
            digests: 0,
            limits: OutboxLimits {
                alerts: limits.alerts.max(1),
                digests: limits.digests.max(1),
            },
        }
    }

    /// Queues `notice`; returns the kind of the message dropped to make room
    /// (always of the same kind as `notice`).
    pub fn push(&mut self, mut notice: Notice) -> Option<NoticeKind> {
        truncate(&mut notice.text, notice.kind.max_bytes());
        match notice.kind {
            NoticeKind::Alert => {
                let dropped = if self.alerts.len() >= self.limits.alerts {
                    self.alerts.pop_front().map(|n| n.kind)
                } else {
                    None
                };
                self.alerts.push_back(notice);
                dropped
            }
            NoticeKind::Digest => {
                let dropped = if self.digests >= self.limits.digests {
                    self.remove_first(NoticeKind::Digest)
                } else {
                    None
                };
                self.digests += 1;
                self.rest.push_back(notice);
                dropped
            }
            NoticeKind::Summary => {
                let dropped = self.remove_first(NoticeKind::Summary);
                self.rest.push_back(notice);
                dropped
            }
        }
    }

    fn remove_first(&mut self, kind: NoticeKind) -> Option<NoticeKind> {
        let i = self.rest.iter().position(|n| n.kind == kind)?;
        let removed = self.rest.remove(i)?;
        if removed.kind == NoticeKind::Digest {
            self.digests -= 1;
        }
        Some(removed.kind)
    }

    /// The next message to send: the oldest alert, else the oldest of the rest.
    pub fn pop(&mut self) -> Option<Notice> {
        if let Some(alert) = self.alerts.pop_front() {
            return Some(alert);
        }
        let next = self.rest.pop_front()?;
        if next.kind == NoticeKind::Digest {
            self.digests -= 1;
        }
        Some(next)
    }

    /// Empties the outbox (shutdown), returning what was left, in send order.
    pub fn take_all(&mut self) -> Vec<Notice> {
        self.digests = 0;
        self.alerts.drain(..).chain(self.rest.drain(..)).collect()
    }

    pub fn len(&self) -> usize {
        self.alerts.len() + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cuts `notice`'s text to its kind's budget (what any outbox keeps).
pub fn fit(notice: &mut Notice) {
    truncate(&mut notice.text, notice.kind.max_bytes());
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the
/// cut with `…`.
fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let ellipsis = '…';
    let mut end = max.saturating_sub(ellipsis.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push(ellipsis);
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

    fn outbox(alerts: usize, digests: usize) -> Outbox {
        Outbox::new(OutboxLimits { alerts, digests })
    }

    fn texts(o: &mut Outbox) -> Vec<String> {
        o.take_all().into_iter().map(|n| n.text).collect()
    }

    #[test]
    fn under_capacity_everything_is_kept_alerts_first() {
        let mut o = outbox(3, 3);
        assert_eq!(o.push(n(NoticeKind::Summary, "s1")), None);
        assert_eq!(o.push(n(NoticeKind::Alert, "a1")), None);
        assert_eq!(o.push(n(NoticeKind::Digest, "d1")), None);
        assert_eq!(o.push(n(NoticeKind::Alert, "a2")), None);
        assert_eq!(o.len(), 4);
        let order: Vec<String> = std::iter::from_fn(|| o.pop()).map(|n| n.text).collect();
        assert_eq!(order, vec!["a1", "a2", "s1", "d1"]);
        assert!(o.is_empty());
    }

    #[test]
    fn a_flood_of_digests_never_drops_an_alert() {
        let mut o = outbox(1, 2);
        assert_eq!(o.push(n(NoticeKind::Alert, "a1")), None);
        let mut dropped = Vec::new();
        for i in 0..100 {
            dropped.extend(o.push(n(NoticeKind::Digest, &format!("d{i}"))));
        }
        assert_eq!(dropped, vec![NoticeKind::Digest; 98]);
        assert_eq!(texts(&mut o), vec!["a1", "d98", "d99"]);
    }

    #[test]
    fn a_newer_summary_supersedes_a_queued_one() {
        let mut o = outbox(2, 2);
        o.push(n(NoticeKind::Digest, "d1"));
        assert_eq!(o.push(n(NoticeKind::Summary, "s1")), None);
        o.push(n(NoticeKind::Digest, "d2"));
        assert_eq!(
            o.push(n(NoticeKind::Summary, "s2")),
            Some(NoticeKind::Summary)
        );
        assert_eq!(o.push(n(NoticeKind::Alert, "a1")), None);
        assert_eq!(o.push(n(NoticeKind::Alert, "a2")), None);
        assert_eq!(texts(&mut o), vec!["a1", "a2", "d1", "d2", "s2"]);
    }

    #[test]
    fn a_full_alert_budget_drops_the_oldest_alert_only() {
        let mut o = outbox(2, 1);
        o.push(n(NoticeKind::Alert, "a1"));
        o.push(n(NoticeKind::Digest, "d1"));
        o.push(n(NoticeKind::Summary, "s1"));
        assert_eq!(o.push(n(NoticeKind::Alert, "a2")), None);
        assert_eq!(o.push(n(NoticeKind::Alert, "a3")), Some(NoticeKind::Alert));
        assert_eq!(texts(&mut o), vec!["a2", "a3", "d1", "s1"]);
    }

    #[test]
    fn the_digest_budget_is_freed_as_digests_leave() {
        let mut o = outbox(1, 2);
        o.push(n(NoticeKind::Digest, "d1"));
        o.push(n(NoticeKind::Digest, "d2"));
        assert_eq!(o.pop().map(|n| n.text), Some("d1".into()));
        assert_eq!(o.push(n(NoticeKind::Digest, "d3")), None);
        assert_eq!(
            o.push(n(NoticeKind::Digest, "d4")),
            Some(NoticeKind::Digest)
        );
        assert_eq!(texts(&mut o), vec!["d3", "d4"]);
        assert_eq!(
            o.push(n(NoticeKind::Digest, "d5")),
            None,
            "take_all freed it"
        );
    }

    #[test]
    fn texts_are_cut_to_their_kind_s_budget_on_a_character_boundary() {
        let mut o = outbox(1, 1);
        o.push(n(NoticeKind::Alert, &"é".repeat(MAX_NOTICE_BYTES)));
        o.push(n(NoticeKind::Summary, &"x".repeat(MAX_SUMMARY_BYTES + 10)));
        let alert = o.pop().unwrap().text;
        assert!(alert.len() <= MAX_NOTICE_BYTES, "{}", alert.len());
        assert!(alert.len() > MAX_NOTICE_BYTES - 8);
        assert!(alert.ends_with('…'));
        assert_eq!(o.pop().unwrap().text.len(), MAX_SUMMARY_BYTES);
        let mut short = String::from("ok");
        truncate(&mut short, MAX_NOTICE_BYTES);
        assert_eq!(short, "ok");
    }
}
