//! External programs the cluster tests run (HAProxy, redis-server,
//! Mosquitto, nats-server): found on `PATH` or in Debian's sbin/bin, or the
//! test is skipped loudly — and fails instead under `EDGEBUS_REQUIRE_TOOLS`,
//! so CI never skips silently.

use std::path::{Path, PathBuf};

const REQUIRE_ENV: &str = "EDGEBUS_REQUIRE_TOOLS";

/// Where Debian puts daemons even when `PATH` (a non-root shell's, say)
/// lacks them.
const SYSTEM_DIRS: [&str; 2] = ["/usr/sbin", "/usr/bin"];

/// How to install `tool`: a Debian package, or (the S3 stand-in) PyPI.
fn install_hint(tool: &str) -> String {
    match tool {
        "moto_server" => "pip install 'moto[server]'".to_owned(),
        "pydantic" => "pip install pydantic".to_owned(),
        "redis-server" | "redis-cli" => "apt-get install redis-server".to_owned(),
        other => format!("apt-get install {other}"),
    }
}

/// The executable named `tool`, if installed.
pub fn tool_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Like [`tool_path`] for a test that has already called [`require_tool`]:
/// a missing tool here is a bug in the test.
pub fn installed(tool: &str) -> PathBuf {
    tool_path(tool).unwrap_or_else(|| {
        panic!(
            "{tool} is not installed ({}); call require_tool first",
            install_hint(tool)
        )
    })
}

/// `true` when `tool` is installed. Otherwise the test should return at
/// once: this has printed why (or panicked, under `EDGEBUS_REQUIRE_TOOLS`).
pub fn require_tool(tool: &str) -> bool {
    if tool_path(tool).is_some() {
        return true;
    }
    skip(&format!(
        "`{tool}` is not installed ({}; .ci/run does)",
        install_hint(tool)
    ))
}

/// Says loudly why the running test is skipped (or panics, under
/// `EDGEBUS_REQUIRE_TOOLS`); always `false`, for `require_*` to return.
fn skip(what: &str) -> bool {
    if std::env::var_os(REQUIRE_ENV).is_some() {
        panic!("{REQUIRE_ENV} is set but {what}");
    }
    // The test harness names each test's thread after the test.
    let current = std::thread::current();
    let test = current.name().unwrap_or("?");
    eprintln!(
        "\n########\n# SKIPPED test `{test}`: {what}.\n# Set {REQUIRE_ENV}=1 to make this a failure.\n########\n"
    );
    false
}

/// `true` when `python3` can import `module`. Otherwise the test should
/// return at once: this has printed why (or panicked, under
/// `EDGEBUS_REQUIRE_TOOLS`).
pub fn require_python_module(module: &str) -> bool {
    let imported = tool_path("python3").is_some_and(|python| {
        std::process::Command::new(python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|out| out.status.success())
    });
    if imported {
        return true;
    }
    skip(&format!(
        "python3 cannot import `{module}` ({}; .ci/run does)",
        install_hint(module)
    ))
}

/// The last `lines` lines of a child's log file, for a failure message.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until a server just started answers `answers` while still running
/// (so the answer is its own, not an earlier process's on the port);
/// `Err(its log's tail)` when it exited instead. Panics past the wait.
pub fn wait_until_up(
    child: &mut std::process::Child,
    log: &Path,
    what: &str,
    answers: impl Fn() -> bool,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + crate::helpers::WAIT;
    loop {
        if answers() && matches!(child.try_wait(), Ok(None)) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("({status})\n{}", tail(log, 20)));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never answered:\n{}",
            tail(log, 20)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
