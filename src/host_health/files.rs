//! The file store, for one instance: one JSON file per host,
//! `{data_dir}/host-health/{host}.json`, each the latest report with the
//! time edgebus received it.
//!
//! A file is at most [`MAX_RECORD_BYTES`] and the directory at most
//! `max_hosts × MAX_RECORD_BYTES`. A listing ([`Listing`]) reads one file at
//! a time, when the response asks for the next piece, so one `GET` holds one
//! report in memory whatever the number of hosts.
//!
//! Writes are atomic: the record goes to a uniquely named temporary file in
//! the same directory, is fsynced, then renamed over the old one, and the
//! directory is fsynced, so a reader (or a restart after a crash) sees the
//! old report or the new one, never a mix. Concurrent writers for one host
//! each use their own temporary file; the last rename wins whole.
//!
//! The directory belongs to this process: the hosts are read from it once at
//! start, then kept in memory (their names only) to check the cap and to
//! order listings.
//!
//! Blocking file I/O: call from a blocking thread (`web::block`).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use edgebus_actors::frame::DeviceId;

use super::{
    validate_host, HostHealthError, HostHealthLimits, ListSlot, ListSlots, Shape, Stage,
    MAX_RECORD_BYTES,
};

/// Prefix of temporary files: never a valid host id, never listed.
const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    limits: HostHealthLimits,
    /// Hosts with a stored report, sorted.
    hosts: Mutex<BTreeSet<Box<str>>>,
    lists: Arc<ListSlots>,
}

