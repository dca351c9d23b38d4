//! Where tollgate runs: the environment, the address it binds and the URL users reach it at.

use std::net::SocketAddr;

use url::Url;

use super::environment::Environment;
use super::layer::Raw;

/// The settings at the top of `Config`, outside any section.
pub(super) struct Server {
    pub(super) env: Environment,
    pub(super) env_explicit: bool,
    pub(super) bind: SocketAddr,
    pub(super) public_url: Url,
}

pub(super) fn parse(raw: &Raw, errors: &mut Vec<String>) -> Server {
    let env_explicit = raw.get("env").is_some();
    let env = match raw.get("env") {
        None => Environment::Development,
        Some(v) => Environment::from_name(v).unwrap_or_else(|| {
            errors.push(raw.bad("env", "must be development or production"));
            Environment::Development
        }),
    };
    let bind = raw.get("bind").and_then(|v| v.trim().parse::<SocketAddr>().ok()).unwrap_or_else(|| {
        errors.push(raw.bad("bind", "must be an address and port such as 127.0.0.1:8080"));
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let public_url = raw
        .get("public_url")
        .and_then(|v| Url::parse(v.trim()).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .unwrap_or_else(|| {
            errors.push(raw.bad("public_url", "must be an http(s) URL"));
            Url::parse("http://localhost:8080").expect("constant URL")
        });
    Server { env, env_explicit, bind, public_url }
}
