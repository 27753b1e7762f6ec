//! Helpers for integration tests: run the real `promptmill` binary in a temp dir against the
//! built-in mock API on 127.0.0.1, and read what it wrote. Tests read like a user session.
#![allow(dead_code)]

pub mod browser;
pub mod fault_server;
pub mod loopback;
pub mod message_batches;
pub mod prefix;
pub mod redis;
pub mod repo_copy;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The API key a test run gets in `OPENAI_API_KEY` (the mock takes any key unless told one).
pub const TEST_KEY: &str = "sk-test-key-0123456789";

/// The test key as the variable [`Workspace::run`] sets: `(variable, value)`.
pub const OPENAI_KEY: (&str, &str) = ("OPENAI_API_KEY", TEST_KEY);

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
    // Prices come from the built-in snapshot, never from a developer's `prices update`, and
    // "today" is fixed so price-date warnings do not change with the calendar.
    c.env(
        "PROMPTMILL_CACHE_DIR",
        std::env::temp_dir().join("promptmill-tests-no-price-cache"),
    );
    c.env("PROMPTMILL_TODAY", "2026-12-01");
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

/// A job file, section by section: each field is the TOML under that section's header, and
/// an empty one leaves the section out. `JobFile::default()` is the usual job over rows.csv
/// (id, name, color) without `[api]`; a test states the sections it is about.
pub struct JobFile<'a> {
    pub input: &'a str,
    pub prompt: &'a str,
    pub model: &'a str,
    /// `model.schema`, a TOML inline table added to `[model]`; empty for none.
    pub schema: &'a str,
    pub api: &'a str,
    pub limits: &'a str,
    pub output: &'a str,
}

impl Default for JobFile<'_> {
    fn default() -> Self {
        JobFile {
            input: "path = \"rows.csv\"\nid = \"id\"",
            prompt: "system = \"You are terse.\"\nuser = \"Describe {{ name }} in {{ color }}.\"",
            model: "name = \"gpt-4o-mini\"\nmax_tokens = 50",
            schema: "",
            api: "",
            limits: "",
            output: "path = \"out/result.csv\"",
        }
    }
}

