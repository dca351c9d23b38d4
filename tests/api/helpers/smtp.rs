//! A real SMTP server (Python's aiosmtpd, `smtp_server.py` beside this file) as a child process:
//! plain, STARTTLS or implicit TLS with a test certificate, AUTH, scripted refusals; what it
//! accepted, parsed by Python's `email` package, one JSON value per message.
//!
//! aiosmtpd comes from PyPI: `.ci/run` installs it into `target/email-venv`; by hand:
//! `python3 -m venv target/email-venv && target/email-venv/bin/pip install 'aiosmtpd>=1.4,<2'`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::skip::{in_ci, skip};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/helpers/smtp_server.py");
const VENV_PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/email-venv/bin/python3");

/// A Python that can import aiosmtpd: the project's venv first, then `python3` on PATH.
fn python() -> Option<PathBuf> {
    [PathBuf::from(VENV_PYTHON), PathBuf::from("python3")]
        .into_iter()
        .find(|p| Command::new(p).args(["-c", "import aiosmtpd"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success()))
}

/// The running server; killed and reaped on drop.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

/// A certificate for 127.0.0.1 and localhost, and where its PEM files are (the certificate is
/// its own CA: give its path as `TOLLGATE_SMTP_CA_FILE`).
pub struct TestCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCertificate {
    pub fn generate() -> TestCertificate {
        TestCertificate::for_names(&["127.0.0.1", "localhost"])
    }

    /// A certificate for other names only (a server that is not the one configured).
    pub fn for_names(names: &[&str]) -> TestCertificate {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let (cert, key) = (dir.path().join("smtp-cert.pem"), dir.path().join("smtp-key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
        TestCertificate { cert, key, _dir: dir }
    }

    /// `--cert … --key …` for [`SmtpServer::start`].
    pub fn args(&self) -> Vec<String> {
        vec!["--cert".into(), path(&self.cert), "--key".into(), path(&self.key)]
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl SmtpServer {
    /// Starts the server with `args` (see smtp_server.py); `None` after a loud skip when aiosmtpd
    /// is not installed (a failure in CI).
    pub fn start(test: &str, args: &[String]) -> Option<SmtpServer> {
        let Some(python) = python() else {
            let why = "aiosmtpd not found (python3 -m venv target/email-venv && target/email-venv/bin/pip install aiosmtpd)";
            assert!(!in_ci(), "aiosmtpd must be installed in CI (.ci/run installs it): {why}");
            skip(test, why);
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        let mut child = Command::new(python)
            .arg(SCRIPT)
            .arg("--out")
            .arg(&out)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its complaints (a client refusing its certificate) are expected, and kept out of
            // the test output; a server that fails to start shows them.
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let port = first.trim().strip_prefix("PORT ").and_then(|p| p.parse().ok()).unwrap_or_else(|| {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            panic!("the SMTP server did not start: {first:?}\n{log}")
        });
        Some(SmtpServer { child, port, out, _dir: dir })
    }

    /// The user name of every AUTH attempt so far (successful or not), in order.
    pub fn auth_attempts(&self) -> Vec<String> {
        let mut path = self.out.clone().into_os_string();
        path.push(".auth");
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Every message accepted so far, in order.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
