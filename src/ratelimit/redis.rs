//! The Redis rate limiter: the same GCRA step and exact sliding window as `memory.rs`, run as one
//! atomic Lua script per check on a Redis every instance shares (so a budget holds across them).
//!
//! A small RESP client of our own (the commands are `AUTH`, `SELECT`, `SCRIPT LOAD`, `EVALSHA`
//! and `EVAL`), over TCP or TLS (`rediss://`, rustls with the ring provider and the webpki roots
//! already built for reqwest). Time is Redis's own (`TIME`), so instances' clocks never disagree.
//! Keys are `<prefix>rl:<limiter key>` and expire by themselves once their state no longer
//! matters (GCRA: when the bucket has refilled; window: one period after its newest event).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::limiter::{Decision, Quota};

/// One script for every operation: `ARGV[1]` names it (`hit`, `peek`, `refund`, `whit`,
/// `wrefund`), then limit, period and interval in microseconds, then a unique member for the
/// window. Numbers go back to Redis through `%d` (Lua 5.1 would print 16 digits as `%.14g`).
const SCRIPT: &str = r#"
local op = ARGV[1]
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if op == 'wrefund' then
  redis.call('ZPOPMAX', key)
  return {1, 0, 0}
end
local limit = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local interval = tonumber(ARGV[4])
if op == 'whit' then
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now - period))
  local count = redis.call('ZCARD', key)
  local oldest = now
  if count > 0 then
    oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
  end
  if count >= limit then
    return {0, oldest + period - now, 0}
  end
  redis.call('ZADD', key, string.format('%d', now), ARGV[5])
  redis.call('PEXPIRE', key, string.format('%d', math.ceil(period / 1000) + 1))
  return {1, oldest + period - now, limit - count - 1}
end
local stored = redis.call('GET', key)
local tat = now
if stored then
  tat = math.max(tonumber(stored), now)
end
if op == 'refund' then
  if stored then
    local back = math.max(tonumber(stored) - interval, now)
    if back > now then
      redis.call('SET', key, string.format('%d', back), 'PX', string.format('%d', math.ceil((back - now) / 1000) + 1))
    else
      redis.call('DEL', key)
    end
  end
  return {1, 0, 0}
end
local new_tat = tat + interval
local horizon = new_tat - now
if horizon > period then
  return {0, horizon - period, 0}
end
if op == 'hit' then
  redis.call('SET', key, string.format('%d', new_tat), 'PX', string.format('%d', math.ceil(horizon / 1000) + 1))
end
return {1, horizon, math.floor((period - horizon) / interval)}
"#;

/// What went wrong talking to Redis. Never carries the URL (it may hold a password).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RedisError {
    #[error("invalid redis URL")]
    BadUrl,
    #[error("unreachable")]
    Unreachable,
    #[error("timed out")]
    TimedOut,
    #[error("TLS handshake failed")]
    Tls,
    #[error("connection lost")]
    Io,
    #[error("authentication failed")]
    Auth,
    #[error("unexpected reply")]
    Protocol,
    #[error("server error: {0}")]
    Server(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Conn {
    io: BufReader<Box<dyn Stream>>,
}

/// Where and how to connect, parsed once from the URL.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    user: Option<String>,
    password: Option<String>,
    db: Option<u32>,
}

impl Target {
    fn parse(raw: &str) -> Result<Target, RedisError> {
        let url = url::Url::parse(raw).map_err(|_| RedisError::BadUrl)?;
        let tls = match url.scheme() {
            "redis" => None,
            "rediss" => {
                let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|_| RedisError::Tls)?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(Arc::new(config))
            }
            _ => return Err(RedisError::BadUrl),
        };
        let host = url.host_str().ok_or(RedisError::BadUrl)?.trim_matches(['[', ']']).to_owned();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s).decode_utf8().map(|c| c.into_owned()).map_err(|_| RedisError::BadUrl)
        };
        let user = Some(decode(url.username())?).filter(|u| !u.is_empty());
        let password = url.password().map(decode).transpose()?;
        let db = match url.path().trim_matches('/') {
            "" => None,
            n => Some(n.parse().map_err(|_| RedisError::BadUrl)?),
        };
        Ok(Target { host, port: url.port().unwrap_or(6379), tls, user, password, db })
    }
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Conn {
    async fn open(target: &Target) -> Result<Conn, RedisError> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await.map_err(|_| RedisError::Unreachable)?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &target.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|_| RedisError::BadUrl)?;
                let tls =
                    tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.map_err(|_| RedisError::Tls)?;
                Box::new(tls)
            }
        };
        let mut conn = Conn { io: BufReader::new(stream) };
        if let Some(password) = &target.password {
            let reply = match &target.user {
                Some(user) => conn.call(&[b"AUTH", user.as_bytes(), password.as_bytes()]).await?,
                None => conn.call(&[b"AUTH", password.as_bytes()]).await?,
            };
            if reply != Reply::Simple("OK".to_owned()) {
                return Err(RedisError::Auth);
            }
        }
        if let Some(db) = target.db {
            match conn.call(&[b"SELECT", db.to_string().as_bytes()]).await? {
                Reply::Simple(_) => {}
                Reply::Error(e) if e.starts_with("NOAUTH") => return Err(RedisError::Auth),
                _ => return Err(RedisError::Protocol),
            }
        }
        Ok(conn)
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        self.io.get_mut().write_all(&command(args)).await.map_err(|_| RedisError::Io)?;
        self.io.get_mut().flush().await.map_err(|_| RedisError::Io)?;
        read_reply(&mut self.io).await
    }
}

