//! Real repositories made with the `git` CLI in scratch directories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::*;

/// A directory removed when the test ends, pass or fail.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "edgebus-gate-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn git_installed() -> bool {
    let found = Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!(
            "SKIPPED: the `git` CLI is not installed; the version gate's git tests did not run"
        );
    }
    found
}

/// `git` in `dir`, isolated from the machine's and user's configuration.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "user.name=Gate Test",
            "-c",
            "user.email=gate@example.invalid",
        ])
        .args(["-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A work tree with `count` empty commits; returns them oldest first.
fn repo_with_commits(dir: &Path, count: usize) -> Vec<String> {
    git(dir, &["init", "-q"]);
    (0..count).map(|_| commit(dir)).collect()
}

fn commit(dir: &Path) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let message = format!("c{}", NEXT.fetch_add(1, Ordering::Relaxed));
    git(dir, &["commit", "-q", "--allow-empty", "-m", &message]);
    git(dir, &["rev-parse", "HEAD"])
}

fn repo_gate(dir: &Path, window: usize) -> VersionGate {
    VersionGate::new(&GateSettings {
        enabled: true,
        repo: dir.display().to_string(),
        window,
        ..GateSettings::default()
    })
    .unwrap()
}

fn file_gate(file: &Path, window: usize) -> Result<VersionGate, GateError> {
    VersionGate::new(&GateSettings {
        enabled: true,
        commits_file: file.display().to_string(),
        window,
        ..GateSettings::default()
    })
}

fn stale(commit: &str, size: usize, head: &str) -> Refusal {
    Refusal::Stale {
        your_commit: commit.to_owned(),
        valid_window_size: size,
        head_commit: head.to_owned(),
        remediation: DEFAULT_REMEDIATION_STALE.into(),
    }
}

fn hex(c: char) -> String {
    std::iter::repeat_n(c, 40).collect()
}

#[test]
fn the_window_holds_the_last_n_commits_of_the_repository() {
    if !git_installed() {
        return;
    }
    let dir = Scratch::new();
    let commits = repo_with_commits(dir.path(), 5);
    let gate = repo_gate(dir.path(), 3);

    for accepted in &commits[2..] {
        assert_eq!(gate.check(Some(accepted)), Ok(()));
    }
    for old in &commits[..2] {
        assert_eq!(gate.check(Some(old)), Err(stale(old, 3, &commits[4])));
    }
}

#[test]
fn a_new_commit_moves_the_window_without_a_restart() {
    if !git_installed() {
        return;
    }
    let dir = Scratch::new();
    let commits = repo_with_commits(dir.path(), 3);
    let gate = repo_gate(dir.path(), 3);
    assert_eq!(gate.check(Some(&commits[0])), Ok(()));

    let newest = commit(dir.path());

    assert_eq!(gate.check(Some(&newest)), Ok(()));
    assert_eq!(
        gate.check(Some(&commits[0])),
        Err(stale(&commits[0], 3, &newest))
    );
    assert_eq!(gate.check(Some(&commits[1])), Ok(()));
}

#[test]
fn a_short_history_opened_by_its_git_dir_allows_every_commit() {
    if !git_installed() {
        return;
    }
    let dir = Scratch::new();
    let commits = repo_with_commits(dir.path(), 2);
    let gate = repo_gate(&dir.path().join(".git"), 50);

    assert_eq!(gate.check(Some(&commits[0])), Ok(()));
    let unknown = hex('a');
    assert_eq!(
        gate.check(Some(&unknown)),
        Err(stale(&unknown, 2, &commits[1]))
    );
}

#[test]
fn a_broken_repository_keeps_the_last_good_window() {
    if !git_installed() {
        return;
    }
    let dir = Scratch::new();
    let commits = repo_with_commits(dir.path(), 2);
    let gate = repo_gate(dir.path(), 2);
    let head_file = dir.path().join(".git/HEAD");
    let good_head = fs::read_to_string(&head_file).unwrap();

    fs::write(&head_file, "not a reference\n").unwrap();
    assert_eq!(gate.check(Some(&commits[0])), Ok(()));
    assert_eq!(gate.check(Some(&commits[1])), Ok(()));

    fs::write(&head_file, good_head).unwrap();
    let newest = commit(dir.path());
    assert_eq!(gate.check(Some(&newest)), Ok(()));
    assert_eq!(
        gate.check(Some(&commits[0])),
        Err(stale(&commits[0], 2, &newest))
    );
}

#[test]
fn the_header_is_trimmed_and_lowercased_before_the_check() {
    if !git_installed() {
        return;
    }
    let dir = Scratch::new();
    let commits = repo_with_commits(dir.path(), 1);
    let gate = repo_gate(dir.path(), 5);

    let shouted = format!("  {}\t", commits[0].to_ascii_uppercase());
    assert_eq!(gate.check(Some(&shouted)), Ok(()));
}

#[test]
fn missing_blank_and_malformed_headers_are_refused_with_400() {
    let dir = Scratch::new();
    let file = dir.path().join("commits");
    fs::write(&file, format!("{}\n", hex('1'))).unwrap();
    let gate = file_gate(&file, 5).unwrap();

    for absent in [None, Some(""), Some("  \t")] {
        let refusal = gate.check(absent).unwrap_err();
        assert_eq!(
            (refusal.status(), refusal.as_str()),
            (400, "missing-commit"),
            "{absent:?}"
        );
    }
    let short = hex('1')[..39].to_owned();
    let long = format!("{}1", hex('1'));
    let not_hex = hex('g');
    let inner_space = format!("{} {}", &hex('1')[..20], &hex('1')[..19]);
    for bad in [&short, &long, &not_hex, &inner_space, "HEAD"] {
        let refusal = gate.check(Some(bad)).unwrap_err();
        assert_eq!(
            (refusal.status(), refusal.as_str()),
            (400, "bad-commit"),
            "{bad:?}"
        );
    }
}

#[test]
fn the_refusal_bodies_are_the_receivers() {
    let dir = Scratch::new();
    let file = dir.path().join("commits");
    fs::write(&file, format!("{}\n{}\n", hex('1'), hex('2'))).unwrap();
    let gate = file_gate(&file, 5).unwrap();

    let missing = gate.check(None).unwrap_err();
    assert_eq!(
        missing.body(),
        json!({
            "error": "missing X-Cis490-Code-Commit header",
            "remediation": "Lab-host is shipping with no code_version stamp. On the lab host:\n cd /opt/cis490 && sudo -u cis490 git pull origin main && sudo /opt/cis490/scripts/install-lab-host.sh\nIf that errors out, read FIXYOURSELF.md at the repo root — it's a six-branch decision tree for stuck states the auto-update timer can't recover from.",
            "see_also": "FIXYOURSELF.md",
        })
    );
    let bad = gate.check(Some("nope")).unwrap_err();
    assert_eq!(
        bad.body(),
        json!({ "error": "X-Cis490-Code-Commit must be 40 lowercase hex" })
    );
    let stale = gate.check(Some(&hex('3'))).unwrap_err();
    assert_eq!(stale.status(), 412);
    assert_eq!(
        stale.body(),
        json!({
            "error": "code commit rejected: not in receiver's allow-list",
            "your_commit": hex('3'),
            "valid_window_size": 2,
            "head_commit": hex('1'),
            "remediation": "Your commit isn't on origin/main. Two cases:\n\n(1) You're just behind. Run on the lab host:\n cd /opt/cis490 && sudo -u cis490 git pull --ff-only origin main && sudo /opt/cis490/scripts/install-lab-host.sh\n\n(2) You have a LOCAL commit that's not on origin/main (git pull --ff-only fails). This is the diverged-HEAD case — the auto-update timer will refuse to fix it. Read FIXYOURSELF.md §B at the repo root: three options (push your commit, reset --hard origin/main, or file an issue and wait). Pick one.\n\nDo NOT bypass this check by faking code_version in meta.json — the gate exists to keep buggy data out of the training set.",
        })
    );
}

#[test]
fn the_configured_header_and_remediations_appear_in_the_bodies() {
    let dir = Scratch::new();
    let file = dir.path().join("commits");
    fs::write(&file, format!("{}\n", hex('1'))).unwrap();
    let gate = VersionGate::new(&GateSettings {
        enabled: true,
        header: "X-Build".to_owned(),
        commits_file: file.display().to_string(),
        remediation_missing: "stamp it".to_owned(),
        remediation_stale: "pull".to_owned(),
        ..GateSettings::default()
    })
    .unwrap();

    assert_eq!(gate.header(), "X-Build");
    let missing = gate.check(None).unwrap_err().body();
    assert_eq!(missing["error"], "missing X-Build header");
    assert_eq!(missing["remediation"], "stamp it");
    let bad = gate.check(Some("x")).unwrap_err().body();
    assert_eq!(bad, json!({ "error": "X-Build must be 40 lowercase hex" }));
    let stale = gate.check(Some(&hex('2'))).unwrap_err().body();
    assert_eq!(stale["remediation"], "pull");
}

#[test]
fn a_commits_file_is_read_head_first_with_comments_and_within_the_window() {
    let text = format!(
        "# newest first\n\n{}  # head\n{}\n   {}\n{}\n",
        hex('A'),
        hex('b'),
        hex('c'),
        hex('d')
    );
    let window = parse_commits(&text, 3).unwrap();

    assert_eq!(window.head, hex('a'));
    let expected: HashSet<String> = [hex('a'), hex('b'), hex('c')].into();
    assert_eq!(window.commits, expected);
    assert_eq!(
        parse_commits("# none\n\n", 3).unwrap_err(),
        FileProblem::Empty
    );
    let typo = format!("{}\n{}\n", hex('a'), &hex('b')[1..]);
    assert_eq!(
        parse_commits(&typo, 1).unwrap_err(),
        FileProblem::BadLine(2)
    );
}

#[test]
fn a_changed_commits_file_is_reread_on_the_next_check() {
    let dir = Scratch::new();
    let file = dir.path().join("commits");
    fs::write(&file, format!("{}\n{}\n", hex('2'), hex('1'))).unwrap();
    let gate = file_gate(&file, 2).unwrap();
    assert_eq!(gate.check(Some(&hex('1'))), Ok(()));

    fs::write(&file, format!("{}\n{}\n{}\n", hex('3'), hex('2'), hex('1'))).unwrap();

    assert_eq!(gate.check(Some(&hex('3'))), Ok(()));
    assert_eq!(
        gate.check(Some(&hex('1'))),
        Err(stale(&hex('1'), 2, &hex('3')))
    );
}

#[test]
fn a_broken_commits_file_keeps_the_last_good_window() {
    let dir = Scratch::new();
    let file = dir.path().join("commits");
    fs::write(&file, format!("{}\n", hex('1'))).unwrap();
    let gate = file_gate(&file, 2).unwrap();

    fs::write(&file, "").unwrap();
    assert_eq!(gate.check(Some(&hex('1'))), Ok(()));
    fs::write(&file, "half a line\n").unwrap();
    assert_eq!(gate.check(Some(&hex('1'))), Ok(()));
    fs::remove_file(&file).unwrap();
    assert_eq!(gate.check(Some(&hex('1'))), Ok(()));

    // Another length: a rewrite within one mtime tick is still seen.
    fs::write(&file, format!("# moved\n{}\n", hex('2'))).unwrap();
    assert_eq!(gate.check(Some(&hex('2'))), Ok(()));
    assert_eq!(
        gate.check(Some(&hex('1'))),
        Err(stale(&hex('1'), 1, &hex('2')))
    );
}

#[test]
fn an_unreadable_source_fails_at_start_naming_it() {
    let dir = Scratch::new();
    let nowhere = dir.path().join("nowhere");
    let not_a_repo = VersionGate::new(&GateSettings {
        enabled: true,
        repo: dir.path().display().to_string(),
        ..GateSettings::default()
    });
    assert!(matches!(not_a_repo, Err(GateError::Git { .. })));
    let no_file = file_gate(&nowhere, 5).err().unwrap();
    assert!(matches!(no_file, GateError::Io { .. }));
    assert!(
        no_file.to_string().contains(&nowhere.display().to_string()),
        "{no_file}"
    );

    let empty = dir.path().join("empty");
    fs::write(&empty, "# nothing yet\n").unwrap();
    assert!(matches!(file_gate(&empty, 5), Err(GateError::Empty { .. })));
    let bad = dir.path().join("bad");
    fs::write(&bad, "main\n").unwrap();
    let bad_line = file_gate(&bad, 5).err().unwrap();
    assert!(matches!(bad_line, GateError::BadLine { line: 1, .. }));
    assert!(matches!(
        VersionGate::new(&GateSettings::default()),
        Err(GateError::NoSource)
    ));
}

#[test]
fn an_unborn_head_fails_at_start() {
    if !git_installed() {
        return;
    }
    let dir = Scratch::new();
    repo_with_commits(dir.path(), 0);

    assert!(matches!(
        VersionGate::new(&GateSettings {
            enabled: true,
            repo: dir.path().display().to_string(),
            ..GateSettings::default()
        }),
        Err(GateError::Git { .. })
    ));
}

#[test]
fn the_gate_is_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<VersionGate>();

    let dir = Scratch::new();
    let file = dir.path().join("commits");
    fs::write(&file, format!("{}\n", hex('1'))).unwrap();
    let gate = file_gate(&file, 1).unwrap();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..100 {
                    assert_eq!(gate.check(Some(&hex('1'))), Ok(()));
                }
            });
        }
    });
}

