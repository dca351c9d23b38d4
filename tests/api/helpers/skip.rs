//! Skipping a test that needs what this machine lacks (root, a service): loudly, and never in CI.

/// True when running under CI, where a missing service is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// Says that a test was skipped and why, on the real stderr (libtest captures `eprintln!` of
/// passing tests, and a skip that nobody sees is a silent pass).
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
