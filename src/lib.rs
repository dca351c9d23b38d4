//! tollgate: a self-hosted payments backend in one binary.
//!
//! `App::build(config)` binds and returns the running application; `main.rs` is a thin CLI.

pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod meters;
pub mod notify;
pub mod ratelimit;
pub mod redis;
pub mod store;
pub mod stripe;
pub mod telemetry;

pub use app::App;
pub use config::Config;
pub use http::state::AppState;
