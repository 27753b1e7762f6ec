//! A real headless Chromium for page tests, driven through chromedriver (WebDriver) on an
//! ephemeral 127.0.0.1 port. Outside CI a test skips with a printed message when Chromium or
//! chromedriver is missing; with `CI=true` it fails instead, so CI never passes by skipping.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

/// Where Debian's `chromium` and `chromium-driver` packages put the two programs; the
/// variables override them.
const CHROMIUM: (&str, &str) = ("PROMPTMILL_CHROMIUM", "/usr/bin/chromium");
const CHROMEDRIVER: (&str, &str) = ("PROMPTMILL_CHROMEDRIVER", "/usr/bin/chromedriver");

fn program((var, default): (&str, &str)) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// A chromedriver process and a session in a fresh headless Chromium profile.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// One entry of the browser's console log (console calls, uncaught errors, CSP refusals).
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub level: String,
    pub message: String,
}

/// chromedriver's log endpoint: the browser's console since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": "browser" }).to_string()),
        )
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `None` (after printing why) when they are
    /// not installed and this is not CI. Under `CI=true` a missing browser fails the test.
    pub async fn start() -> Option<Browser> {
        let (chromium, driver) = (program(CHROMIUM), program(CHROMEDRIVER));
        let missing: Vec<String> = [&chromium, &driver]
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            let why = format!(
                "headless Chromium is needed for this test and {} is missing \
                 (apt-get install -y chromium chromium-driver, or set PROMPTMILL_CHROMIUM and \
                 PROMPTMILL_CHROMEDRIVER)",
                missing.join(" and ")
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true: {why}");
            }
            eprintln!("SKIPPED (not in CI): {why}");
            return None;
        }
        // Its own process group: the Chromium it starts is in it too, so a failed test that
        // never closes the session still ends both (see Drop).
        let mut child = Command::new(&driver)
            .process_group(0)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
        let port = driver_port(&mut child);
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
            // A dialog stays open for the test to find instead of being dismissed.
            "unhandledPromptBehavior": "ignore",
        });
        let Value::Object(caps) = caps else {
            panic!("capabilities are an object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("chromedriver session: {e}"));
        Some(Browser {
            client,
            driver: child,
            _profile: profile,
        })
    }

    /// Opens a local file.
    pub async fn open(&self, file: &Path) {
        let url = url::Url::from_file_path(file).expect("absolute path");
        self.client.goto(url.as_str()).await.expect("load page");
    }

    /// The console entries since the last call.
    pub async fn log(&self) -> Vec<LogEntry> {
        let v = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("browser log");
        v.as_array()
            .unwrap_or_else(|| panic!("log is not a list: {v}"))
            .iter()
            .map(|e| LogEntry {
                level: e["level"].as_str().unwrap_or_default().to_string(),
                message: e["message"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    /// Errors in the console since the last call (console.error, uncaught exceptions, CSP).
    pub async fn errors(&self) -> Vec<LogEntry> {
        self.log()
            .await
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .collect()
    }

    /// The text of an open alert/confirm/prompt dialog, if one is open.
    pub async fn dialog(&self) -> Option<String> {
        match self.client.get_alert_text().await {
            Ok(text) => Some(text),
            Err(e) if e.is_no_such_alert() => None,
            Err(e) => panic!("asking for a dialog: {e}"),
        }
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Ends the session, then chromedriver and anything left of its Chromium (Drop).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group is chromedriver's own (process_group(0) above): it and its Chromium.
        if let Ok(pid) = libc::pid_t::try_from(self.driver.id()) {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.driver.wait();
    }
}

/// Reads chromedriver's banner until it says which port it took, then keeps draining its
/// stdout on a thread (so it never blocks on a full pipe).
fn driver_port(child: &mut Child) -> u16 {
    let out = child.stdout.take().expect("chromedriver stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut tx = Some(tx);
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Ok(rest.trim_end_matches('.').trim().to_string()));
                }
            } else if tx.is_some() {
                seen.push_str(&line);
                seen.push('\n');
            }
        }
        if let Some(tx) = tx {
            let _ = tx.send(Err(seen));
        }
    });
    match rx.recv() {
        Ok(Ok(port)) => port
            .parse()
            .unwrap_or_else(|_| panic!("chromedriver port {port:?}")),
        Ok(Err(seen)) => panic!("chromedriver stopped before saying its port:\n{seen}"),
        Err(_) => panic!("chromedriver output reader died"),
    }
}
