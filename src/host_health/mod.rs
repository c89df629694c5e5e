//! Host-health reports: each host's latest report with the time edgebus
//! received it, in one of two stores behind one interface
//! ([`HostHealthStore`]):
//! - [`files`]: one JSON file per host under `storage.data_dir`, for a
//!   single instance;
//! - [`redis`]: one Redis hash, `{cluster.key_prefix}:host-health`, in
//!   cluster mode, so every instance stores into and lists the same reports.
//!
//! Bounded in every direction a client controls, whichever the store:
//! - at most `host_health.max_hosts` hosts: a new host beyond it is refused,
//!   a known host can always replace its report;
//! - a report is at most [`MAX_REPORT_BYTES`] and is stored as the bytes the
//!   host sent (validated, never re-rendered, never pretty-printed) inside a
//!   one-line envelope of at most [`MAX_RECORD_BYTES`];
//! - a listing ([`Listing`]) is produced piece by piece as the response
//!   drains, so one `GET` holds a few reports in memory whatever the number
//!   of hosts, and at most `host_health.max_concurrent_lists` listings, one
//!   per caller, are sent at once by each instance;
//! - a listing is sent in one of two [`Shape`]s, each record turned into
//!   its shape as it is read, so the bounds above hold for both.

pub mod files;
pub mod redis;

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use actix_web::web::{self, Bytes};
use futures_util::stream::{self, LocalBoxStream, StreamExt};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use edgebus_actors::alerts::clock::rfc3339;
use edgebus_actors::frame::{parse_object, DeviceId, Rejection};

pub use self::files::FileStore;
pub use self::redis::RedisStore;

/// What a client told the store is unavailable waits before trying again:
/// long enough for a reconnect, short enough for a host's next report.
pub const RETRY_AFTER_SECS: u64 = 2;

/// Largest report body accepted. A doctor report is a few KiB; this leaves
/// ample room.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// Room for the envelope around a report:
/// `{"host_id":"<64>","received_at":"<20>","received_at_ms":<20>,"report":…}`
/// takes under 160 bytes.
pub const RECORD_OVERHEAD: usize = 256;

/// Largest file a listing reads; a larger one (not written by this version)
/// is skipped rather than read.
pub const MAX_RECORD_BYTES: usize = MAX_REPORT_BYTES + RECORD_OVERHEAD;

#[derive(Debug, thiserror::Error)]
pub enum HostHealthError {
    #[error("host id must match ^[A-Za-z0-9._-]{{1,64}}$ and not start with a dot")]
    BadHost,
    #[error("report of {0} bytes is over the {MAX_REPORT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("report must be a JSON object: {0}")]
    BadBody(String),
    #[error(
        "host-health is full: reports from {0} hosts are stored (host_health.max_hosts); \
         a new host is refused, a known host can still update its report"
    )]
    Full(usize),
    #[error(
        "{0} host-health listings are already being sent (host_health.max_concurrent_lists); \
         retry shortly"
    )]
    Busy(usize),
    #[error(
        "a host-health listing for this caller is already being sent; read it to the end first"
    )]
    AlreadyListing,
    #[error("unknown format {0:?}: use format=cis490, or no format for edgebus's own shape")]
    BadFormat(String),
    #[error("storage: {0}")]
    Io(#[from] io::Error),
    /// Redis did not answer in time, or refused for now (loading, down):
    /// the cause is logged where it happened, the client is told to retry.
    #[error("the host-health store (Redis) is unavailable; retry in {RETRY_AFTER_SECS} seconds")]
    Unavailable,
    /// Redis answered with an error that waiting will not cure (a wrong
    /// type at the key, a script error).
    #[error("Redis: {0}")]
    Redis(String),
    /// The blocking pool is gone (shutdown).
    #[error("blocking pool: {0}")]
    Pool(String),
}

impl From<crate::redis_link::StoreError> for HostHealthError {
    fn from(e: crate::redis_link::StoreError) -> Self {
        match e {
            crate::redis_link::StoreError::Unavailable => Self::Unavailable,
            crate::redis_link::StoreError::Redis(cause) => Self::Redis(cause),
        }
    }
}