fn read_settings(toml: &str) -> Result<GateSettings, config::ConfigError> {
    config::Config::builder()
        .add_source(config::File::from_str(toml, config::FileFormat::Toml))
        .build()?
        .get("uploads.version_gate")
}

#[test]
fn a_table_with_no_keys_is_a_disabled_gate_with_the_defaults() {
    let settings = read_settings("[uploads.version_gate]\n").unwrap();

    assert_eq!(settings, GateSettings::default());
    assert_eq!(settings.window, 50);
    assert_eq!(settings.header, "X-Cis490-Code-Commit");
    assert_eq!(settings.validate(), Ok(()));
    let empty: GateSettings = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, GateSettings::default());
}

#[test]
fn unknown_keys_are_refused() {
    let err = read_settings("[uploads.version_gate]\nwindows = 5\n").unwrap_err();
    assert!(err.to_string().contains("windows"), "{err}");
}

#[test]
fn every_rule_names_its_key() {
    let cases = [
        ("window = 0", "uploads.version_gate.window"),
        ("window = 10001", "uploads.version_gate.window"),
        ("header = \"\"", "uploads.version_gate.header"),
        ("header = \"X Commit\"", "uploads.version_gate.header"),
        ("enabled = true", "uploads.version_gate.repo"),
        (
            "repo = \"/r\"\ncommits_file = \"/f\"",
            "uploads.version_gate.commits_file",
        ),
    ];
    for (body, key) in cases {
        let settings = read_settings(&format!("[uploads.version_gate]\n{body}\n")).unwrap();
        assert_eq!(settings.validate().map_err(|(k, _)| k), Err(key), "{body}");
    }
    let valid =
        read_settings("[uploads.version_gate]\nenabled = true\nrepo = \"/r\"\nwindow = 10000\n");
    assert_eq!(valid.unwrap().validate(), Ok(()));
}

#[test]
fn a_repository_owned_by_another_user_is_explained() {
    let refused = GateError::Git {
        path: PathBuf::from("/srv/clone"),
        source: git2::Error::new(
            git2::ErrorCode::Owner,
            git2::ErrorClass::Config,
            "repository path '/srv/clone' is not owned by current user",
        ),
    };

    let text = refused.to_string();
    assert!(
        text.starts_with("git repository `/srv/clone`: repository path"),
        "{text}"
    );
    assert!(text.contains("`safe.directory`"), "{text}");
}
