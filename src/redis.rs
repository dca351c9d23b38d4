//! A minimal Redis readiness probe (RESP `AUTH` + `PING` over TCP), so `/readyz` can check Redis
//! without a client library. The rate limiter brings a full client when it needs one.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PingError {
    #[error("invalid redis URL")]
    BadUrl,
    #[error("unreachable")]
    Unreachable,
    #[error("timed out")]
    Timeout,
    #[error("authentication failed")]
    Auth,
    #[error("unexpected reply")]
    Protocol,
}

fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

async fn read_line(stream: &mut TcpStream) -> Result<String, PingError> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n") {
        if buf.len() > 512 || stream.read(&mut byte).await.map_err(|_| PingError::Unreachable)? == 0 {
            return Err(PingError::Protocol);
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).trim_end().to_owned())
}

/// `PING`s the server at `url` (`redis://[user:password@]host[:port][/db]`) within `timeout`.
pub async fn ping(url: &str, timeout: Duration) -> Result<(), PingError> {
    let url = Url::parse(url).map_err(|_| PingError::BadUrl)?;
    if url.scheme() != "redis" {
        return Err(PingError::BadUrl);
    }
    let host = url.host_str().ok_or(PingError::BadUrl)?.trim_matches(['[', ']']).to_owned();
    let port = url.port().unwrap_or(6379);
    let decode =
        |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().map(|c| c.into_owned()).map_err(|_| PingError::BadUrl);
    let user = decode(url.username())?;
    let password = url.password().map(decode).transpose()?;
    tokio::time::timeout(timeout, async move {
        let mut stream = TcpStream::connect((host.as_str(), port)).await.map_err(|_| PingError::Unreachable)?;
        if let Some(pw) = password {
            let auth = if user.is_empty() { command(&["AUTH", &pw]) } else { command(&["AUTH", &user, &pw]) };
            stream.write_all(&auth).await.map_err(|_| PingError::Unreachable)?;
            if read_line(&mut stream).await? != "+OK" {
                return Err(PingError::Auth);
            }
        }
        stream.write_all(&command(&["PING"])).await.map_err(|_| PingError::Unreachable)?;
        match read_line(&mut stream).await?.as_str() {
            "+PONG" => Ok(()),
            reply if reply.starts_with("-NOAUTH") => Err(PingError::Auth),
            _ => Err(PingError::Protocol),
        }
    })
    .await
    .map_err(|_| PingError::Timeout)?
}
