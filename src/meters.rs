//! What `/metrics` reports, in Prometheus' text format: one recorder per application (not the
//! process-wide one, so that two applications in one process, as in the tests, count apart),
//! rendered by `metrics-exporter-prometheus`. Labels are bounded sets only: methods, route
//! templates, status classes, outcomes, fault kinds; never a raw path, an id, an email or a key.

use std::sync::Arc;

use ::metrics::{Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub const HTTP_REQUESTS: &str = "tollgate_http_requests_total";
pub const HTTP_DURATION: &str = "tollgate_http_request_duration_seconds";
pub const WEBHOOK_EVENTS: &str = "tollgate_webhook_events_total";
pub const ORDERS_FULFILLED: &str = "tollgate_orders_fulfilled_total";
pub const LOGIN_FAILURES: &str = "tollgate_login_failures_total";
pub const RATE_LIMITED: &str = "tollgate_rate_limited_total";
pub const PASSWORD_QUEUE_REFUSALS: &str = "tollgate_password_queue_refusals_total";
pub const DATABASE_FAULTS: &str = "tollgate_database_faults_total";

/// Request durations, in seconds: from a cached answer to a request timeout.
const DURATION_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

const METADATA: Metadata<'static> = Metadata::new("tollgate", Level::INFO, Some(module_path!()));

/// What a webhook delivery came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    Processed,
    Ignored,
    Unmatched,
    /// Stored as failed, or not stored because applying it or the database failed.
    Failed,
    /// A redelivery of an event already done with.
    Duplicate,
    /// Refused before anything was stored: bad signature or not an event.
    Rejected,
}

impl WebhookOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Processed => "processed",
            WebhookOutcome::Ignored => "ignored",
            WebhookOutcome::Unmatched => "unmatched",
            WebhookOutcome::Failed => "failed",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::Rejected => "rejected",
        }
    }
}

/// The application's meters.
pub struct Meters {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Per route template (a bounded set), its request counters and duration histograms once
    /// registered: registering builds and hashes a labelled key, which every request paid for.
    routes: std::sync::RwLock<std::collections::HashMap<Box<str>, RouteMeters>>,
}

/// One route's series: a counter per method and status class, a histogram per method.
#[derive(Default)]
struct RouteMeters {
    requests: [[Option<::metrics::Counter>; 5]; METHODS.len()],
    durations: [Option<::metrics::Histogram>; METHODS.len()],
}

/// The methods `http_requests_total` names (anything else is `other`, the last).
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"];

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Meters")
    }
}

