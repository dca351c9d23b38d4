//! The real `tollgate` binary as a child process: run a command, or `serve` on port 0 and read its
//! JSON log lines.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// The binary in an empty directory with only the given environment (no .env, no tollgate.toml).
pub fn tollgate(dir: &std::path::Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().current_dir(dir).env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// What a finished command printed, stdout then stderr.
pub fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A running `tollgate serve`, killed and reaped on drop.
pub struct Server {
    pub child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
    pub addr: String,
    /// The log lines up to and including `listening`.
    pub startup: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tollgate serve` on port 0 in `dir`; returns once it logs the address it listens on.
pub fn serve(dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
    serve_with(dir, env, &[])
}

/// `tollgate serve <args>` on port 0 in `dir`; returns once it logs the address it listens on.
pub fn serve_with(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Server {
    let mut cmd = tollgate(dir, env);
    cmd.env("TOLLGATE_BIND", "127.0.0.1:0").arg("serve").args(args);
    start(cmd)
}

/// Spawns `cmd` (a `serve`), reading its log lines; returns once it logs the address it listens on.
pub fn start(mut cmd: Command) -> Server {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // From here on Drop kills and reaps the child, whatever happens.
    let mut server = Server { child, lines, addr: String::new(), startup: Vec::new() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.addr.is_empty() {
        let line =
            server.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("server logs `listening`");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("log lines are JSON: {line}"));
        if v["message"] == "listening" {
            server.addr = v["addr"].as_str().unwrap().to_owned();
        }
        server.startup.push(line);
    }
    server
}

/// The log lines that arrive until none has for `wait`.
pub fn drain(lines: &std::sync::mpsc::Receiver<String>, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(l) = lines.recv_timeout(wait) {
        out.push(l);
    }
    out
}
