//! What paying for a shared prefix once saves: one job whose rows share long system prompts,
//! run against `promptmill mock-server` on 127.0.0.1 with `cache.prefix` on (primers,
//! `prompt_cache_key`, `cache_control`) and off, on the OpenAI and the Anthropic shape. The
//! mock caches prompts as those providers do (see README, Prompt caching).
//!
//! ```text
//! cargo bench --bench prime                # 2,000 rows per run
//! cargo bench --bench prime -- --quick     # 400 rows
//! PROMPTMILL_BENCH_BIN=target/debug/promptmill cargo bench --bench prime   # that binary
//! ```
//!
//! Each case is a fresh mock and a fresh folder: rows in four groups (`kind` a–d, in turn),
//! each group's system prompt ~2,000 tokens long and its own, the user turn the row's. The
//! table shows the estimate's expected cost with caching, what the run paid, the prompt
//! tokens read from the cache (of those a cache could serve: each group's prefix on every
//! request after its first), writes, and the saving against the same job with
//! `cache.prefix = false`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

// Each bench uses some of the shared helpers.
#[allow(dead_code)]
mod procs;

use procs::{build, start_mock, watch};

/// The mock's answer time.
const LATENCY_MS: u64 = 200;
const GROUPS: [&str; 4] = ["a", "b", "c", "d"];

struct Shape {
    name: &'static str,
    provider: &'static str,
    model: &'static str,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "openai",
        provider: "openai",
        model: "gpt-4o-mini",
    },
    Shape {
        name: "anthropic",
        provider: "anthropic",
        model: "claude-sonnet-4-5",
    },
];

/// One run's figures.
struct Run {
    requests: u64,
    prompt_tokens: u64,
    cached: u64,
    written: u64,
    cost: f64,
    estimate: f64,
    /// The prompt tokens a cache could serve (the estimate's, with `cache.prefix` on).
    eligible: Option<u64>,
    wall: f64,
    cpu: f64,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rows = if quick { 400 } else { 2000 };
    let bin = build();
    println!(
        "| case | cache.prefix | requests | prompt tokens | read from cache (of eligible) | \
         cache writes | estimate with caching | paid | saving vs off | wall s | CPU s/1k req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for shape in SHAPES {
        let off = match run(&bin, shape, rows, false) {
            Ok(r) => r,
            Err(e) => {
                println!("| {} | off | error: {e} |", shape.name);
                continue;
            }
        };
        match run(&bin, shape, rows, true) {
            Ok(on) => {
                println!("{}", line(shape, "off", &off, &off, on.eligible));
                println!("{}", line(shape, "on", &on, &off, on.eligible));
            }
            Err(e) => println!("| {} | on | error: {e} |", shape.name),
        }
        let _ = std::io::stdout().flush();
    }
}

fn line(shape: &Shape, prefix: &str, r: &Run, off: &Run, eligible: Option<u64>) -> String {
    let share = match eligible {
        Some(e) if e > 0 => format!("{:.1}%", r.cached as f64 * 100.0 / e as f64),
        _ => "-".into(),
    };
    let saving = if off.cost > 0.0 {
        format!(
            "${:.4} ({:.0}%)",
            off.cost - r.cost,
            (off.cost - r.cost) * 100.0 / off.cost
        )
    } else {
        "-".into()
    };
    format!(
        "| {} {} | {prefix} | {} | {} | {} ({share}) | {} | ${:.4} | ${:.4} | {saving} | {:.1} | \
         {:.3} |",
        shape.name,
        shape.model,
        r.requests,
        r.prompt_tokens,
        r.cached,
        r.written,
        r.estimate,
        r.cost,
        r.wall,
        r.cpu * 1000.0 / r.requests.max(1) as f64,
    )
}

/// A ~2,000-token system prompt of its own for group `kind`.
fn guide(kind: &str) -> String {
    let mut s = format!("You write product copy for brand {kind}. Follow every rule.");
    for i in 0..150 {
        s.push_str(&format!(
            " Rule {kind}{i}: keep sentence {i} short, concrete and friendly, no jargon."
        ));
    }
    s
}

