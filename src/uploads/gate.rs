//! The version gate: an upload must name the code commit that produced it
//! (a header, `X-Cis490-Code-Commit` by default), and that commit must be one
//! of the last `window` commits of the maintainer's branch, so data from a
//! lab host running stale or diverged code never reaches the training set.
//!
//! The allow-list comes from one of two sources, read at start (a source that
//! cannot be read stops the process) and re-read when it changes, checked on
//! every call and cheaply: a git repository (HEAD resolving to another
//! commit) or a file of commits (another mtime, length or inode). A re-read
//! that fails keeps the last good window and warns once per distinct failure:
//! a repository caught mid-`git pull` or a file mid-write must not refuse
//! every host.
//!
//! [`VersionGate::check`] blocks on file and git reads: call it from the
//! blocking pool. Its [`Refusal`] carries the receiver's exact bodies.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Value};

pub const DEFAULT_HEADER: &str = "X-Cis490-Code-Commit";
pub const DEFAULT_WINDOW: usize = 50;
/// A window walks this many commits at each move of HEAD: bounded so a typo
/// cannot make every refresh walk a whole history.
pub const MAX_WINDOW: usize = 10_000;

/// The receiver's text for an upload without the header, kept verbatim
/// (paths included: they are the lab hosts' paths).
pub const DEFAULT_REMEDIATION_MISSING: &str = concat!(
    "Lab-host is shipping with no code_version stamp. ",
    "On the lab host:\n",
    " cd /opt/cis490 && sudo -u cis490 git pull origin main && ",
    "sudo /opt/cis490/scripts/install-lab-host.sh\n",
    "If that errors out, read FIXYOURSELF.md at the repo ",
    "root — it's a six-branch decision tree for stuck ",
    "states the auto-update timer can't recover from.",
);

/// The receiver's text for a commit outside the window, kept verbatim.
pub const DEFAULT_REMEDIATION_STALE: &str = concat!(
    "Your commit isn't on origin/main. Two cases:\n",
    "\n",
    "(1) You're just behind. Run on the lab host:\n",
    " cd /opt/cis490 && sudo -u cis490 git pull --ff-only ",
    "origin main && sudo /opt/cis490/scripts/install-lab-host.sh\n",
    "\n",
    "(2) You have a LOCAL commit that's not on origin/main ",
    "(git pull --ff-only fails). This is the diverged-HEAD ",
    "case — the auto-update timer will refuse to fix it. ",
    "Read FIXYOURSELF.md §B at the repo root: three options ",
    "(push your commit, reset --hard origin/main, or file an ",
    "issue and wait). Pick one.\n",
    "\n",
    "Do NOT bypass this check by faking code_version in ",
    "meta.json — the gate exists to keep buggy data out of ",
    "the training set.",
);

/// `[uploads.version_gate]`; an empty table is a disabled gate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSettings {
    pub enabled: bool,
    /// The request header carrying the commit.
    pub header: String,
    /// A git work tree or `.git` directory; "" for none.
    pub repo: String,
    /// A file of commits, one 40-hex per line, head first; "" for none.
    pub commits_file: String,
    /// How many commits, from the head, are accepted.
    pub window: usize,
    pub remediation_missing: String,
    pub remediation_stale: String,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            header: DEFAULT_HEADER.to_owned(),
            repo: String::new(),
            commits_file: String::new(),
            window: DEFAULT_WINDOW,
            remediation_missing: DEFAULT_REMEDIATION_MISSING.to_owned(),
            remediation_stale: DEFAULT_REMEDIATION_STALE.to_owned(),
        }
    }
}

impl GateSettings {
    /// The first broken rule as (key, rule), for `SettingsError::Invalid`.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !is_header_name(&self.header) {
            return Err((
                "uploads.version_gate.header",
                "must be a non-empty HTTP header name",
            ));
        }
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(("uploads.version_gate.window", "must be from 1 to 10000"));
        }
        if !self.repo.is_empty() && !self.commits_file.is_empty() {
            return Err((
                "uploads.version_gate.commits_file",
                "must not be set together with `uploads.version_gate.repo`",
            ));
        }
        if self.enabled && self.repo.is_empty() && self.commits_file.is_empty() {
            return Err((
                "uploads.version_gate.repo",
                "the enabled gate needs `repo` or `commits_file`",
            ));
        }
        Ok(())
    }
}

/// RFC 9110 `token`: what a header name may be made of.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The commit as the receiver reads it: trimmed and lowercased, `None` when
/// absent or blank.
pub fn normalize_commit(raw: Option<&str>) -> Option<String> {
    let commit = raw?.trim().to_ascii_lowercase();
    (!commit.is_empty()).then_some(commit)
}