impl JobFile<'_> {
    /// The file's text.
    pub fn toml(&self) -> String {
        let model = match self.schema {
            "" => self.model.to_string(),
            schema => format!("{}\nschema = {schema}", self.model),
        };
        [
            ("input", self.input),
            ("prompt", self.prompt),
            ("model", model.as_str()),
            ("api", self.api),
            ("limits", self.limits),
            ("output", self.output),
        ]
        .iter()
        .filter(|(_, body)| !body.is_empty())
        .map(|(name, body)| format!("[{name}]\n{body}\n\n"))
        .collect()
    }
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

    /// A workspace with `n` rows in rows.csv and the usual `job.toml` over them (see
    /// [`Workspace::job`]); returns it with the job's path.
    pub fn with_job(n: usize, base_url: &str, extra_limits: &str) -> (Workspace, String) {
        let ws = Workspace::new();
        ws.csv_rows(n);
        let job = ws.job(base_url, extra_limits);
        (ws, job)
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

    /// Writes `rows.csv` with one row per name, all in `color`: ids r1, r2, ….
    pub fn named_rows<S: AsRef<str>>(&self, names: &[S], color: &str) -> PathBuf {
        let mut s = String::from("id,name,color\n");
        for (i, n) in names.iter().enumerate() {
            s.push_str(&format!("r{},{},{color}\n", i + 1, n.as_ref()));
        }
        self.write("rows.csv", &s)
    }

    /// Writes a job file at `rel`; returns its path as the command line takes it.
    pub fn write_job(&self, rel: &str, job: &JobFile) -> String {
        self.write(rel, &job.toml()).to_string_lossy().into_owned()
    }

    /// Writes the usual `job.toml` (rows.csv, `Describe {{ name }} in {{ color }}.`,
    /// gpt-4o-mini, out/result.csv) pointed at `base_url`, with `extra_limits` added to
    /// `[limits]`; returns its path.
    pub fn job(&self, base_url: &str, extra_limits: &str) -> String {
        self.write_job(
            "job.toml",
            &JobFile {
                api: &format!("base_url = \"{base_url}\""),
                limits: &format!("max_in_flight = 32\n{extra_limits}"),
                ..JobFile::default()
            },
        )
    }

    /// `promptmill` in this folder, with no API key set.
    pub fn command(&self) -> Command {
        let mut c = promptmill();
        c.current_dir(self.dir.path());
        c
    }

    /// Runs `promptmill ARGS` here with the variables in `env` set, and no API key unless
    /// `env` holds one.
    pub fn run_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        self.command()
            .envs(env.iter().copied())
            .args(args)
            .output()
            .expect("run promptmill")
    }

    /// Runs `promptmill ARGS` here with the test key and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(&[OPENAI_KEY], args)
    }

    /// Runs `run JOB --mode batch` with `key` set, which submits and returns while the
    /// batches run (exit 4); returns its output.
    pub fn submit_batch(&self, key: (&str, &str), job: &str) -> Output {
        let out = self.run_env(&[key], &["run", job, "--mode", "batch"]);
        assert_exit(&out, 4);
        out
    }

    /// Runs `collect JOB --wait` with `key` set and a one-second deadline, polling every
    /// 50 ms: the batches still running at the cut are cancelled and their rows sent live.
    /// Asserts it finished (exit 0) and said so; returns its stderr.
    pub fn collect_past_deadline(&self, key: (&str, &str), job: &str) -> String {
        let args = [
            "collect",
            job,
            "--wait",
            "--poll-secs",
            "0.05",
            "--deadline",
            "1s",
        ];
        let out = self.run_env(&[key], &args);
        assert_exit(&out, 0);
        let text = stderr(&out);
        assert!(
            text.contains("deadline: the batches are not done"),
            "{text}"
        );
        text
    }

    /// Runs `run JOB --mode batch` with `key` set, which crashes on purpose at `point`
    /// (`PROMPTMILL_TEST_CRASH_AT`, exit 101).
    pub fn crash_batch_at(&self, key: (&str, &str), job: &str, point: &str) {
        let out = self.run_env(
            &[key, ("PROMPTMILL_TEST_CRASH_AT", point)],
            &["run", job, "--mode", "batch"],
        );
        assert_exit(&out, 101);
    }

    /// Runs `collect JOB` with `key` set until it stops answering 4 (still running); returns
    /// the last output.
    pub fn collect_until_done(&self, key: (&str, &str), job: &str) -> Output {
        for _ in 0..20 {
            let out = self.run_env(&[key], &["collect", job]);
            if out.status.code() != Some(4) {
                return out;
            }
        }
        panic!("batches never finished");
    }

    /// Starts `promptmill ARGS` here with the test key in the background (for killing it);
    /// stdout is dropped, stderr goes to `stderr`.
    pub fn spawn(&self, args: &[&str], stderr: impl Into<Stdio>) -> Child {
        self.command()
            .env("OPENAI_API_KEY", TEST_KEY)
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start promptmill")
    }

    /// Starts `promptmill ARGS` here with the test key in the background, capturing its
    /// stdout and stderr (read them with `wait_with_output`).
    pub fn spawn_piped(&self, args: &[&str]) -> Child {
        self.command()
            .env("OPENAI_API_KEY", TEST_KEY)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start promptmill")
    }

    /// Runs a job file shipped with the repo (`job` relative to the crate root) with
    /// `--mock`, from the crate root as a user in a checkout would, and writes its output to
    /// `output` in this workspace.
    pub fn run_shipped(&self, job: &str, extra: &[&str], output: &str) -> Output {
        promptmill()
            .arg("run")
            .arg(format!(
                "{}/{job}",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../..")
            ))
            .arg("--mock")
            .args(extra)
            .arg("--output")
            .arg(self.path(output))
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

    /// One column of a CSV output, top to bottom.
    pub fn column(&self, rel: &str, name: &str) -> Vec<String> {
        let (h, rows) = self.csv(rel);
        let c = col(&h, name);
        rows.iter().map(|r| r[c].clone()).collect()
    }

    /// A JSON file written here (a summary, the batch state).
    pub fn json(&self, rel: &str) -> Value {
        let text = self.read(rel);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not JSON ({e}): {text}"))
    }

    /// A JSON Lines file written here, one value per line.
    pub fn jsonl(&self, rel: &str) -> Vec<Value> {
        self.read(rel)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{rel}: {e}: {l}")))
            .collect()
    }

    /// Output rows of the CSV at `rel` by id: (status, output text, the column `third`).
    pub fn rows_by_id(&self, rel: &str, third: &str) -> HashMap<String, (String, String, String)> {
        let (h, rows) = self.csv(rel);
        let (id, st, out, other) = (
            col(&h, "id"),
            col(&h, "status"),
            col(&h, "output"),
            col(&h, third),
        );
        rows.iter()
            .map(|r| {
                (
                    r[id].clone(),
                    (r[st].clone(), r[out].clone(), r[other].clone()),
                )
            })
            .collect()
    }

    /// The batch state beside `out/result.csv`.
    pub fn batch_state(&self) -> Value {
        self.json("out/result.batches.json")
    }

    /// The summary JSON beside `out/result.csv`.
    pub fn summary(&self) -> Value {
        self.json("out/result.summary.json")
    }
}