fn read_reply<'a>(
    io: &'a mut BufReader<Box<dyn Stream>>,
) -> Pin<Box<dyn Future<Output = Result<Reply, RedisError>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = Vec::new();
        let n = (&mut *io).take(64 * 1024).read_until(b'\n', &mut line).await.map_err(|_| RedisError::Io)?;
        if n == 0 {
            return Err(RedisError::Io);
        }
        if !line.ends_with(b"\r\n") {
            return Err(RedisError::Protocol);
        }
        let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        let number = || text.parse::<i64>().map_err(|_| RedisError::Protocol);
        match line[0] {
            b'+' => Ok(Reply::Simple(text)),
            b'-' => Ok(Reply::Error(text)),
            b':' => Ok(Reply::Int(number()?)),
            b'$' => {
                let len = number()?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len).ok().filter(|l| *l <= 1 << 20).ok_or(RedisError::Protocol)?;
                let mut buf = vec![0; len + 2];
                io.read_exact(&mut buf).await.map_err(|_| RedisError::Io)?;
                buf.truncate(len);
                Ok(Reply::Bulk(Some(buf)))
            }
            b'*' => {
                let len = number()?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                let len = usize::try_from(len).ok().filter(|l| *l <= 1024).ok_or(RedisError::Protocol)?;
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(read_reply(io).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(RedisError::Protocol),
        }
    })
}

/// The limiter's state on Redis. Its methods fail (the caller decides what to do when Redis is
/// away: see `SharedRateLimiter`); idle connections are kept for reuse, a failed one is dropped.
pub struct RedisRateLimiter {
    target: Target,
    prefix: String,
    idle: Mutex<Vec<Conn>>,
    sha: Mutex<Option<String>>,
}

/// Connections kept for reuse. A check beyond them opens a connection and closes it after: with 16,
/// 32 concurrent clients on a budgeted route (two checks a request) opened about 1 200 new Redis
/// connections a second (`bench/limiter.py`, BENCHMARKS.md); 64 covers the default pool sizes.
const MAX_IDLE: usize = 64;

impl RedisRateLimiter {
    /// For `url` (`redis://` or `rediss://`, `[user:password@]host[:port][/db]`), with every key
    /// under `prefix` (e.g. `tollgate:`). Connects lazily.
    pub fn new(url: &str, prefix: &str) -> Result<RedisRateLimiter, RedisError> {
        Ok(RedisRateLimiter {
            target: Target::parse(url)?,
            prefix: prefix.to_owned(),
            idle: Mutex::new(Vec::new()),
            sha: Mutex::new(None),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}rl:{key}", self.prefix)
    }

    /// Forgets every idle connection (after a failure they are likely dead too).
    pub(crate) fn drop_idle(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    async fn conn(&self) -> Result<Conn, RedisError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(c) => Ok(c),
            None => Conn::open(&self.target).await,
        }
    }

