//! `[slack]`: the webhook alerts and digests are posted to, and its pacing.

use std::time::Duration;

use serde::Deserialize;

use super::{at_least, de, invalid, Secret, SettingsError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    /// Empty = Slack is off.
    pub webhook_url: Secret,
    #[serde(rename = "summary_interval_seconds", deserialize_with = "de::seconds")]
    pub summary_interval: Duration,
    #[serde(rename = "timeout_seconds", deserialize_with = "de::seconds")]
    pub timeout: Duration,
    /// Alerts waiting; digests and summaries have budgets of their own.
    pub outbox_capacity: usize,
    /// Digests waiting; when full the oldest digest goes, never an alert.
    pub digest_outbox_capacity: usize,
    /// Least time between two requests to the webhook (Slack: ~1/s).
    #[serde(rename = "pace_milliseconds", deserialize_with = "de::milliseconds")]
    pub pace: Duration,
    /// Back-off after a 5xx, timeout or connection error: first delay…
    #[serde(
        rename = "retry_min_milliseconds",
        deserialize_with = "de::milliseconds"
    )]
    pub retry_min: Duration,
    /// …doubling up to this.
    #[serde(
        rename = "retry_max_milliseconds",
        deserialize_with = "de::milliseconds"
    )]
    pub retry_max: Duration,
    /// How long shutdown waits for the outbox to empty.
    #[serde(rename = "shutdown_flush_seconds", deserialize_with = "de::seconds")]
    pub shutdown_flush: Duration,
}

impl SlackSettings {
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let hook = self.webhook_url.expose();
        let is_http = hook.starts_with("https://") || hook.starts_with("http://");
        if !hook.is_empty() && !is_http {
            return Err(invalid(
                "slack.webhook_url",
                "must be an http(s):// URL or empty",
            ));
        }
        at_least(
            "slack.summary_interval_seconds",
            self.summary_interval.as_secs(),
            1,
        )?;
        at_least("slack.timeout_seconds", self.timeout.as_secs(), 1)?;
        at_least("slack.outbox_capacity", self.outbox_capacity as u64, 1)?;
        at_least(
            "slack.digest_outbox_capacity",
            self.digest_outbox_capacity as u64,
            1,
        )?;
        at_least("slack.pace_milliseconds", millis(self.pace), 1)?;
        at_least("slack.retry_min_milliseconds", millis(self.retry_min), 1)?;
        if self.retry_max < self.retry_min {
            return Err(invalid(
                "slack.retry_max_milliseconds",
                "must be at least slack.retry_min_milliseconds",
            ));
        }
        if self.shutdown_flush.as_secs() > 300 {
            return Err(invalid(
                "slack.shutdown_flush_seconds",
                "must be at most 300",
            ));
        }
        Ok(())
    }

    /// The webhook, and whether it is `https://`; `None` when Slack is off.
    pub fn webhook(&self) -> Option<(&str, bool)> {
        let url = self.webhook_url.expose();
        (!url.is_empty()).then(|| (url, url.starts_with("https://")))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