fn run(bin: &Path, shape: &Shape, rows: usize, prefix: bool) -> Result<Run, String> {
    let (mut mock, base_url) = start_mock(bin, LATENCY_MS, &[])?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut csv = String::from("id,name,kind\n");
    for i in 0..rows {
        csv.push_str(&format!("r{i},item {i},{}\n", GROUPS[i % GROUPS.len()]));
    }
    std::fs::write(dir.path().join("rows.csv"), csv).map_err(|e| e.to_string())?;
    let mut system = String::new();
    for (i, kind) in GROUPS.iter().enumerate() {
        let tag = if i == 0 { "if" } else { "elif" };
        system.push_str(&format!("{{% {tag} kind == '{kind}' %}}{}", guide(kind)));
    }
    system.push_str("{% endif %}");
    std::fs::write(dir.path().join("system.j2"), system).map_err(|e| e.to_string())?;
    let job = format!(
        "[input]\npath = \"rows.csv\"\nid = \"id\"\n\n[prompt]\nsystem_template = \
         \"system.j2\"\nuser = \"Describe {{{{ name }}}}.\"\n\n[model]\nname = \"{}\"\n\
         max_tokens = 20\n\n[api]\nprovider = \"{}\"\nbase_url = \"{base_url}\"\n\n[limits]\n\
         max_in_flight = 64\n\n[cache]\nprefix = {prefix}\n\n[output]\npath = \"out.jsonl\"\n",
        shape.model, shape.provider
    );
    std::fs::write(dir.path().join("job.toml"), job).map_err(|e| e.to_string())?;
    let promptmill = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args)
            .current_dir(dir.path())
            .env("OPENAI_API_KEY", "sk-bench-0000")
            .env("ANTHROPIC_API_KEY", "sk-ant-bench-0000")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("PROMPTMILL_LIMITS_SHARED")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    // The mock answers 20 tokens: the estimate is told so, to compare like with like.
    let est = promptmill(&[
        "estimate",
        "job.toml",
        "--json",
        "--assume-output-tokens",
        "20",
    ])
    .output()
    .map_err(|e| format!("cannot run the estimate: {e}"))?;
    let e: serde_json::Value = serde_json::from_slice(&est.stdout).map_err(|err| {
        format!(
            "estimate exited {:?} ({err}): {}",
            est.status.code(),
            String::from_utf8_lossy(&est.stderr)
        )
    })?;
    let estimate = e["prompt_cache"]["cost"]["expected_usd"]
        .as_f64()
        .or_else(|| e["cost"]["expected_usd"].as_f64())
        .unwrap_or(f64::NAN);
    let child = promptmill(&["run", "job.toml", "--json", "--quiet"])
        .spawn()
        .map_err(|e| format!("cannot start promptmill: {e}"))?;
    let (status, cpu, _peak, stdout, stderr) = watch(child)?;
    let _ = mock.kill();
    let _ = mock.wait();
    let s: serde_json::Value = serde_json::from_str(&stdout)
        .map_err(|e| format!("promptmill exited {status:?}, no summary ({e}): {stderr}"))?;
    if s["succeeded"].as_u64() != Some(rows as u64) {
        return Err(format!("not every row succeeded: {s}"));
    }
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    Ok(Run {
        requests: n(&s["requests"]),
        prompt_tokens: n(&s["prompt_tokens"]),
        cached: n(&s["cached_tokens"]),
        written: n(&s["prompt_cache"]["cache_write_tokens"]),
        cost: s["cost_this_run_usd"].as_f64().unwrap_or(f64::NAN),
        estimate,
        // Each group's prefix on every request after its first (OpenAI: in whole
        // 128-token blocks), as the estimate counts it.
        eligible: e["prompt_cache"]["cached_tokens"].as_u64(),
        wall: s["wall_seconds"].as_f64().unwrap_or(f64::NAN),
        cpu,
    })
}
