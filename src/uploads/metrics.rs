//! What `/metrics` says of uploads: answers by status word, bytes stored as
//! the quota counts them, and uploads being received.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// Every status word an upload event carries, so each series exists from
/// the start.
pub const STATUSES: [&str; 13] = [
    "stored",
    "already-present",
    "conflict",
    "sha-mismatch",
    "bad-request",
    "too-large",
    "missing-commit",
    "bad-commit",
    "stale-commit",
    "busy",
    "timeout",
    "full",
    "error",
];

#[derive(Debug, Clone)]
pub struct UploadMetrics {
    answers: IntCounterVec,
    pub stored_bytes: IntGauge,
    pub receiving: IntGauge,
}

impl UploadMetrics {
    /// Registers the series in `registry` (a registry that has them already,
    /// as a second instance in one test process, keeps the first ones).
    pub fn register(registry: &Registry) -> Self {
        let metrics = Self {
            answers: IntCounterVec::new(
                Opts::new(
                    "edgebus_uploads_total",
                    "Upload answers, by the status word of their event",
                ),
                &["status"],
            )
            .expect("static metric definition is valid"),
            stored_bytes: IntGauge::new(
                "edgebus_uploads_stored_bytes",
                "Bytes stored as uploads.max_total_bytes counts them",
            )
            .expect("static metric definition is valid"),
            receiving: IntGauge::new("edgebus_uploads_receiving", "Uploads being received now")
                .expect("static metric definition is valid"),
        };
        for status in STATUSES {
            metrics.answers.with_label_values(&[status]);
        }
        let _ = registry.register(Box::new(metrics.answers.clone()));
        let _ = registry.register(Box::new(metrics.stored_bytes.clone()));
        let _ = registry.register(Box::new(metrics.receiving.clone()));
        metrics
    }

    pub fn answered(&self, status: &str) {
        self.answers.with_label_values(&[status]).inc();
    }
}
