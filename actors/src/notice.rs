//! What the Alerts actor hands the Slack actor, and the labels Slack's
//! counters carry: plain data, so the metrics can name every label without
//! knowing the Slack actor.

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

/// Why a message never reached Slack: the `reason` label of
/// `edgebus_slack_dropped_total`.
pub const DROP_REASONS: [&str; 4] = ["outbox_full", "overload", "rate_limited", "shutdown"];

/// Why Slack refused a message for good (the Slack actor's retry verdict):
/// the `reason` label of `edgebus_slack_failed_total`.
pub const PERMANENT_REASONS: [&str; 7] = [
    "http_400",
    "http_403",
    "http_404",
    "http_410",
    "http_4xx",
    "redirect",
    "unexpected_status",
];