/// 40 lowercase hex digits: a full SHA-1 commit id.
pub fn is_commit_hex(commit: &str) -> bool {
    commit.len() == 40
        && commit
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why an upload was refused, with what its response needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No commit header, or a blank one: a client bug (400).
    Missing {
        header: Arc<str>,
        remediation: Arc<str>,
    },
    /// Not 40 hex digits once trimmed and lowercased (400).
    BadFormat { header: Arc<str> },
    /// Well formed but outside the window: an out-of-date or diverged host
    /// (412).
    Stale {
        your_commit: String,
        valid_window_size: usize,
        head_commit: String,
        remediation: Arc<str>,
    },
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Self::Missing { .. } | Self::BadFormat { .. } => 400,
            Self::Stale { .. } => 412,
        }
    }

    /// The reason as a label (logs, metrics, the upload event's `status`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "missing-commit",
            Self::BadFormat { .. } => "bad-commit",
            Self::Stale { .. } => "stale-commit",
        }
    }

    /// The body's `error` text.
    pub fn error(&self) -> String {
        match self {
            Self::Missing { header, .. } => format!("missing {header} header"),
            Self::BadFormat { header } => format!("{header} must be 40 lowercase hex"),
            Self::Stale { .. } => "code commit rejected: not in receiver's allow-list".to_owned(),
        }
    }

    pub fn body(&self) -> Value {
        let error = self.error();
        match self {
            Self::Missing { remediation, .. } => json!({
                "error": error,
                "remediation": &**remediation,
                "see_also": "FIXYOURSELF.md",
            }),
            Self::BadFormat { .. } => json!({ "error": error }),
            Self::Stale {
                your_commit,
                valid_window_size,
                head_commit,
                remediation,
            } => json!({
                "error": error,
                "your_commit": your_commit,
                "valid_window_size": valid_window_size,
                "head_commit": head_commit,
                "remediation": &**remediation,
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("the version gate needs `repo` or `commits_file`")]
    NoSource,
    #[error("git repository `{}`: {}{}", path.display(), source.message(), owner_hint(source))]
    Git { path: PathBuf, source: git2::Error },
    #[error("commits file `{}`: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("commits file `{}` line {line}: not a 40-hex commit", path.display())]
    BadLine { path: PathBuf, line: usize },
    #[error("commits file `{}` lists no commit", path.display())]
    Empty { path: PathBuf },
}

/// libgit2, like git, refuses a repository another user owns; the
/// maintainer's clone usually is one.
fn owner_hint(e: &git2::Error) -> &'static str {
    if e.code() == git2::ErrorCode::Owner {
        " (add it to `safe.directory` in the git config of the user edgebus runs as, or use `commits_file`)"
    } else {
        ""
    }
}

/// The accepted commits; never empty, `head` among them.
#[derive(Debug)]
struct Window {
    head: String,
    commits: HashSet<String>,
}

impl Window {
    fn from_ordered(ordered: Vec<String>) -> Option<Self> {
        let head = ordered.first()?.clone();
        Some(Self {
            head,
            commits: ordered.into_iter().collect(),
        })
    }
}

/// What a commits file looked like when last read: any change re-reads it
/// (the inode catches a replacement by rename within one mtime tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        }
    }
}

enum Source {
    /// `repo` is dropped after a failure and reopened on the next call, so a
    /// repository replaced on disk (re-cloned) is picked up.
    Git {
        path: PathBuf,
        repo: Option<git2::Repository>,
        head: git2::Oid,
    },
    File {
        path: PathBuf,
        stamp: FileStamp,
    },
}

impl Source {
    /// The new window if the source changed since the last good read.
    fn reload_if_changed(&mut self, size: usize) -> Result<Option<Window>, GateError> {
        match self {
            Self::Git { path, repo, head } => {
                let git_err = |source| GateError::Git {
                    path: path.clone(),
                    source,
                };
                let opened = match repo.take() {
                    Some(opened) => opened,
                    None => git2::Repository::open(&*path).map_err(git_err)?,
                };
                let now = opened.refname_to_id("HEAD").map_err(git_err)?;
                let window = if now == *head {
                    None
                } else {
                    Some(walk(&opened, now, size).map_err(git_err)?)
                };
                *head = now;
                *repo = Some(opened);
                Ok(window)
            }
            Self::File { path, stamp } => {
                let meta = fs::metadata(&*path).map_err(|source| GateError::Io {
                    path: path.clone(),
                    source,
                })?;
                if FileStamp::of(&meta) == *stamp {
                    return Ok(None);
                }
                let (now, window) = read_file(path, size)?;
                *stamp = now;
                Ok(Some(window))
            }
        }
    }
}

