//! `alerts.jsonl`: every upload-detector firing, one JSON line each, in the
//! seed fleet-health monitor's format, for an operator who greps or tails
//! it. Lines are written by a thread of its own behind a bounded hand-off:
//! a slow or full disk never holds up the Alerts actor, and a line that does
//! not fit is dropped (the caller counts it). Bounded on disk too: past
//! `max_bytes` the file becomes `alerts.jsonl.1` (one rotation kept).
//!
//! The file (and its directory) is created with the first line, as the
//! host-health reports are: a service that never alerts writes nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use serde::Serialize;

use crate::telemetry::Telemetry;

pub const JOURNAL_FILE: &str = "alerts.jsonl";

/// Past this size the journal is rotated.
pub const DEFAULT_JOURNAL_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Lines waiting for the writer. Firings come at most once an hour per host
/// and symptom: this holds a whole fleet's burst.
pub const JOURNAL_QUEUE: usize = 1024;

/// One line: `{"ts","host","symptom","hour_bucket","detail"}`, in this
/// order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalLine {
    /// RFC 3339, UTC.
    pub ts: String,
    pub host: String,
    pub symptom: &'static str,
    /// Hours since the epoch, the de-duplication bucket it fired in.
    pub hour_bucket: u64,
    pub detail: String,
}

/// Why a line was not handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAppended {
    /// The writer is behind by [`JOURNAL_QUEUE`] lines.
    Full,
    /// The writer thread is gone.
    Closed,
}

impl NotAppended {
    pub fn as_str(self) -> &'static str {
        match self {
            NotAppended::Full => "full",
            NotAppended::Closed => "closed",
        }
    }
}

/// The sending end. Dropping it ends the writer thread once it has written
/// what was queued.
#[derive(Debug)]
pub struct Journal {
    tx: SyncSender<String>,
}

impl Journal {
    /// Starts the writer of `{dir}/alerts.jsonl`; lines it cannot write
    /// are counted in `telemetry`. The handle lets a caller wait for the
    /// writer after dropping the journal; dropping the handle detaches it.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        telemetry: Arc<Telemetry>,
    ) -> io::Result<(Self, JoinHandle<()>)> {
        let path = dir.join(JOURNAL_FILE);
        let mut rotated = path.clone().into_os_string();
        rotated.push(".1");
        let writer = Writer {
            dir: dir.to_owned(),
            path,
            rotated: rotated.into(),
            max_bytes: max_bytes.max(1),
            file: None,
            size: 0,
            failing: false,
            telemetry,
        };
        let (tx, rx) = mpsc::sync_channel(JOURNAL_QUEUE);
        let handle = thread::Builder::new()
            .name("alerts-journal".into())
            .spawn(move || writer.run(rx))?;
        Ok((Self { tx }, handle))
    }

    /// Hands `line` to the writer without waiting.
    pub fn append(&self, line: &JournalLine) -> Result<(), NotAppended> {
        // A struct of strings and numbers always serialises.
        let mut text = serde_json::to_string(line).map_err(|_| NotAppended::Closed)?;
        text.push('\n');
        self.tx.try_send(text).map_err(|e| match e {
            TrySendError::Full(_) => NotAppended::Full,
            TrySendError::Disconnected(_) => NotAppended::Closed,
        })
    }
}

struct Writer {
    dir: PathBuf,
    path: PathBuf,
    rotated: PathBuf,
    max_bytes: u64,
    /// Opened for the first line, and again after a failure.
    file: Option<File>,
    size: u64,
    /// Logged once per run of failures, not once per line.
    failing: bool,
    telemetry: Arc<Telemetry>,
}

impl Writer {
    fn run(mut self, rx: Receiver<String>) {
        while let Ok(line) = rx.recv() {
            match self.write(&line) {
                Ok(()) => self.failing = false,
                Err(e) => {
                    self.telemetry.alerts.journal_lost("write_failed");
                    if !self.failing {
                        log::warn!(
                            "Cannot append to {}: {e}; firings are lost until it works again.",
                            self.path.display()
                        );
                    }
                    self.failing = true;
                }
            }
        }
    }

    fn write(&mut self, line: &str) -> io::Result<()> {
        let len = line.len() as u64;
        let mut file = match self.file.take() {
            Some(file) => file,
            None => self.open()?,
        };
        if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
            drop(file);
            fs::rename(&self.path, &self.rotated)?;
            file = self.open()?;
        }
        file.write_all(line.as_bytes())?;
        self.size += len;
        self.file = Some(file);
        Ok(())
    }

    /// Opens (or creates) the file for appending and reads its size.
    fn open(&mut self) -> io::Result<File> {
        fs::create_dir_all(&self.dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        Ok(file)
    }
}

