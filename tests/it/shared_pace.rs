//! What a run waits for before its requests flow at the full rate. A job that states its
//! limits does not wait for a first answer (the probe) before it sends: until an answer says
//! whether the server agrees, its first requests go at that pace, without the one-second
//! burst, in its own buckets and in the shared ones of `[limits] shared` (a real Redis,
//! started on a loopback port by the test). And the mock's first answer is not held up by
//! loading its token tables.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use promptmill::limit::shared::{Grant, Pace};

use crate::common::redis::{block_on, Redis};
use crate::common::{assert_exit, Mock, Workspace};

/// The paced reservation of the Lua script on a real Redis (its clock cannot be paused:
/// counts, not times).
#[test]
fn paced_reservations_in_redis_take_no_burst() {
    let Some(redis) = Redis::start() else { return };
    block_on(async {
        let a = redis.shared("p:req").await;
        let b = redis.shared("p:req").await;
        // 600/min holds 9, but paced asks take none of it: one goes now, each other one
        // interval (~101 ms) after the one before. Redis's clock runs on: each 100 ms spent
        // here (a loaded machine) lets one more go at once.
        let mut free = 0;
        let mut last = Duration::ZERO;
        let start = std::time::Instant::now();
        for i in 0..12 {
            let sh = if i % 2 == 0 { &a } else { &b };
            match sh
                .acquire_at(Some(600), None, 1, Pace::Paced)
                .await
                .unwrap()
            {
                Grant::After(w) if w.is_zero() => free += 1,
                Grant::After(w) => last = w,
                g => panic!("not a reservation: {g:?}"),
            }
        }
        let refilled = (start.elapsed().as_secs_f64() * 10.0).ceil() as usize;
        assert!(
            (1..=1 + refilled).contains(&free),
            "{free} requests let go at once (1, plus {refilled} refilled meanwhile)"
        );
        // The last of twelve waits about eleven intervals, less the time spent here.
        let spent = start.elapsed();
        assert!(
            last + spent >= Duration::from_millis(1000),
            "the twelfth waits {last:?} ({spent:?} spent asking)"
        );
        // The same asks with the burst, on a key of their own: 9 at once.
        let fresh = redis.shared("p:burst").await;
        let mut burst = 0;
        let start = std::time::Instant::now();
        for _ in 0..12 {
            if fresh
                .acquire_at(Some(600), None, 1, Pace::Burst)
                .await
                .unwrap()
                == Grant::After(Duration::ZERO)
            {
                burst += 1;
            }
        }
        let refilled = (start.elapsed().as_secs_f64() * 10.0).ceil() as usize;
        assert!(
            (9..=9 + refilled).contains(&burst),
            "{burst} let go at once from a full bucket"
        );
    });
}

/// Through the real binary: answers take 4.5 s (less than the 5 s a probe holds the others
/// at most), and the job states 3,000 requests/min (four requests take 60 ms). With a probe,
/// nothing but the first request would go until its answer came back.
#[test]
fn a_shard_whose_job_states_its_limit_sends_before_the_first_answer() {
    let Some(redis) = Redis::start() else { return };
    let mock = Mock::start(&["--rpm", "3000", "--latency-ms", "4500"]);
    let limits = format!("requests_per_minute = 3000\nshared = \"{}\"", redis.url());
    let (ws, job) = Workspace::with_job(20, &mock.base_url, &limits);
    let child = ws.spawn_piped(&["run", &job, "--shard", "1/2", "--quiet"]);
    let mut polls = 0;
    let (sent, answered) = loop {
        let s = mock.stats();
        let (sent, answered) = (s["requests"].as_u64(), s["ok"].as_u64());
        if sent.unwrap_or(0) >= 4 || answered.unwrap_or(0) > 0 {
            break (sent.unwrap_or(0), answered.unwrap_or(0));
        }
        assert!(polls < 1200, "the shard never got going: {s}");
        std::thread::sleep(Duration::from_millis(50));
        polls += 1;
    };
    assert_eq!(
        answered, 0,
        "the first answer came before a fourth request was sent ({sent} sent)"
    );
    let out = child.wait_with_output().expect("shard");
    assert_exit(&out, 0);
}

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
