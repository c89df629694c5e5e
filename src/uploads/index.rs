//! `index.jsonl`: one line per stored upload, appended and fsynced, for
//! operators and scripts that read the whole history with `grep` and `jq`.
//! The records in the store are the truth an upload is checked against;
//! the index is their log (a crash between the rename and the append can
//! leave an upload out of it). Bounded with the uploads themselves: each
//! counts at least [`super::limits::Quota::MIN_ACCOUNTED`] bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::store::Record;

#[derive(Debug)]
pub struct IndexLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl IndexLog {
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line (one `write`, so concurrent appends never
    /// interleave) and waits for it to reach the disk. Blocking.
    pub fn append(&self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.write_all(&line)?;
        file.sync_data()
    }
}