/// Where a listing's body is, whichever store it reads: `{"hosts":[` is
/// next (`Head`), then the first record (no comma before it), the rest,
/// and `]}` once (`Done`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Head,
    First,
    Rest,
    Done,
}

/// How a listing shows each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// As stored: `{"host_id","received_at","received_at_ms","report"}`.
    #[default]
    Edgebus,
    /// The CIS490 receiver's: `{"host_id","received_at_wall","doctor"}`,
    /// the time in UTC to the second, so its fleet tools read edgebus's
    /// listing unchanged.
    Cis490,
}

impl Shape {
    /// `?format=` of a listing: absent is edgebus's own shape.
    pub fn from_format(format: Option<&str>) -> Result<Self, HostHealthError> {
        match format {
            None => Ok(Self::Edgebus),
            Some("cis490") => Ok(Self::Cis490),
            Some(other) => Err(HostHealthError::BadFormat(other.chars().take(32).collect())),
        }
    }

    /// Appends `record` (a stored record, at most [`MAX_RECORD_BYTES`]) in
    /// this shape to `out`; on an error (a record this version never writes)
    /// `out` is unchanged and the error says what is wrong.
    fn render(self, record: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if record.len() > MAX_RECORD_BYTES {
            return Err(format!(
                "over {MAX_RECORD_BYTES} bytes; listed again once the host reports"
            ));
        }
        match self {
            // Validated without building a tree: memory stays one record.
            Self::Edgebus => {
                serde_json::from_slice::<IgnoredAny>(record).map_err(|e| e.to_string())?;
                out.extend_from_slice(record);
            }
            Self::Cis490 => {
                let stored: Stored<'_> =
                    serde_json::from_slice(record).map_err(|e| e.to_string())?;
                let host = validate_host(&stored.host_id).map_err(|e| e.to_string())?;
                // Whole seconds, as the receiver's `time.strftime` wrote them.
                let wall = rfc3339(stored.received_at_ms / 1000 * 1000);
                out.extend_from_slice(
                    format!(r#"{{"host_id":"{host}","received_at_wall":"{wall}","doctor":"#)
                        .as_bytes(),
                );
                out.extend_from_slice(stored.report.get().as_bytes());
                out.push(b'}');
            }
        }
        Ok(())
    }
}

/// The fields of a stored record a [`Shape::Cis490`] listing reads; the
/// report is kept as the bytes stored, never parsed into a tree.
#[derive(Deserialize)]
struct Stored<'a> {
    #[serde(borrow)]
    host_id: std::borrow::Cow<'a, str>,
    received_at_ms: u64,
    #[serde(borrow)]
    report: &'a RawValue,
}

/// A host id: the device id rule, and no leading dot (those names are ours).
pub fn validate_host(host: &str) -> Result<DeviceId, HostHealthError> {
    if host.starts_with('.') {
        return Err(HostHealthError::BadHost);
    }
    DeviceId::parse(host).map_err(|_| HostHealthError::BadHost)
}

/// A report body: one JSON object, no duplicate keys, within the size cap.
/// Returns the body itself, trimmed: what is stored. (The parse only
/// validates; its tree is dropped at once.)
pub fn parse_report(body: &[u8]) -> Result<&[u8], HostHealthError> {
    parse_object(body, MAX_REPORT_BYTES).map_err(|e| match e {
        Rejection::TooLarge(n) => HostHealthError::TooLarge(n),
        other => HostHealthError::BadBody(other.to_string()),
    })?;
    Ok(body.trim_ascii())
}

/// What is stored: `{"host_id","received_at","received_at_ms","report"}` on
/// one line, `report` being the validated body as sent. A host id needs no
/// JSON escaping (`[A-Za-z0-9._-]`), nor does an RFC 3339 time.
pub fn record(host: &DeviceId, report: &[u8], received_ms: u64) -> Vec<u8> {
    let head = format!(
        r#"{{"host_id":"{host}","received_at":"{}","received_at_ms":{received_ms},"report":"#,
        rfc3339(received_ms)
    );
    let mut record = Vec::with_capacity(head.len() + report.len() + 1);
    record.extend_from_slice(head.as_bytes());
    record.extend_from_slice(report);
    record.push(b'}');
    record
}