/// The last `size` commits from `head`, newest first, in `git rev-list`'s
/// default order.
fn walk(repo: &git2::Repository, head: git2::Oid, size: usize) -> Result<Window, git2::Error> {
    let mut revwalk = repo.revwalk()?;
    revwalk.push(head)?;
    let ordered = revwalk
        .take(size)
        .map(|oid| oid.map(|oid| oid.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    // The walk starts at `head`, so it yields at least it.
    Window::from_ordered(ordered).ok_or_else(|| git2::Error::from_str("HEAD has no commit"))
}

#[derive(Debug, PartialEq, Eq)]
enum FileProblem {
    /// 1-based line number.
    BadLine(usize),
    Empty,
}

/// One commit a line, head first; blank lines and `#` comments (whole-line
/// or trailing) skipped, case ignored. Every line is checked, even past the
/// window, so a corrupt file is refused rather than half-read.
fn parse_commits(text: &str, size: usize) -> Result<Window, FileProblem> {
    let mut ordered = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let commit = content.to_ascii_lowercase();
        if !is_commit_hex(&commit) {
            return Err(FileProblem::BadLine(index + 1));
        }
        if ordered.len() < size {
            ordered.push(commit);
        }
    }
    Window::from_ordered(ordered).ok_or(FileProblem::Empty)
}

struct State {
    source: Source,
    window: Window,
    /// The failure last warned about, so a lasting one warns once.
    failing: Option<String>,
}

impl State {
    fn refresh(&mut self, size: usize) {
        match self.source.reload_if_changed(size) {
            Ok(changed) => {
                if let Some(window) = changed {
                    log::info!(
                        "Version gate window moved to head `{}` ({} commits).",
                        window.head,
                        window.commits.len()
                    );
                    self.window = window;
                }
                if self.failing.take().is_some() {
                    log::info!("Version gate source is readable again.");
                }
            }
            Err(e) => {
                let message = e.to_string();
                if self.failing.as_deref() != Some(message.as_str()) {
                    log::warn!(
                        "Version gate keeps its last window (head `{}`): {message}.",
                        self.window.head
                    );
                    self.failing = Some(message);
                }
            }
        }
    }
}

/// The gate, shared by every request (`Send + Sync`).
pub struct VersionGate {
    header: Arc<str>,
    remediation_missing: Arc<str>,
    remediation_stale: Arc<str>,
    size: usize,
    state: Mutex<State>,
}

impl VersionGate {
    /// Reads the source once; fails if it cannot be read. Whether the gate is
    /// `enabled` is the caller's choice: this builds it regardless.
    pub fn new(settings: &GateSettings) -> Result<Self, GateError> {
        let size = settings.window;
        let (source, window) = if !settings.repo.is_empty() {
            let path = PathBuf::from(&settings.repo);
            let git_err = |source| GateError::Git {
                path: path.clone(),
                source,
            };
            let repo = git2::Repository::open(&path).map_err(git_err)?;
            let head = repo.refname_to_id("HEAD").map_err(git_err)?;
            let window = walk(&repo, head, size).map_err(git_err)?;
            let repo = Some(repo);
            (Source::Git { path, repo, head }, window)
        } else if !settings.commits_file.is_empty() {
            let path = PathBuf::from(&settings.commits_file);
            let (stamp, window) = read_file(&path, size)?;
            (Source::File { path, stamp }, window)
        } else {
            return Err(GateError::NoSource);
        };
        log::info!(
            "Version gate on: header `{}`, head `{}` ({} commits).",
            settings.header,
            window.head,
            window.commits.len()
        );
        Ok(Self {
            header: settings.header.as_str().into(),
            remediation_missing: settings.remediation_missing.as_str().into(),
            remediation_stale: settings.remediation_stale.as_str().into(),
            size,
            state: Mutex::new(State {
                source,
                window,
                failing: None,
            }),
        })
    }

    /// The header this gate reads.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// Accepts `commit_header` (the raw header value, `None` when absent) if
    /// it names a commit in the current window. Re-reads a changed source
    /// first, so blocks on I/O.
    pub fn check(&self, commit_header: Option<&str>) -> Result<(), Refusal> {
        let Some(commit) = normalize_commit(commit_header) else {
            return Err(Refusal::Missing {
                header: self.header.clone(),
                remediation: self.remediation_missing.clone(),
            });
        };
        if !is_commit_hex(&commit) {
            return Err(Refusal::BadFormat {
                header: self.header.clone(),
            });
        }
        // No panic happens under this lock, but a poisoned one still holds
        // a whole window: keep serving it.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.refresh(self.size);
        if state.window.commits.contains(&commit) {
            return Ok(());
        }
        Err(Refusal::Stale {
            your_commit: commit,
            valid_window_size: state.window.commits.len(),
            head_commit: state.window.head.clone(),
            remediation: self.remediation_stale.clone(),
        })
    }
}

fn read_file(path: &Path, size: usize) -> Result<(FileStamp, Window), GateError> {
    let io_err = |source| GateError::Io {
        path: path.to_owned(),
        source,
    };
    let stamp = FileStamp::of(&fs::metadata(path).map_err(io_err)?);
    let text = fs::read_to_string(path).map_err(io_err)?;
    let window = parse_commits(&text, size).map_err(|problem| match problem {
        FileProblem::BadLine(line) => GateError::BadLine {
            path: path.to_owned(),
            line,
        },
        FileProblem::Empty => GateError::Empty {
            path: path.to_owned(),
        },
    })?;
    Ok((stamp, window))
}

#[cfg(test)]
mod tests;
