//! What a run waits for before its requests flow at the full rate: the mock's first answer
//! is not held up by loading its token tables.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// `mock-server` loads its o200k tables (~50 MB resident) before it prints its URL, not on
/// the first request: a first answer held up by them would be followed by every request
/// that came meanwhile, counted against the rate limits at once.
#[test]
fn the_mock_server_holds_its_token_tables_before_it_says_where_it_listens() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_promptmill"))
        .args(["mock-server", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start mock-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("mock stdout"))
        .read_line(&mut line)
        .expect("read mock banner");
    assert!(line.contains("http://127.0.0.1:"), "{line:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let status = status.expect("the mock's /proc status");
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    assert!(
        rss_kb >= 40 * 1024,
        "{rss_kb} kB resident: the token tables are not loaded yet"
    );
}
