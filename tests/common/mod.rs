//! Helpers for integration tests: run the real `promptmill` binary in a temp dir against the
//! built-in mock API on 127.0.0.1, and read what it wrote. Tests read like a user session.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The binary under test.
pub fn promptmill() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_promptmill"));
    // Nothing from the developer's environment may point a test at a real provider.
    for var in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_ENDPOINT",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "RUST_LOG",
    ] {
        c.env_remove(var);
    }
    c
}

/// A `promptmill mock-server` child process on an ephemeral loopback port.
pub struct Mock {
    child: Child,
    pub base_url: String,
    pub addr: String,
}

impl Mock {
    /// Starts the mock with extra flags (e.g. `["--rpm", "600"]`).
    pub fn start(args: &[&str]) -> Mock {
        let mut child = promptmill()
            .args(["mock-server", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mock-server");
        let stdout = child.stdout.take().expect("mock stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read mock banner");
        let base_url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in mock banner: {line:?}"))
            .to_string();
        let addr = base_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        assert!(
            addr.starts_with("127.0.0.1:"),
            "mock must be on loopback: {addr}"
        );
        Mock {
            child,
            base_url,
            addr,
        }
    }

    /// The mock's counters (`GET /_mock/stats`).
    pub fn stats(&self) -> serde_json::Value {
        let body = http(&self.addr, "GET", "/_mock/stats");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats {body:?}: {e}"))
    }

    /// One counter.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats()[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no stat {name}: {}", self.stats()))
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 request over loopback (tests need no HTTP client of their own).
pub fn http(addr: &str, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect mock");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    body.to_string()
}

/// A temp folder holding a job, its input and its output.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, content).unwrap();
        p
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Writes `rows.csv` with `n` rows: id,name,color.
    pub fn csv_rows(&self, n: usize) -> PathBuf {
        let mut s = String::from("id,name,color\n");
        for i in 1..=n {
            s.push_str(&format!("r{i},item {i},color {}\n", i % 7));
        }
        self.write("rows.csv", &s)
    }

    /// Writes `job.toml` reading rows.csv, pointed at `base_url`, with extra TOML appended
    /// to the given sections.
    pub fn job(&self, base_url: &str, extra_limits: &str) -> PathBuf {
        self.write(
            "job.toml",
            &format!(
                r#"
[input]
path = "rows.csv"
id = "id"

[prompt]
system = "You are terse."
user = "Describe {{{{ name }}}} in {{{{ color }}}}."

[model]
name = "gpt-4o-mini"
max_tokens = 50

[api]
base_url = "{base_url}"

[limits]
max_in_flight = 32
{extra_limits}

[output]
path = "out/result.csv"
"#
            ),
        )
    }

    /// Runs `promptmill` with a test key and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        promptmill()
            .current_dir(self.dir.path())
            .env("OPENAI_API_KEY", "sk-test-key-0123456789")
            .args(args)
            .output()
            .expect("run promptmill")
    }

    /// Reads a CSV output into header + rows.
    pub fn csv(&self, rel: &str) -> (Vec<String>, Vec<Vec<String>>) {
        let mut r = csv::Reader::from_path(self.path(rel)).unwrap();
        let h = r.headers().unwrap().iter().map(str::to_string).collect();
        let rows = r
            .records()
            .map(|x| x.unwrap().iter().map(str::to_string).collect())
            .collect();
        (h, rows)
    }

    /// The summary JSON beside `out/result.csv`.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::from_str(&self.read("out/result.summary.json")).unwrap()
    }
}

/// Panics with the whole stdout/stderr unless the exit code matches.
pub fn assert_exit(out: &Output, code: i32) {
    if out.status.code() != Some(code) {
        panic!(
            "expected exit {code}, got {:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// stdout + stderr as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Column index by name.
pub fn col(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

/// Every file under `dir`, recursively (for leak checks).
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