impl Meters {
    pub fn new() -> Arc<Meters> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_owned()), DURATION_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let meters = Meters { recorder, handle, routes: Default::default() };
        meters.describe();
        Arc::new(meters)
    }

    fn describe(&self) {
        let counters = [
            (HTTP_REQUESTS, "HTTP requests answered, by method, route template and status class"),
            (WEBHOOK_EVENTS, "Provider webhook deliveries, by provider and outcome"),
            (ORDERS_FULFILLED, "Orders whose grant was created by a webhook event"),
            (LOGIN_FAILURES, "Login and token requests refused for wrong credentials"),
            (RATE_LIMITED, "Requests answered 429, by route template"),
            (PASSWORD_QUEUE_REFUSALS, "Requests refused at once because too much password work was waiting"),
            (DATABASE_FAULTS, "Database faults the store met, by kind (storage: could not write; unreachable)"),
        ];
        for (name, help) in counters {
            self.recorder.describe_counter(KeyName::from_const_str(name), None, SharedString::const_str(help));
        }
        self.recorder.describe_histogram(
            KeyName::from_const_str(HTTP_DURATION),
            Some(Unit::Seconds),
            SharedString::const_str("Time from the request's arrival to its answer, by method and route template"),
        );
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> ::metrics::Counter {
        self.recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// One answered request. `route` is the matched template (`None`: no route matched).
    pub fn http_request(&self, method: &str, route: Option<&str>, status: u16, seconds: f64) {
        let method = bounded_method(method);
        let m = METHODS.iter().position(|known| *known == method).unwrap_or(METHODS.len() - 1);
        let class = status_class(status);
        let c = usize::from(class.as_bytes()[0] - b'1');
        let route = route.unwrap_or("<unmatched>");
        let registered = |meters: &RouteMeters| Some((meters.requests[m][c].clone()?, meters.durations[m].clone()?));
        let read = self.routes.read().ok().and_then(|routes| routes.get(route).and_then(registered));
        let (requests, duration) = match read {
            Some(series) => series,
            None => {
                let requests = self.counter(
                    HTTP_REQUESTS,
                    vec![Label::new("method", method), Label::new("route", route.to_owned()), Label::new("status", class)],
                );
                let duration = self.recorder.register_histogram(
                    &Key::from_parts(HTTP_DURATION, vec![Label::new("method", method), Label::new("route", route.to_owned())]),
                    &METADATA,
                );
                if let Ok(mut routes) = self.routes.write() {
                    let meters = routes.entry(route.into()).or_default();
                    meters.requests[m][c] = Some(requests.clone());
                    meters.durations[m] = Some(duration.clone());
                }
                (requests, duration)
            }
        };
        requests.increment(1);
        duration.record(seconds);
        if status == 429 {
            self.counter(RATE_LIMITED, vec![Label::new("route", route.to_owned())]).increment(1);
        }
    }

    pub fn webhook(&self, outcome: WebhookOutcome) {
        self.webhook_from("stripe", outcome);
    }

    /// A delivery from `provider` (`stripe`, `nowpayments`).
    pub fn webhook_from(&self, provider: &'static str, outcome: WebhookOutcome) {
        self.counter(WEBHOOK_EVENTS, vec![Label::new("provider", provider), Label::new("outcome", outcome.as_str())])
            .increment(1);
    }

    pub fn order_fulfilled(&self) {
        self.counter(ORDERS_FULFILLED, Vec::new()).increment(1);
    }

    pub fn login_failed(&self) {
        self.counter(LOGIN_FAILURES, Vec::new()).increment(1);
    }

    pub fn password_queue_refused(&self) {
        self.counter(PASSWORD_QUEUE_REFUSALS, Vec::new()).increment(1);
    }

    /// The text format, with the database's fault counts as the store has them now.
    pub fn render(&self, storage_faults: u64, unreachable: u64) -> String {
        self.counter(DATABASE_FAULTS, vec![Label::new("kind", "storage")]).absolute(storage_faults);
        self.counter(DATABASE_FAULTS, vec![Label::new("kind", "unreachable")]).absolute(unreachable);
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// The standard methods by name; anything else (a client can send any token) is `other`.
fn bounded_method(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_sets() {
        let m = Meters::new();
        m.http_request("BREW", None, 418, 0.01);
        m.http_request("GET", Some("/api/v1/orders/{id}"), 200, 0.01);
        let text = m.render(0, 0);
        assert!(text.contains(r#"tollgate_http_requests_total{method="other",route="<unmatched>",status="4xx"} 1"#), "{text}");
        assert!(text.contains(r#"tollgate_http_requests_total{method="GET",route="/api/v1/orders/{id}",status="2xx"} 1"#));
        assert!(text.contains("tollgate_http_request_duration_seconds_bucket"), "a histogram, not a summary");
        assert!(text.contains(r#"tollgate_database_faults_total{kind="storage"} 0"#));
    }

    #[test]
    fn two_applications_count_apart() {
        let (a, b) = (Meters::new(), Meters::new());
        a.login_failed();
        assert!(a.render(0, 0).contains("tollgate_login_failures_total 1"));
        assert!(!b.render(0, 0).contains("tollgate_login_failures_total 1"));
    }
}