/// `run JOB --mode batch --wait --poll-secs 0` then `extra`: a batch job run to its end,
/// with no pause between polls.
pub fn batch_wait_args<'a>(job: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", job, "--mode", "batch", "--wait", "--poll-secs", "0"];
    args.extend_from_slice(extra);
    args
}

/// A batch run's summary against a live run's of the same rows: the same tokens, at half
/// the (non-zero) cost.
pub fn assert_batch_half_of_live(live: &Value, batch: &Value) {
    assert_eq!(live["prompt_tokens"], batch["prompt_tokens"]);
    assert_eq!(live["completion_tokens"], batch["completion_tokens"]);
    let (l, h) = (
        live["cost_usd"].as_f64().unwrap(),
        batch["cost_usd"].as_f64().unwrap(),
    );
    assert!(l > 0.0);
    assert!((h * 2.0 - l).abs() < 1e-9, "batch {h} is half of live {l}");
}

/// After a crash around a batch's create, running `job` again submits, and `batches` (the
/// mock's, newest first) then holds `count` of them (`why`); the state records the newest,
/// and collecting finishes with all `rows` rows succeeded and creates no batch.
pub fn assert_restart_submits_once(
    ws: &Workspace,
    key: (&str, &str),
    job: &str,
    batches: impl Fn() -> Vec<Value>,
    count: usize,
    rows: u64,
    why: &str,
) {
    ws.submit_batch(key, job);
    let all = batches();
    assert_eq!(all.len(), count, "{why}");
    assert_eq!(ws.batch_state()["chunks"][0]["batch_id"], all[0]["id"]);
    assert_exit(&ws.collect_until_done(key, job), 0);
    assert_eq!(ws.summary()["succeeded"], rows);
    assert_eq!(batches().len(), count);
}

/// Submits `job` over 10 rows as one batch, which `cancel` (given its id) stops half-way
/// (the mock answers half of a cancelled batch): collecting keeps the 5 answered rows (exit 1,
/// says "cancelled"), and the next run submits the other 5 alone, which `counted` of the new
/// batch's `request_counts` holds.
pub fn assert_cancel_resubmits_the_rest(
    ws: &Workspace,
    key: (&str, &str),
    job: &str,
    batches: impl Fn() -> Vec<Value>,
    cancel: impl FnOnce(&str),
    counted: &str,
) {
    ws.submit_batch(key, job);
    cancel(batches()[0]["id"].as_str().unwrap());
    let out = ws.run_env(&[key], &["collect", job]);
    assert_exit(&out, 1);
    assert!(text(&out).contains("cancelled"), "{}", text(&out));
    let s = ws.summary();
    assert_eq!(
        (s["succeeded"].as_u64(), s["pending"].as_u64()),
        (Some(5), Some(5))
    );
    ws.submit_batch(key, job);
    let all = batches();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0]["request_counts"][counted], 5,
        "only the rows the cancel left unanswered"
    );
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

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout parsed as JSON (`--json` reports).
pub fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", text(out)))
}

/// Column index by name.
pub fn col(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

/// Checks `out/result.csv`: every input row r1..rN exactly once, in input order, all `ok`.
pub fn assert_complete_output(ws: &Workspace, n: usize) {
    let (h, rows) = ws.csv("out/result.csv");
    assert_eq!(rows.len(), n, "one output row per input row");
    let id = col(&h, "id");
    let ids: Vec<&str> = rows.iter().map(|r| r[id].as_str()).collect();
    let expected: Vec<String> = (1..=n).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, expected, "each id once, in input order");
    let status = col(&h, "status");
    let not_ok: Vec<_> = rows.iter().filter(|r| r[status] != "ok").collect();
    assert!(
        not_ok.is_empty(),
        "rows not ok: {:?}",
        &not_ok[..not_ok.len().min(3)]
    );
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

/// No file under `dir` but those in `skip`, read as bytes, holds `needle` (a key that must
/// not leak; the message does not repeat it).
pub fn assert_absent(dir: &Path, needle: &str, skip: &[&Path]) {
    for f in all_files(dir) {
        if skip.iter().any(|s| *s == f) {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains(needle), "{} holds the key", f.display());
    }
}

/// Starts the mock in this process on an ephemeral loopback port, set up with the flags
/// `promptmill mock-server` takes (e.g. `["--rpm", "600"]`), as the binary sets it up.
pub async fn start_mock_in_process(flags: &[&str]) -> promptmill_mock::MockServer {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        config: promptmill_mock::MockConfig,
    }
    let args = std::iter::once("mock-server").chain(flags.iter().copied());
    let config = Flags::try_parse_from(args)
        .unwrap_or_else(|e| panic!("mock flags {flags:?}: {e}"))
        .config;
    promptmill_mock::MockServer::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}
