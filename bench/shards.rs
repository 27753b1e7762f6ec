//! Many processes, one key: shards sharing one rate limit (and one budget) through Redis,
//! against one `promptmill mock-server --rpm 3000` on 127.0.0.1 that enforces the limit in
//! one-second slices (50 requests a second at most).
//!
//! ```text
//! cargo bench --bench shards                  # 3,000 rows per case
//! cargo bench --bench shards -- --quick       # 600 rows: a quick check
//! PROMPTMILL_BENCH_BIN=target/debug/promptmill cargo bench --bench shards   # measure that binary
//! ```
//!
//! Case 1 runs one job as 4 shards (`run --shard K/4`); case 2 runs two independent jobs
//! (their own folders, inputs and outputs) as 2 shards each. All four processes of a case
//! share `[limits] shared` (one key) and `[budget] shared = true` in one `redis-server`
//! started on a free loopback port (`redis-server` must be installed). Then `merge` writes
//! each job's output, and every input id is looked for in it: rows lost or duplicated.
//! CPU time and peak RSS are read from `/proc` for each process (Linux only).

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod procs;

use procs::{build, cpu_secs, start_mock, watch, write_rows};

/// The mock's limit (requests per minute), told to every job too.
const RPM: u32 = 3000;
const LATENCY_MS: u64 = 200;

struct Case {
    name: &'static str,
    what: &'static str,
    /// Jobs, each run as this many shards.
    jobs: usize,
    shards: u32,
}

const CASES: &[Case] = &[
    Case {
        name: "case1",
        what: "one job, 4 shards",
        jobs: 1,
        shards: 4,
    },
    Case {
        name: "case2",
        what: "2 jobs x 2 shards, one key",
        jobs: 2,
        shards: 2,
    },
];

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rows = if quick { 600 } else { 3000 };
    let bin = build();
    println!(
        "| case | processes | requests | wall s | min s | utilization | 429s | retries | \
         failed | lost / duplicated after merge | CPU s/1k req (promptmill + mock) | peak \
         RSS MB (largest process) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for case in CASES {
        match run_case(&bin, case, rows) {
            Ok(row) => println!("{row}"),
            Err(e) => println!("| {} {} | error: {e} |", case.name, case.what),
        }
        let _ = std::io::stdout().flush();
    }
}

/// A `redis-server` on a free loopback port, saving nothing, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Result<Redis, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server (is it installed?): {e}"))?;
        let r = Redis {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(r);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!("redis-server on port {port} never answered"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one shard process reported.
#[derive(Default)]
struct Shard {
    requests: u64,
    rate_limited: u64,
    retries: u64,
    failed: u64,
    cpu: f64,
    peak_kb: u64,
}

fn run_case(bin: &Path, c: &Case, rows: usize) -> Result<String, String> {
    let redis = Redis::start()?;
    let (mut mock, base_url) = start_mock(bin, LATENCY_MS, &["--rpm".into(), RPM.to_string()])?;
    let per_job = rows / c.jobs;
    let mut dirs = Vec::new();
    for j in 0..c.jobs {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        write_rows(&dir.path().join("rows.csv"), per_job)?;
        let job = format!(
            "[input]\npath = \"rows.csv\"\nid = \"id\"\n\n[prompt]\nuser = \"Job {j}: describe \
             {{{{ name }}}} in {{{{ color }}}}.\"\n\n[model]\nname = \"gpt-4o-mini\"\n\
             max_tokens = 20\n\n[api]\nbase_url = \"{base_url}\"\n\n[limits]\n\
             max_in_flight = 64\nrequests_per_minute = {RPM}\nshared = \"{}\"\n\
             shared_key = \"bench\"\n\n[budget]\nmax_usd_total = 100\nshared = true\n\n\
             [output]\npath = \"out.jsonl\"\n",
            redis.url()
        );
        std::fs::write(dir.path().join("job.toml"), job).map_err(|e| e.to_string())?;
        dirs.push(dir);
    }
    let start = Instant::now();
    let mut children = Vec::new();
    for dir in &dirs {
        for k in 1..=c.shards {
            let child = Command::new(bin)
                .args(["run", "job.toml", "--json", "--quiet", "--shard"])
                .arg(format!("{k}/{}", c.shards))
                .current_dir(dir.path())
                .env("OPENAI_API_KEY", "sk-bench-0000")
                .env_remove("OPENAI_BASE_URL")
                .env_remove("PROMPTMILL_LIMITS_SHARED")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start promptmill: {e}"))?;
            children.push(std::thread::spawn(move || watch(child)));
        }
    }
    let mut shards = Vec::new();
    for t in children {
        let (status, cpu, peak_kb, stdout, stderr) = t
            .join()
            .map_err(|_| "a watcher thread panicked".to_string())??;
        let s: serde_json::Value = serde_json::from_str(&stdout).map_err(|e| {
            format!("a shard exited {status:?}, no summary on stdout ({e}): {stderr}")
        })?;
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        shards.push(Shard {
            requests: n("requests"),
            rate_limited: n("rate_limited"),
            retries: n("retries"),
            failed: n("failed"),
            cpu,
            peak_kb,
        });
    }
    let wall = start.elapsed().as_secs_f64();
    let mock_cpu = cpu_secs(mock.id()).unwrap_or(0.0);
    let _ = mock.kill();
    let _ = mock.wait();

    let (mut lost, mut duplicated) = (0usize, 0usize);
    for dir in &dirs {
        let (l, d) = merged(bin, dir.path(), per_job)?;
        lost += l;
        duplicated += d;
    }
    let sum = |f: fn(&Shard) -> u64| shards.iter().map(f).sum::<u64>();
    let requests = sum(|s| s.requests);
    let refused = sum(|s| s.rate_limited);
    let cpu: f64 = shards.iter().map(|s| s.cpu).sum();
    let peak = shards.iter().map(|s| s.peak_kb).max().unwrap_or(0);
    let total = per_job * c.jobs;
    // The server's one-second slice goes at once, the rest at the limit, plus one answer.
    let per_sec = f64::from(RPM) / 60.0;
    let min = (total as f64 - per_sec.floor()).max(0.0) / per_sec + LATENCY_MS as f64 / 1000.0;
    let per_k = |cpu: f64| cpu * 1000.0 / requests.max(1) as f64;
    Ok(format!(
        "| {} {} | {} | {requests} | {wall:.1} | {min:.1} | {:.3} ({:.2}x min) | {refused} \
         ({:.2}%) | {} | {} | {lost} / {duplicated} | {:.3} + {:.3} | {:.1} |",
        c.name,
        c.what,
        shards.len(),
        total as f64 / wall / per_sec,
        wall / min,
        refused as f64 * 100.0 / requests.max(1) as f64,
        sum(|s| s.retries),
        sum(|s| s.failed),
        per_k(cpu),
        per_k(mock_cpu),
        peak as f64 / 1024.0,
    ))
}

/// Runs `merge` in `dir` and counts the input ids (`r0`…) missing from its output, or in it
/// more than once.
fn merged(bin: &Path, dir: &Path, rows: usize) -> Result<(usize, usize), String> {
    let out = Command::new(bin)
        .args(["merge", "job.toml"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run merge: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "merge exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let path: PathBuf = dir.join("out.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        if v["status"] == "ok" {
            if let Some(id) = v["id"].as_str() {
                *seen.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    let lost = (0..rows)
        .filter(|i| !seen.contains_key(&format!("r{i}")))
        .count();
    let duplicated = seen.values().map(|n| n.saturating_sub(1)).sum();
    Ok((lost, duplicated))
}