/// `host_health.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostHealthLimits {
    pub max_hosts: usize,
    pub max_concurrent_lists: usize,
}

/// Listings being sent, by owner (an API key, or the address of a caller
/// sharing an identity): one each, so a caller that opens listings and stops
/// reading holds one place, not all of them.
#[derive(Debug)]
pub(crate) struct ListSlots {
    max: usize,
    owners: Mutex<HashSet<Arc<str>>>,
}

/// One place among the listings being sent; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct ListSlot {
    slots: Arc<ListSlots>,
    owner: Arc<str>,
}

impl ListSlots {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            owners: Mutex::new(HashSet::new()),
        }
    }

    /// A place for `owner`; refused while that owner has one, or while
    /// `max` listings are being sent.
    pub(crate) fn take(self: &Arc<Self>, owner: Arc<str>) -> Result<ListSlot, HostHealthError> {
        // The set stays consistent whatever panicked while holding it.
        let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        if owners.contains(&owner) {
            return Err(HostHealthError::AlreadyListing);
        }
        if owners.len() >= self.max {
            return Err(HostHealthError::Busy(self.max));
        }
        owners.insert(owner.clone());
        Ok(ListSlot {
            slots: self.clone(),
            owner,
        })
    }
}

impl Drop for ListSlot {
    fn drop(&mut self) {
        let mut owners = self
            .slots
            .owners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        owners.remove(&self.owner);
    }
}

/// Where reports are kept: files for one instance, Redis for a cluster.
#[derive(Debug)]
pub enum HostHealthStore {
    Files(Arc<FileStore>),
    Redis(RedisStore),
}

impl HostHealthStore {
    /// Stores `record` as the latest report of `host`; refuses a new host
    /// once `max_hosts` hosts are stored. File I/O runs on the blocking pool.
    pub async fn put(&self, host: &DeviceId, record: Vec<u8>) -> Result<(), HostHealthError> {
        match self {
            Self::Files(store) => {
                let (store, host) = (store.clone(), host.clone());
                web::block(move || store.put(&host, &record))
                    .await
                    .map_err(|e| HostHealthError::Pool(e.to_string()))?
            }
            Self::Redis(store) => store.put(host, &record).await,
        }
    }

    /// Starts a listing of every stored report in `shape`, sorted by host
    /// id, for `owner` (see [`ListSlots::take`] for when it is refused).
    pub async fn list(&self, owner: Arc<str>, shape: Shape) -> Result<Listing, HostHealthError> {
        match self {
            Self::Files(store) => store.list(owner, shape).map(Listing::Files),
            Self::Redis(store) => store.list(owner, shape).await.map(Listing::Redis),
        }
    }
}

/// One `GET /v1/host-health` body, `{"hosts":[record,…]}`, from either store.
#[derive(Debug)]
pub enum Listing {
    Files(files::Listing),
    Redis(redis::Listing),
}

