//! The dashboard's pure modules (`web/js/transport.js`, `store.js`) have
//! unit tests for Node's built-in runner (`tests/web/`). They run here, so
//! `cargo test --workspace` stays the one command for the whole suite.

use std::process::Command;

#[test]
fn the_dashboard_modules_pass_their_node_tests() {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = match Command::new("node")
        .args(["--test", "tests/web/"])
        .current_dir(root)
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            assert!(
                std::env::var_os("EDGEBUS_REQUIRE_BROWSER").is_none(),
                "node is required (EDGEBUS_REQUIRE_BROWSER is set): {e}"
            );
            eprintln!("\n########\n# SKIPPED: no `node` ({e}); the dashboard's unit tests did not run.\n########\n");
            return;
        }
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "node --test tests/web/ failed:\n{report}"
    );
    assert!(report.contains("# fail 0"), "{report}");
}