/// A directory of its own under the system temp dir, removed on drop.
#[cfg(test)]
pub(crate) struct TempDir(pub PathBuf);

#[cfg(test)]
impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "edgebus-journal-{name}-{}-{}",
            std::process::id(),
            crate::event::now_ms()
        ));
        let _ = fs::remove_dir_all(&dir);
        Self(dir)
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max_bytes: u64) -> (Journal, JoinHandle<()>) {
        Journal::open(dir, max_bytes, Arc::new(Telemetry::new())).unwrap()
    }

    fn line(host: &str, detail: &str) -> JournalLine {
        JournalLine {
            ts: "2026-05-02T13:48:31Z".into(),
            host: host.into(),
            symptom: "fatal-only",
            hour_bucket: 493_812,
            detail: detail.into(),
        }
    }

    #[test]
    fn lines_are_appended_in_the_seed_format_and_the_writer_ends_on_drop() {
        let dir = TempDir::new("format");
        let (journal, writer) = open(&dir.0, DEFAULT_JOURNAL_MAX_BYTES);
        journal.append(&line("lab-01", "3 refused")).unwrap();
        journal.append(&line("lab-02", "say \"hi\"")).unwrap();
        drop(journal);
        writer.join().unwrap();
        let text = fs::read_to_string(dir.0.join(JOURNAL_FILE)).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"ts":"2026-05-02T13:48:31Z","host":"lab-01","symptom":"fatal-only","hour_bucket":493812,"detail":"3 refused"}"#,
                "\n",
                r#"{"ts":"2026-05-02T13:48:31Z","host":"lab-02","symptom":"fatal-only","hour_bucket":493812,"detail":"say \"hi\""}"#,
                "\n"
            )
        );
        // Reopened: appended to, not truncated.
        let (journal, writer) = open(&dir.0, DEFAULT_JOURNAL_MAX_BYTES);
        journal.append(&line("lab-03", "x")).unwrap();
        drop(journal);
        writer.join().unwrap();
        let text = fs::read_to_string(dir.0.join(JOURNAL_FILE)).unwrap();
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn past_the_cap_the_journal_is_rotated_and_one_rotation_kept() {
        let dir = TempDir::new("rotate");
        let one = serde_json::to_string(&line("lab-00", "x")).unwrap().len() as u64 + 1;
        // Room for two lines per file.
        let (journal, writer) = open(&dir.0, 2 * one);
        for i in 0..7 {
            journal.append(&line(&format!("lab-0{i}"), "x")).unwrap();
        }
        drop(journal);
        writer.join().unwrap();
        let read = |name: &str| fs::read_to_string(dir.0.join(name)).unwrap();
        let current = read(JOURNAL_FILE);
        let rotated = read("alerts.jsonl.1");
        assert_eq!(current.lines().count(), 1, "{current}");
        assert!(current.contains("lab-06"));
        assert_eq!(rotated.lines().count(), 2, "{rotated}");
        assert!(rotated.contains("lab-04") && rotated.contains("lab-05"));
        assert!(!dir.0.join("alerts.jsonl.2").exists());
        for text in [current, rotated] {
            assert!(text.len() as u64 <= 2 * one);
        }
    }

    #[test]
    fn nothing_is_written_until_the_first_line_and_failures_are_counted() {
        let dir = TempDir::new("lazy");
        let telemetry = Arc::new(Telemetry::new());
        let (journal, writer) =
            Journal::open(&dir.0, DEFAULT_JOURNAL_MAX_BYTES, telemetry.clone()).unwrap();
        drop(journal);
        writer.join().unwrap();
        assert!(!dir.0.exists(), "created with the first line only");
        // A directory where the file should be: every line fails.
        fs::create_dir_all(dir.0.join(JOURNAL_FILE)).unwrap();
        let (journal, writer) =
            Journal::open(&dir.0, DEFAULT_JOURNAL_MAX_BYTES, telemetry.clone()).unwrap();
        journal.append(&line("a", "x")).unwrap();
        journal.append(&line("b", "x")).unwrap();
        drop(journal);
        writer.join().unwrap();
        assert_eq!(telemetry.alerts.journal_dropped("write_failed"), 2);
    }

    #[test]
    fn a_writer_that_is_gone_refuses_lines() {
        let (tx, rx) = mpsc::sync_channel(1);
        let journal = Journal { tx };
        journal.append(&line("a", "x")).unwrap();
        assert_eq!(journal.append(&line("a", "x")), Err(NotAppended::Full));
        drop(rx);
        assert_eq!(journal.append(&line("a", "x")), Err(NotAppended::Closed));
    }
}