impl Listing {
    /// The body as a stream, each piece made only when the response asks
    /// for it. An error ends the stream after it: the client sees a broken
    /// response rather than a partial list.
    pub fn into_body(self) -> LocalBoxStream<'static, Result<Bytes, HostHealthError>> {
        match self {
            Self::Files(listing) => stream::unfold(Some(listing), |listing| async move {
                let mut listing = listing?;
                match web::block(move || (listing.next_piece(), listing)).await {
                    Ok((Some(piece), listing)) => Some((Ok(Bytes::from(piece)), Some(listing))),
                    Ok((None, _)) => None,
                    Err(e) => Some((Err(HostHealthError::Pool(e.to_string())), None)),
                }
            })
            .boxed_local(),
            Self::Redis(listing) => stream::unfold(Some(listing), |listing| async move {
                let mut listing = listing?;
                match listing.next_piece().await {
                    Ok(Some(piece)) => Some((Ok(Bytes::from(piece)), Some(listing))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            })
            .boxed_local(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn host_ids_follow_the_device_rule_without_a_leading_dot() {
        assert!(validate_host("lab-host_01.example").is_ok());
        for bad in [
            "",
            ".hidden",
            "..",
            "../etc",
            "a/b",
            "a b",
            "x\0",
            &"h".repeat(65),
        ] {
            assert!(validate_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_a_json_object_within_the_cap_is_a_report() {
        assert_eq!(
            parse_report(b" {\"disk\":\"ok\",\"checks\":[1,2]}\n").unwrap(),
            br#"{"disk":"ok","checks":[1,2]}"#
        );
        for bad in [
            &b"[1,2]"[..],
            b"\"x\"",
            b"{",
            b"",
            br#"{"a":1,"a":2}"#,
            b"\xff",
        ] {
            assert!(
                matches!(parse_report(bad), Err(HostHealthError::BadBody(_))),
                "{bad:?}"
            );
        }
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_REPORT_BYTES));
        assert!(matches!(
            parse_report(big.as_bytes()),
            Err(HostHealthError::TooLarge(_))
        ));
    }

    fn rendered(shape: Shape, record: &[u8]) -> Result<Value, String> {
        let mut out = b"[".to_vec();
        shape.render(record, &mut out)?;
        assert_ne!(out.len(), 1, "something was written");
        out.push(b']');
        Ok(serde_json::from_slice::<Value>(&out).unwrap()[0].take())
    }

    #[test]
    fn only_a_json_record_within_the_cap_is_listed_in_either_shape() {
        let host = validate_host("lab-01").unwrap();
        let stored = record(&host, br#"{"disk":"ok"}"#, 1_777_747_711_999);
        assert_eq!(
            rendered(Shape::Edgebus, &stored).unwrap(),
            serde_json::from_slice::<Value>(&stored).unwrap()
        );
        assert_eq!(
            rendered(Shape::Cis490, &stored).unwrap(),
            serde_json::json!({"host_id": "lab-01", "received_at_wall": "2026-05-02T18:48:31Z",
                               "doctor": {"disk": "ok"}})
        );
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_RECORD_BYTES));
        for bad in [&b"{not json"[..], big.as_bytes()] {
            for shape in [Shape::Edgebus, Shape::Cis490] {
                let mut out = b"kept".to_vec();
                assert!(shape.render(bad, &mut out).is_err(), "{shape:?}");
                assert_eq!(out, b"kept", "nothing written on an error");
            }
        }
        // What this version never writes: no time, a host id outside the rule.
        for odd in [
            &br#"{"host_id":"h","report":{}}"#[..],
            br#"{"host_id":"../x","received_at_ms":1,"report":{}}"#,
        ] {
            assert!(rendered(Shape::Cis490, odd).is_err());
        }
    }

    #[test]
    fn only_cis490_or_no_format_is_a_listing_shape() {
        assert_eq!(Shape::from_format(None).unwrap(), Shape::Edgebus);
        assert_eq!(Shape::from_format(Some("cis490")).unwrap(), Shape::Cis490);
        for bad in ["", "CIS490", "json", "edgebus"] {
            assert!(matches!(
                Shape::from_format(Some(bad)),
                Err(HostHealthError::BadFormat(_))
            ));
        }
    }

    #[test]
    fn a_record_is_the_report_as_sent_in_a_one_line_envelope() {
        let host = validate_host(&"h".repeat(64)).unwrap();
        let report = format!(r#"{{"samples":[{}]}}"#, vec!["[1,2]"; 500].join(","));
        let stored = record(&host, report.as_bytes(), u64::MAX / 1000);
        assert!(stored.len() <= report.len() + RECORD_OVERHEAD);
        assert!(!stored.contains(&b'\n'));
        let v: Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(v["host_id"], host.as_str());
        assert_eq!(v["report"]["samples"][499], serde_json::json!([1, 2]));
    }
}
