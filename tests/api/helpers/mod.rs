//! What several test files share, and nothing else: a test file imports from here, never from
//! another test file.
//!
//! - [`app`]: `spawn_app()`, the real application on port 0 with its own database, and its probe routes.
//! - [`http`]: the HTTP client and the problem+json check.
//! - [`database`]: a fresh PostgreSQL database per test and the disk lock that goes with it.
//! - [`skip`]: `skip()` and `in_ci()`, for tests that need what this machine may lack.
//! - [`accounts`]: registering, logging in (cookie or bearer), admins, the test password.
//! - [`stripe`]: Stripe events built from the vendored fixtures, signed and delivered to the webhook.
//! - [`stripe_api`]: Stripe's API as wiremock plays it (checkout sessions, request forms).
//! - [`shop`]: an app with a catalog, a buyer and an admin, and the order events payments tests send.
//! - [`keys`]: API keys made through the admin API.
//! - [`binary`]: the real `tollgate` binary as a child process.
//! - [`smtp`]: a real SMTP server (aiosmtpd) as a child process, and a test certificate for it.

pub mod accounts;
pub mod app;
pub mod binary;
pub mod database;
pub mod http;
pub mod keys;
pub mod shop;
pub mod skip;
pub mod smtp;
pub mod stripe;
pub mod stripe_api;

// What `crate::helpers::…` named before the helpers became a directory, still reachable there.
pub use app::{spawn_app, spawn_app_with, spawn_apps, spawn_apps_via, TestApp};
pub use database::{fresh_postgres_database, postgres_disk_lock};
pub use http::{assert_problem, client};
pub use skip::{in_ci, skip};
