//! Host-health reports on disk: one JSON file per host,
//! `{data_dir}/host-health/{host}.json`, each the latest report with the
//! time edgebus received it.
//!
//! Writes are atomic: the record goes to a uniquely named temporary file in
//! the same directory, is fsynced, then renamed over the old one, and the
//! directory is fsynced, so a reader (or a restart after a crash) sees the
//! old report or the new one, never a mix. Concurrent writers for one host
//! each use their own temporary file; the last rename wins whole.
//!
//! Blocking file I/O: call from a blocking thread (`web::block`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

use edgebus_actors::alerts::clock::rfc3339;
use edgebus_actors::ingest::frame::{parse_object, DeviceId, Rejection};

/// Largest report body accepted. A doctor report is a few KiB; this leaves
/// ample room and keeps `GET /v1/host-health` bounded.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// Prefix of temporary files: never a valid host id, never listed.
const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum HostHealthError {
    #[error("host id must match ^[A-Za-z0-9._-]{{1,64}}$ and not start with a dot")]
    BadHost,
    #[error("report of {0} bytes is over the {MAX_REPORT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("report must be a JSON object: {0}")]
    BadBody(String),
    #[error("storage: {0}")]
    Io(#[from] io::Error),
}

/// A host id: the device id rule, and no leading dot (those names are ours).
pub fn validate_host(host: &str) -> Result<DeviceId, HostHealthError> {
    if host.starts_with('.') {
        return Err(HostHealthError::BadHost);
    }
    DeviceId::parse(host).map_err(|_| HostHealthError::BadHost)
}

/// A report body: one JSON object, no duplicate keys, within the size cap.
pub fn parse_report(body: &[u8]) -> Result<Map<String, Value>, HostHealthError> {
    parse_object(body, MAX_REPORT_BYTES).map_err(|e| match e {
        Rejection::TooLarge(n) => HostHealthError::TooLarge(n),
        other => HostHealthError::BadBody(other.to_string()),
    })
}

/// What is stored: `{host_id, received_at, received_at_ms, report}`.
pub fn record(host: &DeviceId, report: Map<String, Value>, received_ms: u64) -> Value {
    let mut record = Map::new();
    record.insert("host_id".into(), Value::from(host.as_str()));
    record.insert("received_at".into(), Value::from(rfc3339(received_ms)));
    record.insert("received_at_ms".into(), Value::from(received_ms));
    record.insert("report".into(), Value::Object(report));
    Value::Object(record)
}

#[derive(Debug, Clone)]
pub struct HostHealthStore {
    dir: PathBuf,
}

impl HostHealthStore {
    /// Reports live in `{data_dir}/host-health`.
    pub fn new(data_dir: impl AsRef<Path>) -> Self {
        Self {
            dir: data_dir.as_ref().join("host-health"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `record` as the latest report of `host`, atomically.
    pub fn put(&self, host: &DeviceId, record: &Value) -> Result<(), HostHealthError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        fs::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::from)?;
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}-{host}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, self.dir.join(format!("{host}.json")))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        // Make the rename itself durable.
        File::open(&self.dir).and_then(|d| d.sync_all())?;
        Ok(())
    }

    /// Every stored report, sorted by host id. Unreadable files are skipped
    /// (logged): one bad file must not hide the others.
    pub fn list(&self) -> Result<Vec<Value>, HostHealthError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut found: Vec<(String, Value)> = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(host) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|h| validate_host(h).is_ok())
            else {
                continue;
            };
            match fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()))
            {
                Ok(record) => found.push((host.to_owned(), record)),
                Err(e) => log::warn!("Skipped unreadable host-health report `{host}`: {e}."),
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.into_iter().map(|(_, v)| v).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edgebus-hh-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

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
        assert!(parse_report(br#"{"disk":"ok","checks":[1,2]}"#).is_ok());
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

    #[test]
    fn put_replaces_the_file_whole_and_list_reads_every_host_sorted() {
        let dir = temp_dir("put");
        let store = HostHealthStore::new(&dir);
        assert!(store.list().unwrap().is_empty(), "no directory yet");
        let h1 = validate_host("h1").unwrap();
        let h0 = validate_host("h0").unwrap();
        let report = |n: i64| parse_report(format!(r#"{{"n":{n}}}"#).as_bytes()).unwrap();
        store.put(&h1, &record(&h1, report(1), 1_000)).unwrap();
        store.put(&h1, &record(&h1, report(2), 2_000)).unwrap();
        store.put(&h0, &record(&h0, report(3), 3_000)).unwrap();
        fs::write(store.dir().join("junk.json"), "{not json").unwrap();
        let all = store.list().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["host_id"], "h0");
        assert_eq!(all[1]["report"]["n"], 2);
        assert_eq!(all[1]["received_at"], "1970-01-01T00:00:02Z");
        let leftovers: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(TMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