impl FileStore {
    /// Reports live in `{data_dir}/host-health`. Reads the hosts stored
    /// there (names only) and removes temporary files a crash left behind.
    pub fn open(
        data_dir: impl AsRef<Path>,
        limits: HostHealthLimits,
    ) -> Result<Self, HostHealthError> {
        let dir = data_dir.as_ref().join("host-health");
        let mut hosts = BTreeSet::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if name.starts_with(TMP_PREFIX) {
                        let _ = fs::remove_file(entry.path());
                    } else if let Some(host) = host_of(name) {
                        hosts.insert(host.into());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if hosts.len() > limits.max_hosts {
            log::warn!(
                "{} hosts have host-health reports, over `host_health.max_hosts` ({}): new hosts \
                 are refused until reports are removed from {}.",
                hosts.len(),
                limits.max_hosts,
                dir.display()
            );
        }
        Ok(Self {
            dir,
            limits,
            hosts: Mutex::new(hosts),
            lists: Arc::new(ListSlots::new(limits.max_concurrent_lists)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hosts with a stored report.
    pub fn len(&self) -> usize {
        self.hosts().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hosts(&self) -> MutexGuard<'_, BTreeSet<Box<str>>> {
        // The set stays consistent whatever panicked while holding it.
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.json"))
    }

    /// Stores `record` as the latest report of `host`, atomically; refuses a
    /// new host once `max_hosts` hosts are stored.
    pub fn put(&self, host: &DeviceId, record: &[u8]) -> Result<(), HostHealthError> {
        let new = {
            let mut hosts = self.hosts();
            if hosts.contains(host.as_str()) {
                false
            } else if hosts.len() >= self.limits.max_hosts {
                return Err(HostHealthError::Full(self.limits.max_hosts));
            } else {
                // Taken now, so two new hosts racing for the last place
                // cannot both have it.
                hosts.insert(host.as_str().into())
            }
        };
        let written = self.write(host, record);
        if written.is_err() && new && !self.path(host.as_str()).exists() {
            self.hosts().remove(host.as_str());
        }
        written
    }

    fn write(&self, host: &DeviceId, record: &[u8]) -> Result<(), HostHealthError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}-{host}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(record)?;
            file.sync_all()?;
            fs::rename(&tmp, self.path(host.as_str()))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        // Make the rename itself durable.
        File::open(&self.dir).and_then(|d| d.sync_all())?;
        Ok(())
    }

    /// Starts a listing of every stored report in `shape`, sorted by host
    /// id, for `owner`; refused while that owner has one being sent, or
    /// while `max_concurrent_lists` listings are.
    pub fn list(
        self: &Arc<Self>,
        owner: Arc<str>,
        shape: Shape,
    ) -> Result<Listing, HostHealthError> {
        let slot = self.lists.take(owner)?;
        let hosts: Vec<Box<str>> = self.hosts().iter().cloned().collect();
        Ok(Listing {
            store: self.clone(),
            _slot: slot,
            hosts: hosts.into_iter(),
            stage: Stage::Head,
            shape,
            record: Vec::new(),
        })
    }

    /// Appends the stored record of `host`, in `shape`, to `out`; `false`
    /// (and `out` unchanged) when it is gone, too large or unreadable.
    /// Reads at most [`MAX_RECORD_BYTES`] + 1 bytes into `record`.
    fn read_into(&self, host: &str, shape: Shape, record: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
        record.clear();
        let read = File::open(self.path(host))
            .and_then(|f| f.take(MAX_RECORD_BYTES as u64 + 1).read_to_end(record));
        let problem = match read {
            // Written a moment ago and not renamed yet, or removed by hand.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(e.to_string()),
            Ok(n) if n > MAX_RECORD_BYTES => Some(format!(
                "over {MAX_RECORD_BYTES} bytes (an older edgebus pretty-printed it); \
                 listed again once the host reports"
            )),
            Ok(_) => match shape.render(record, out) {
                Ok(()) => return true,
                Err(problem) => Some(problem),
            },
        };
        if let Some(problem) = problem {
            log::warn!("Skipped the host-health report of `{host}`: {problem}.");
        }
        false
    }
}

/// A host id from a file name `{host}.json`.
fn host_of(file_name: &str) -> Option<&str> {
    file_name
        .strip_suffix(".json")
        .filter(|h| validate_host(h).is_ok())
}

/// One `GET /v1/host-health` body, `{"hosts":[record,…]}`, produced piece
/// by piece: the head, then one stored report per piece (read from disk
/// only when that piece is asked for), then the tail. Holds the names of
/// the hosts and at most one report. Ending it (dropping it) frees its
/// place among the concurrent listings.
#[derive(Debug)]
pub struct Listing {
    store: Arc<FileStore>,
    _slot: ListSlot,
    hosts: std::vec::IntoIter<Box<str>>,
    stage: Stage,
    shape: Shape,
    /// The file being read, reused from one piece to the next.
    record: Vec<u8>,
}

impl Listing {
    /// The next piece of the body, `None` after the last. Blocking.
    pub fn next_piece(&mut self) -> Option<Vec<u8>> {
        match self.stage {
            Stage::Head => {
                self.stage = Stage::First;
                return Some(br#"{"hosts":["#.to_vec());
            }
            Stage::Done => return None,
            Stage::First | Stage::Rest => {}
        }
        for host in self.hosts.by_ref() {
            let mut piece = if self.stage == Stage::Rest {
                vec![b',']
            } else {
                Vec::new()
            };
            if self
                .store
                .read_into(&host, self.shape, &mut self.record, &mut piece)
            {
                self.stage = Stage::Rest;
                return Some(piece);
            }
        }
        self.stage = Stage::Done;
        Some(b"]}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_health::{parse_report, record, MAX_REPORT_BYTES};
    use serde_json::Value;

    const LIMITS: HostHealthLimits = HostHealthLimits {
        max_hosts: 100,
        max_concurrent_lists: 4,
    };

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edgebus-hh-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn open(dir: &Path, limits: HostHealthLimits) -> Arc<FileStore> {
        Arc::new(FileStore::open(dir, limits).unwrap())
    }

    fn put(store: &FileStore, host: &str, body: &str, at: u64) -> Result<(), HostHealthError> {
        let host = validate_host(host).unwrap();
        store.put(&host, &record(&host, parse_report(body.as_bytes())?, at))
    }

    /// The whole body of a listing, parsed.
    fn listed(store: &Arc<FileStore>) -> Value {
        listed_as(store, Shape::Edgebus)
    }

    fn listed_as(store: &Arc<FileStore>, shape: Shape) -> Value {
        let mut listing = store.list("test".into(), shape).unwrap();
        let mut body = Vec::new();
        while let Some(piece) = listing.next_piece() {
            body.extend(piece);
        }
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn put_replaces_the_file_whole_and_a_listing_has_every_host_sorted() {
        let dir = temp_dir("put");
        let store = open(&dir, LIMITS);
        assert_eq!(
            listed(&store),
            serde_json::json!({"hosts": []}),
            "no directory yet"
        );
        put(&store, "h1", r#"{"n":1}"#, 1_000).unwrap();
        put(&store, "h1", r#"{"n":2}"#, 2_000).unwrap();
        put(&store, "h0", r#"{"n":3}"#, 3_000).unwrap();
        let all = listed(&store);
        let all = all["hosts"].as_array().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["host_id"], "h0");
        assert_eq!(all[1]["report"]["n"], 2);
        assert_eq!(all[1]["received_at"], "1970-01-01T00:00:02Z");
        assert_eq!(all[1]["received_at_ms"], 2_000);
        let leftovers: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(TMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cis490_listing_turns_each_record_into_the_receivers_shape() {
        let dir = temp_dir("cis490");
        let store = open(&dir, LIMITS);
        put(
            &store,
            "h1",
            r#"{"disk":"ok","n":[1,2]}"#,
            1_777_747_711_999,
        )
        .unwrap();
        put(&store, "h0", "{}", 1_000).unwrap();
        put(&store, "h2", "{}", 1_000).unwrap();
        fs::write(store.path("h2"), br#"{"host_id":"h2","report":{}}"#).unwrap();

        assert_eq!(
            listed_as(&store, Shape::Cis490),
            serde_json::json!({"hosts": [
                {"host_id": "h0", "received_at_wall": "1970-01-01T00:00:01Z", "doctor": {}},
                {"host_id": "h1", "received_at_wall": "2026-05-02T18:48:31Z",
                 "doctor": {"disk": "ok", "n": [1, 2]}},
            ]}),
            "h2's record lacks its time: skipped"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_host_over_the_cap_is_refused_and_a_known_one_still_updates() {
        let dir = temp_dir("cap");
        let store = open(
            &dir,
            HostHealthLimits {
                max_hosts: 2,
                ..LIMITS
            },
        );
        put(&store, "h0", "{}", 1).unwrap();
        put(&store, "h1", "{}", 1).unwrap();
        assert!(matches!(
            put(&store, "h2", "{}", 1),
            Err(HostHealthError::Full(2))
        ));
        put(&store, "h1", r#"{"again":true}"#, 2).unwrap();
        assert!(!store.path("h2").exists());
        assert_eq!(store.len(), 2);
        // The cap holds across a restart: the hosts are read back.
        let reopened = open(
            &dir,
            HostHealthLimits {
                max_hosts: 2,
                ..LIMITS
            },
        );
        assert!(matches!(
            put(&reopened, "h3", "{}", 1),
            Err(HostHealthError::Full(2))
        ));
        assert_eq!(listed(&reopened)["hosts"][1]["report"]["again"], true);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_listing_reads_one_report_per_piece_and_only_when_asked() {
        let dir = temp_dir("lazy");
        let store = open(&dir, LIMITS);
        let pad = "x".repeat(MAX_REPORT_BYTES - 64);
        for host in ["h0", "h1", "h2", "h3"] {
            put(
                &store,
                host,
                &format!(r#"{{"host":"{host}","pad":"{pad}"}}"#),
                1,
            )
            .unwrap();
        }
        fs::write(store.path("h3"), b"{not json").unwrap();

        let mut listing = store.list("test".into(), Shape::Edgebus).unwrap();
        let mut pieces = vec![listing.next_piece().unwrap()];
        pieces.push(listing.next_piece().unwrap());
        // h1 changes and h2 goes after the listing began: a listing that
        // had read them already would show the old ones.
        put(&store, "h1", r#"{"host":"h1","new":true}"#, 2).unwrap();
        fs::remove_file(store.path("h2")).unwrap();
        while let Some(piece) = listing.next_piece() {
            pieces.push(piece);
        }

        assert!(pieces.iter().all(|p| p.len() <= MAX_RECORD_BYTES + 1));
        let body: Vec<u8> = pieces.concat();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let hosts = v["hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 2, "h2 gone, h3 unreadable: {}", hosts.len());
        assert_eq!(hosts[0]["report"]["host"], "h0");
        assert_eq!(hosts[1]["report"]["new"], true);
        assert_eq!(pieces.len(), 4, "head, h0, h1, tail");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn listings_beyond_the_cap_wait_for_one_to_end() {
        let dir = temp_dir("lists");
        let store = open(
            &dir,
            HostHealthLimits {
                max_concurrent_lists: 2,
                ..LIMITS
            },
        );
        let first = store.list("a".into(), Shape::Edgebus).unwrap();
        let _second = store.list("b".into(), Shape::Edgebus).unwrap();
        assert!(matches!(
            store.list("c".into(), Shape::Edgebus),
            Err(HostHealthError::Busy(2))
        ));
        drop(first);
        assert!(store.list("c".into(), Shape::Edgebus).is_ok());
    }

    #[test]
    fn a_caller_holds_one_listing_at_a_time_and_never_blocks_another() {
        let dir = temp_dir("owner");
        let store = open(&dir, LIMITS);
        let stalled = store.list("viewer".into(), Shape::Edgebus).unwrap();
        assert!(matches!(
            store.list("viewer".into(), Shape::Edgebus),
            Err(HostHealthError::AlreadyListing)
        ));
        assert!(
            store.list("other".into(), Shape::Edgebus).is_ok(),
            "another caller lists"
        );
        drop(stalled);
        assert!(store.list("viewer".into(), Shape::Edgebus).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_over_the_record_cap_is_skipped_unread() {
        let dir = temp_dir("big");
        let store = open(&dir, LIMITS);
        put(&store, "h0", "{}", 1).unwrap();
        put(&store, "h1", "{}", 1).unwrap();
        let pretty = format!("{{\n  \"pad\": \"{}\"\n}}", "x".repeat(MAX_RECORD_BYTES));
        fs::write(store.path("h0"), pretty).unwrap();
        let all = listed(&store);
        assert_eq!(all["hosts"].as_array().unwrap().len(), 1);
        assert_eq!(all["hosts"][0]["host_id"], "h1");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn opening_reads_the_hosts_and_clears_temporary_files() {
        let dir = temp_dir("open");
        let hh = dir.join("host-health");
        fs::create_dir_all(&hh).unwrap();
        fs::write(hh.join("a.json"), "{}").unwrap();
        fs::write(hh.join(".tmp-1-2-a"), "{").unwrap();
        fs::write(hh.join("notes.txt"), "").unwrap();
        let store = open(&dir, LIMITS);
        assert_eq!(store.len(), 1);
        assert!(!hh.join(".tmp-1-2-a").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