    /// Runs the script: `EVALSHA`, or `EVAL` when the server does not know it (it then does).
    async fn eval(&self, key: &str, args: &[&[u8]]) -> Result<Vec<i64>, RedisError> {
        let mut conn = self.conn().await?;
        let key = self.key(key);
        let sha = self.sha.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let sha = match sha {
            Some(s) => s,
            None => match conn.call(&[b"SCRIPT", b"LOAD", SCRIPT.as_bytes()]).await? {
                Reply::Bulk(Some(s)) => {
                    let s = String::from_utf8(s).map_err(|_| RedisError::Protocol)?;
                    *self.sha.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
                    s
                }
                Reply::Error(e) => return Err(server_error(e)),
                _ => return Err(RedisError::Protocol),
            },
        };
        let mut call: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), b"1", key.as_bytes()];
        call.extend_from_slice(args);
        let mut reply = conn.call(&call).await?;
        if matches!(&reply, Reply::Error(e) if e.starts_with("NOSCRIPT")) {
            call[0] = b"EVAL";
            call[1] = SCRIPT.as_bytes();
            reply = conn.call(&call).await?;
        }
        let values = match reply {
            Reply::Array(Some(items)) => items
                .into_iter()
                .map(|i| match i {
                    Reply::Int(n) => Ok(n),
                    _ => Err(RedisError::Protocol),
                })
                .collect::<Result<Vec<i64>, _>>()?,
            Reply::Error(e) => return Err(server_error(e)),
            _ => return Err(RedisError::Protocol),
        };
        if values.len() != 3 {
            return Err(RedisError::Protocol);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        Ok(values)
    }

    async fn gcra(&self, op: &str, key: &str, quota: Quota) -> Result<Decision, RedisError> {
        let (limit, period, interval) = numbers(quota);
        let v = self.eval(key, &[op.as_bytes(), limit.as_bytes(), period.as_bytes(), interval.as_bytes()]).await?;
        Ok(decision(&v, quota))
    }

    pub async fn hit(&self, key: &str, quota: Quota) -> Result<Decision, RedisError> {
        self.gcra("hit", key, quota).await
    }

    pub async fn peek(&self, key: &str, quota: Quota) -> Result<Decision, RedisError> {
        self.gcra("peek", key, quota).await
    }

    pub async fn refund(&self, key: &str, quota: Quota) -> Result<(), RedisError> {
        self.gcra("refund", key, quota).await.map(|_| ())
    }

    pub async fn hit_window(&self, key: &str, quota: Quota) -> Result<Decision, RedisError> {
        let (limit, period, interval) = numbers(quota);
        let member = uuid::Uuid::new_v4().to_string();
        let args: [&[u8]; 5] = [b"whit", limit.as_bytes(), period.as_bytes(), interval.as_bytes(), member.as_bytes()];
        let v = self.eval(key, &args).await?;
        Ok(decision(&v, quota))
    }

    pub async fn refund_window(&self, key: &str) -> Result<(), RedisError> {
        self.eval(key, &[b"wrefund"]).await.map(|_| ())
    }
}

/// Connects to `url` and `PING`s (for `/readyz`; the caller bounds the time).
pub async fn ping(url: &str) -> Result<(), RedisError> {
    let mut conn = Conn::open(&Target::parse(url)?).await?;
    match conn.call(&[b"PING"]).await? {
        Reply::Simple(s) if s == "PONG" => Ok(()),
        Reply::Error(e) => Err(server_error(e)),
        _ => Err(RedisError::Protocol),
    }
}

fn server_error(e: String) -> RedisError {
    if e.starts_with("NOAUTH") || e.starts_with("WRONGPASS") {
        RedisError::Auth
    } else {
        // The first word is the error class (ERR, BUSY, LOADING, READONLY...): no data in it.
        RedisError::Server(e.split_whitespace().next().unwrap_or("ERR").to_owned())
    }
}

fn numbers(quota: Quota) -> (String, String, String) {
    (quota.limit.to_string(), quota.period.as_micros().to_string(), quota.interval().as_micros().max(1).to_string())
}

fn decision(v: &[i64], quota: Quota) -> Decision {
    let micros = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
    if v[0] == 1 {
        Decision::Allowed { limit: quota.limit, remaining: u32::try_from(v[2]).unwrap_or(0), reset: micros(v[1]) }
    } else {
        Decision::Limited { limit: quota.limit, retry_after: micros(v[1]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_without_keeping_them() {
        let t = Target::parse("redis://user:p%40ss@cache.internal:6380/2").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_deref(), t.password.as_deref(), t.db),
            ("cache.internal", 6380, Some("user"), Some("p@ss"), Some(2))
        );
        assert!(t.tls.is_none());
        assert!(Target::parse("rediss://:secret@cache.internal").unwrap().tls.is_some());
        assert_eq!(Target::parse("http://cache.internal").err(), Some(RedisError::BadUrl));
        assert_eq!(Target::parse("redis://h/notanumber").err(), Some(RedisError::BadUrl));
    }

    #[test]
    fn errors_never_carry_the_server_message() {
        assert_eq!(server_error("ERR something about a key".to_owned()), RedisError::Server("ERR".to_owned()));
        assert_eq!(server_error("WRONGPASS invalid username-password pair".to_owned()), RedisError::Auth);
    }
}
