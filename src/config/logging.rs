//! What is logged and how it is written.

use super::layer::Raw;
use super::types::LogFormat;

/// The `tracing` filter (EnvFilter syntax).
pub(super) fn filter(raw: &Raw, errors: &mut Vec<String>) -> String {
    let log_filter = raw.get("log").unwrap_or("info").trim().to_owned();
    if tracing_subscriber::EnvFilter::try_new(&log_filter).is_err() {
        errors.push(raw.bad("log", "is not a valid log filter"));
    }
    log_filter
}

pub(super) fn format(raw: &Raw, errors: &mut Vec<String>) -> LogFormat {
    match raw.get("log_format").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(_) => {
            errors.push(raw.bad("log_format", "must be json or text"));
            LogFormat::Json
        }
    }
}
