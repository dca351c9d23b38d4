//! The `tollgate` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::config::{Config, ConfigErrors, Sources};
use tollgate::{store, telemetry, App};

/// mimalloc instead of glibc's malloc: a request allocates and frees many small blocks on two
/// busy threads, where glibc's arenas cost a sixth of the CPU (measured in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A self-hosted payments backend: accounts, Stripe Checkout, a verified event ledger, exactly-once fulfilment."
)]
struct Cli {
    /// TOML configuration file (default: ./tollgate.toml when it exists; also TOLLGATE_CONFIG).
    /// Environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API. Runs pending migrations first unless --no-migrate (or
    /// TOLLGATE_MIGRATE_ON_START=false). In production, refuses to start on an unsafe configuration
    /// and lists every problem. Stops gracefully on SIGTERM/SIGINT.
    Serve {
        /// Do not run pending migrations at start (/readyz answers 503 until they are applied).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate the configuration and print the verdict without starting: every problem at once,
    /// naming variables and never their values. Exit status 1 when the server would refuse to start.
    CheckConfig,
    /// Print the version.
    Version,
    /// Administration from the shell.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// API keys for the merchant's servers (run with the server's configuration: keys take the
    /// server's mode, live with a live Stripe key, else test).
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// The event ledger.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Talking to Stripe.
    Stripe {
        #[command(subcommand)]
        command: StripeCommand,
    },
    /// Talking to NOWPayments (crypto invoices).
    Nowpayments {
        #[command(subcommand)]
        command: NowPaymentsCommand,
    },
    /// The credit ledger.
    Credits {
        #[command(subcommand)]
        command: CreditsCommand,
    },
    /// Licences verifiable offline.
    Licence {
        #[command(subcommand)]
        command: LicenceCommand,
    },
    /// TLS certificates.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Asks the running server's /readyz once, for a container's HEALTHCHECK (no curl needed):
    /// exit 0 on 200, 1 otherwise (refused, timed out, 503), with one line on stdout or stderr.
    /// The URL comes from the configuration the server reads: TOLLGATE_BIND (0.0.0.0 becomes
    /// 127.0.0.1), https when TOLLGATE_TLS_CERT is set, trusting only that certificate.
    Healthcheck {
        /// Ask this URL instead, such as http://127.0.0.1:8080/healthz (then also public roots).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        timeout: u64,
    },
    /// The database file.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a self-signed certificate for localhost, 127.0.0.1 and ::1 (and every --host) with
    /// its private key (mode 0600), and print how to serve with it and trust it. Development only.
    Dev {
        /// Directory to write tollgate-dev-cert.pem and tollgate-dev-key.pem into.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Another name or address the certificate covers (repeat for more).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Writes a consistent copy of the SQLite database to PATH while the server keeps running
    /// (VACUUM INTO), then checks the copy's integrity. Never overwrites: PATH must not exist.
    /// PostgreSQL: refused, use pg_dump (RUNBOOK.md).
    Backup {
        /// Where to write the copy (a new file, mode 0600).
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum CreditsCommand {
    /// Recomputes every credit balance from its movements and lists the users whose balance, sum
    /// of movements and last balance_after disagree. Exit status 1 when any do.
    Check,
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create a key and print it once on stdout (details on stderr); only its hash is stored.
    Create {
        /// What the key is for (1-100 characters).
        #[arg(long)]
        name: String,
        /// A scope (repeat for more): entitlements:read, users:read, credits:write, licences:issue,
        /// orders:read, tokens:introspect.
        #[arg(long = "scope", required = true, value_name = "SCOPE")]
        scopes: Vec<String>,
        /// When the key stops working (RFC 3339, in the future).
        #[arg(long, value_name = "RFC3339")]
        expires_at: Option<String>,
    },
    /// List every key (never the key itself).
    List,
    /// Revoke a key: it answers 401 from the next request on.
    Revoke {
        /// The key's id (key_…).
        id: String,
    },
}

/// `api-key create|list|revoke`, audited as the command line.
async fn api_key_command(config: &Config, command: ApiKeyCommand) -> anyhow::Result<()> {
    use tollgate::domain::keys::{KeyError, NewApiKey, CLI_ACTOR};
    let store = store::connect(&config.database).await?;
    if config.database.migrate_on_start {
        store.migrate().await?;
    }
    let keys = tollgate::app::apikey_service(config, store.clone(), tollgate::app::rate_limiter(config)?);
    let meta = |what: &str| tollgate::domain::auth::RequestMeta {
        user_agent: Some(format!("tollgate api-key {what}")),
        ..Default::default()
    };
    let failed = |e: KeyError| match e {
        KeyError::Validation(errors) => {
            let lines: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
            anyhow::anyhow!("{}", lines.join("; "))
        }
        KeyError::NotFound => anyhow::anyhow!("no such API key"),
        other => anyhow::anyhow!("{other:#}"),
    };
    let result = match command {
        ApiKeyCommand::Create { name, scopes, expires_at } => {
            let expires_at = match expires_at.as_deref().map(chrono::DateTime::parse_from_rfc3339) {
                None => None,
                Some(Ok(t)) => Some(t.with_timezone(&chrono::Utc)),
                Some(Err(_)) => anyhow::bail!("--expires-at must be an RFC 3339 time such as 2027-01-31T00:00:00Z"),
            };
            keys.create(NewApiKey { name, scopes, expires_at }, CLI_ACTOR, &meta("create")).await.map_err(failed).map(|created| {
                eprintln!(
                    "created {} ({}, {} mode, scopes: {}); the key below is shown once, store it now:",
                    created.row.id,
                    created.row.prefix,
                    created.row.mode,
                    created.row.scopes.replace(' ', ", ")
                );
                println!("{}", created.reveal());
            })
        }
        ApiKeyCommand::List => keys.list(1000, None).await.map_err(failed).map(|rows| {
            let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".to_owned());
            for r in rows {
                let state = if r.revoked_at.is_some() { "revoked" } else { "active" };
                println!(
                    "{}\t{}\t{}\t{}\t{}\tcreated {}\tlast used {}\texpires {}\t{state}",
                    r.id,
                    r.prefix,
                    r.mode,
                    r.name,
                    r.scopes.replace(' ', ","),
                    r.created_at.to_rfc3339(),
                    time(r.last_used_at),
                    time(r.expires_at),
                );
            }
        }),
        ApiKeyCommand::Revoke { id } => keys.revoke(&id, CLI_ACTOR, &meta("revoke")).await.map_err(failed).map(|()| {
            println!("revoked {id}");
        }),
    };
    store.close().await;
    result
}

#[derive(Subcommand)]
enum LicenceCommand {
    /// Checks one licence offline: the signature by a key of the JWKS (found by kid), alg EdDSA,
    /// typ tollgate-licence+jwt, exp and nbf. Valid: the claims as JSON on stdout, exit 0;
    /// refused: the reason on stderr, exit 1. Revocation is not checked (see GET
    /// /api/v1/licences/revoked).
    Verify {
        /// A file holding the licence (the compact JWS); `-` reads standard input.
        file: PathBuf,
        /// The keys: a JWKS file, or an http(s) URL such as https://pay.example.com/.well-known/jwks.json.
        /// Default: this instance's own keys (TOLLGATE_LICENCE_KEY and TOLLGATE_LICENCE_PREVIOUS_KEY,
        /// or the development key in the database).
        #[arg(long, value_name = "FILE|URL")]
        jwks: Option<String>,
    },
}

/// The keys `licence verify` trusts: a JWKS from a file or URL, or this instance's own.
async fn verifying_keys(config: &Config, jwks: Option<&str>) -> anyhow::Result<Vec<tollgate::domain::licence::VerifyingKey>> {
    use anyhow::Context;
    use tollgate::domain::licensing::LicenceKeys;
    let doc: serde_json::Value = match jwks {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            // Keys fetched over plain http could be anyone's: only https, or http to this machine.
            let parsed = url::Url::parse(url).with_context(|| format!("{url} is not a URL"))?;
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            anyhow::ensure!(
                parsed.scheme() == "https" || loopback,
                "the JWKS must be fetched over https (plain http only from localhost)"
            );
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .timeout(std::time::Duration::from_secs(15))
                // A redirect could lead to plain http or elsewhere: the URL given is the one trusted.
                .redirect(reqwest::redirect::Policy::none())
                .build()?;
            let mut response = client.get(url).send().await.with_context(|| format!("cannot fetch the JWKS from {url}"))?;
            anyhow::ensure!(response.status().is_success(), "the JWKS at {url} answered {}", response.status());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.with_context(|| format!("cannot read the JWKS from {url}"))? {
                body.extend_from_slice(&chunk);
                anyhow::ensure!(body.len() <= 1 << 20, "the JWKS at {url} is larger than 1 MiB");
            }
            serde_json::from_slice(&body).with_context(|| format!("the JWKS at {url} is not JSON"))?
        }
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the JWKS file {path}"))?;
            serde_json::from_str(&text).with_context(|| format!("the JWKS file {path} is not JSON"))?
        }
        None => {
            let keys = match LicenceKeys::configured(&config.licence)? {
                Some(keys) => keys,
                // A development key left in a production database is nobody's to trust.
                None if config.is_production() => {
                    anyhow::bail!("no licence key: in production it is TOLLGATE_LICENCE_KEY (or pass --jwks)")
                }
                None => {
                    // Reads the development key; never creates one, nor migrates.
                    let store = store::connect(&config.database).await?;
                    let keys = LicenceKeys::existing(&config.licence, store.as_ref()).await;
                    store.close().await;
                    keys?.ok_or_else(|| {
                        anyhow::anyhow!(
                            "no licence key: TOLLGATE_LICENCE_KEY is not set and the database holds none; pass --jwks"
                        )
                    })?
                }
            };
            return Ok(keys.verifying());
        }
    };
    let keys = tollgate::domain::licence::keys_of_jwks(&doc);
    anyhow::ensure!(!keys.is_empty(), "the JWKS holds no Ed25519 key");
    Ok(keys)
}

/// `licence verify`: 0 and the claims on stdout when valid, 1 and the reason on stderr otherwise.
fn licence_verify(config: &Config, file: &std::path::Path, jwks: Option<&str>) -> ExitCode {
    let token = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(file)
    };
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            eprintln!("refused: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let keys = match runtime.block_on(verifying_keys(config, jwks)) {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("refused: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match tollgate::domain::licence::verify(&token, &keys, chrono::Utc::now()) {
        Ok(claims) => {
            println!("{}", serde_json::to_string_pretty(&claims).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("refused: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Processes a stored event again (idempotent: nothing is granted twice).
    Replay {
        /// The Stripe event id (evt_…).
        event_id: String,
    },
}

#[derive(Subcommand)]
enum StripeCommand {
    /// Pages through Stripe's Events API and stores and applies every event the ledger is missing
    /// (webhooks lost while tollgate was down). Idempotent: run it as often as you like.
    Sync {
        /// How far back: an RFC 3339 time or a duration such as 6h or 7d (default and maximum:
        /// 30d, as long as Stripe keeps events).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
}

#[derive(Subcommand)]
enum NowPaymentsCommand {
    /// Re-reads, with GET /v1/payment/{id}, every crypto payment the ledger has heard of since
    /// --since whose order is still pending or processing, and applies what NOWPayments says
    /// (IPNs lost while tollgate was down; NOWPayments has no events API). Idempotent.
    Sync {
        /// An RFC 3339 time or a duration such as 6h or 7d (at most 30d).
        #[arg(long, value_name = "TIME")]
        since: String,
    },
}

/// `--since`: a time, or a duration back from now; never more than Stripe's 30 days.
fn parse_since(value: Option<&str>, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let oldest = now - chrono::Duration::days(30);
    let Some(v) = value else { return Ok(oldest) };
    let at = match chrono::DateTime::parse_from_rfc3339(v) {
        Ok(t) => t.with_timezone(&chrono::Utc),
        Err(_) => {
            let d = tollgate::config::parse_duration(v)
                .ok_or_else(|| anyhow::anyhow!("--since must be an RFC 3339 time or a duration such as 7d"))?;
            now - chrono::Duration::from_std(d)?
        }
    };
    Ok(at.max(oldest))
}

/// The store and payments service for a one-off command.
async fn payments(
    config: &Config,
) -> anyhow::Result<(std::sync::Arc<dyn store::Store>, tollgate::domain::payments::PaymentsService)> {
    let store = store::connect(&config.database).await?;
    if config.database.migrate_on_start {
        store.migrate().await?;
    }
    let unused = url::Url::parse("http://127.0.0.1/")?;
    let (service, _) = tollgate::app::payments_service(config, store.clone(), unused, tollgate::app::rate_limiter(config)?)?;
    Ok((store, service))
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin account (the only way to make the first admin). The password is read from
    /// a prompt, or from the first line of standard input when it is not a terminal; never from
    /// the command line, where it would land in shell history and `ps`.
    Create {
        /// The admin's email address.
        #[arg(long)]
        email: String,
        /// A display name.
        #[arg(long)]
        name: Option<String>,
    },
}

/// The password for `admin create`: prompted twice on a terminal, else one line of stdin.
fn read_new_password() -> anyhow::Result<secrecy::SecretString> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Repeat password: ")?;
        anyhow::ensure!(first == second, "the passwords differ");
        Ok(secrecy::SecretString::from(first))
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(secrecy::SecretString::from(line.trim_end_matches(['\r', '\n']).to_owned()))
    }
}

fn print_errors(errors: &ConfigErrors) {
    eprint!("{errors}");
}

/// The configuration for a one-off command (production secrets not required), or exit code 2
/// after printing every problem.
fn parse_config(sources: &Sources) -> Result<Config, ExitCode> {
    Config::parse(sources).map_err(|e| {
        print_errors(&e);
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = Sources::from_process(cli.config.clone());
    match cli.command {
        Command::Version => {
            println!("tollgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig => check_config(&sources),
        Command::Admin { command: AdminCommand::Create { email, name } } => {
            let config = match parse_config(&sources) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let password = match read_new_password() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            run(async move {
                let store = store::connect(&config.database).await?;
                if config.database.migrate_on_start {
                    store.migrate().await?;
                }
                let auth = tollgate::app::auth_service(&config, store.clone(), tollgate::app::rate_limiter(&config)?);
                let meta = tollgate::domain::auth::RequestMeta {
                    user_agent: Some("tollgate admin create".to_owned()),
                    ..Default::default()
                };
                let created =
                    auth.register(&email, &password, name.as_deref(), tollgate::domain::account::Role::Admin, &meta).await;
                store.close().await;
                match created {
                    Ok(user) => {
                        println!("created admin {} ({})", user.id, user.email);
                        Ok(())
                    }
                    Err(tollgate::domain::auth::AuthError::Validation(errors)) => {
                        let lines: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
                        anyhow::bail!("{}", lines.join("; "))
                    }
                    Err(e) => anyhow::bail!("{e}"),
                }
            })
        }
        Command::ApiKey { command } => {
            let config = match parse_config(&sources) {
                Ok(c) => c,
                Err(code) => return code,
            };
            run(async move { api_key_command(&config, command).await })
        }
        Command::Events { command: EventsCommand::Replay { event_id } } => {
            let config = match parse_config(&sources) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(&config.log_filter, config.log_format);
            run(async move {
                let (store, service) = payments(&config).await?;
                let result = service.replay(&event_id, "the command line").await;
                store.close().await;
                match result {
                    Ok((status, detail)) => {
                        println!("{event_id}: {status} ({detail})");
                        Ok(())
                    }
                    Err(tollgate::domain::payments::PaymentError::NotFound) => anyhow::bail!("no event {event_id} in the ledger"),
                    Err(e) => anyhow::bail!("{e}"),
                }
            })
        }
        Command::Stripe { command: StripeCommand::Sync { since } } => {
            let config = match parse_config(&sources) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(&config.log_filter, config.log_format);
            run(async move {
                let since = parse_since(since.as_deref(), chrono::Utc::now())?;
                anyhow::ensure!(
                    config.stripe.provider == tollgate::config::PaymentProvider::Stripe,
                    "stripe sync needs STRIPE_SECRET_KEY (the sandbox delivers every event as it happens)"
                );
                let (store, service) = payments(&config).await?;
                eprintln!("syncing Stripe events since {}", since.to_rfc3339());
                let report = service
                    .sync(since, |r| {
                        eprintln!("  {} seen, {} new stored, {} already in the ledger", r.seen, r.stored, r.already_had)
                    })
                    .await;
                store.close().await;
                let report = report.map_err(|e| anyhow::anyhow!("{e}"))?;
                println!(
                    "synced: {} events seen, {} stored, {} already in the ledger",
                    report.seen, report.stored, report.already_had
                );
                Ok(())
            })
        }
        Command::Nowpayments { command: NowPaymentsCommand::Sync { since } } => {
            let config = match parse_config(&sources) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(&config.log_filter, config.log_format);
            run(async move {
                let since = parse_since(Some(&since), chrono::Utc::now())?;
                anyhow::ensure!(
                    config.nowpayments.credentials().is_some(),
                    "nowpayments sync needs NOWPAYMENTS_API_KEY and NOWPAYMENTS_IPN_SECRET (the sandbox delivers every IPN as it happens)"
                );
                let (store, service) = payments(&config).await?;
                eprintln!("syncing open NOWPayments orders since {}", since.to_rfc3339());
                let report = service.sync_nowpayments(since).await;
                store.close().await;
                let report = report.map_err(|e| anyhow::anyhow!("{e}"))?;
                println!(
                    "synced: {} open payments asked, {} stored, {} already in the ledger",
                    report.seen, report.stored, report.already_had
                );
                Ok(())
            })
        }
        Command::Credits { command: CreditsCommand::Check } => {
            let config = match parse_config(&sources) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(&config.log_filter, config.log_format);
            let disagree = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let found = disagree.clone();
            let code = run(async move {
                let store = store::connect(&config.database).await?;
                if config.database.migrate_on_start {
                    store.migrate().await?;
                }
                let report = store.check_credits().await;
                store.close().await;
                let report = report?;
                for d in &report {
                    println!(
                        "{}: balance {}, sum of movements {}, last balance_after {}, {} step(s) that do not add up",
                        d.user_id, d.balance, d.total, d.last_balance_after, d.broken_steps
                    );
                }
                if report.is_empty() {
                    println!("credits: every balance agrees with its movements");
                } else {
                    println!("credits: {} user(s) disagree", report.len());
                    found.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(())
            });
            if disagree.load(std::sync::atomic::Ordering::SeqCst) {
                ExitCode::FAILURE
            } else {
                code
            }
        }
        Command::Licence { command: LicenceCommand::Verify { file, jwks } } => {
            let config = match parse_config(&sources) {
                Ok(c) => c,
                Err(code) => return code,
            };
            licence_verify(&config, &file, jwks.as_deref())
        }
        Command::Cert { command: CertCommand::Dev { out, hosts, force } } => {
            match tollgate::cli::cert::dev(&out, &hosts, force) {
                Ok(written) => {
                    print!("{}", tollgate::cli::cert::instructions(&written));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck { url, timeout } => {
            let config = if url.is_some() {
                Config::parse_all(&sources).0
            } else {
                match Config::parse(&sources) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("unhealthy: the configuration has {} problem(s); run tollgate check-config", e.0.len());
                        return ExitCode::FAILURE;
                    }
                }
            };
            let timeout = std::time::Duration::from_secs(timeout);
            let checked =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string()).and_then(|rt| {
                    let probe = tollgate::ops::probe(&config, url.as_deref(), timeout).map_err(|e| format!("{e:#}"))?;
                    rt.block_on(tollgate::ops::healthcheck(&probe))
                });
            match checked {
                Ok(line) => {
                    println!("healthy: {line}");
                    ExitCode::SUCCESS
                }
                Err(line) => {
                    eprintln!("unhealthy: {line}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Db { command: DbCommand::Backup { path } } => {
            let config = match parse_config(&sources) {
                Ok(c) => c,
                Err(code) => return code,
            };
            run(async move {
                println!("{}", tollgate::ops::backup(&config, &path).await?);
                Ok(())
            })
        }
        Command::Migrate => {
            // Migrating needs only the database settings, not the production secrets.
            let config = match parse_config(&sources) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(&config.log_filter, config.log_format);
            run(async move {
                let store = store::connect(&config.database).await?;
                let applied = store.migrate().await?;
                store.close().await;
                println!("{} migration(s) applied on {}", applied.len(), store.engine().as_str());
                Ok(())
            })
        }
        Command::Serve { no_migrate } => {
            let mut config = match Config::load(&sources) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tollgate refuses to start.");
                    print_errors(&e);
                    return ExitCode::from(2);
                }
            };
            if no_migrate {
                config.database.migrate_on_start = false;
            }
            telemetry::init(&config.log_filter, config.log_format);
            for warning in config.warnings() {
                tracing::warn!(env = config.env.as_str(), "{warning} (refused in production)");
            }
            if let Some(warning) = config.development_exposed() {
                tracing::warn!(env = config.env.as_str(), bind = %config.bind, "{warning}");
            }
            for notice in config.notices() {
                tracing::warn!(env = config.env.as_str(), "{notice}");
            }
            run(async move {
                // First of all: a SIGHUP while the database is opened and migrated, or on a server
                // without TLS, is handled (logged), never the default action of ending the process.
                let hangups = tollgate::http::tls::Hangups::install()?;
                let app = App::build(config).await?;
                app.run_until_stopped(hangups).await?;
                tracing::info!("stopped");
                Ok(())
            })
        }
    }
}

fn check_config(sources: &Sources) -> ExitCode {
    let (config, mut problems) = Config::parse_all(sources);
    problems.extend(config.problems());
    if let Some(tls) = &config.tls {
        // `serve` reads the certificate and key before anything else; so does the verdict.
        if tls.cert_path.is_file() && tls.key_path.is_file() {
            if let Err(e) = tollgate::app::load_tls(tls) {
                problems.push(format!("{e:#}"));
            }
        }
    }
    println!("environment: {}", config.env.as_str());
    println!(
        "database:    {}",
        store::Engine::from_url(secrecy::ExposeSecret::expose_secret(&config.database.url)).map(|e| e.as_str()).unwrap_or("?")
    );
    println!("payments:    {:?}", config.stripe.provider);
    let nowpayments = match (&config.nowpayments.api_key, &config.nowpayments.ipn_secret) {
        (Some(_), Some(_)) => "enabled",
        (None, None) if config.stripe.provider == tollgate::config::PaymentProvider::Sandbox => "sandbox",
        (None, None) => "off",
        _ => "off (needs both NOWPAYMENTS_API_KEY and NOWPAYMENTS_IPN_SECRET)",
    };
    println!("nowpayments: {nowpayments}");
    for w in config.warnings() {
        println!("warning: {w} (refused in production)");
    }
    if let Some(w) = config.development_exposed().filter(|_| config.env_explicit) {
        println!("warning: {w}");
    }
    for w in config.notices() {
        println!("warning: {w}");
    }
    if problems.is_empty() {
        println!("verdict: ok, would start");
        ExitCode::SUCCESS
    } else {
        // One stream, so the verdict follows the problems it sums up.
        print!("{}", ConfigErrors(problems));
        println!("verdict: refuse to start");
        ExitCode::FAILURE
    }
}

fn run(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "fatal");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
