//! How fast is the dry run? Generates 100,000 rows of ~1 KB in a temp dir, runs the real
//! binary's `estimate` on them, and prints rows, wall time, rows/s and the child's peak RSS.
//!
//! `cargo bench --bench estimate` (release build). `ESTIMATE_BENCH_ROWS=N` changes the size.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::Command;
use std::time::Instant;

const WORDS: &[&str] = &[
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "labore",
    "magna",
    "aliqua",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "aliquip",
    "commodo",
    "consequat",
    "Duis",
    "aute",
    "irure",
    "reprehenderit",
    "voluptate",
    "velit",
    "esse",
    "cillum",
    "fugiat",
    "nulla",
    "pariatur",
    "Excepteur",
    "sint",
    "occaecat",
    "cupidatat",
    "proident",
    "sunt",
    "culpa",
    "officia",
    "deserunt",
    "mollit",
    "anim",
    "laborum",
    "42",
    "2026",
    "café",
    "naïve",
    "Straße",
    "日本語",
    "—",
    "(x)",
    "$19.99",
    "e-mail",
    "don't",
];

/// Peak resident set size of waited-for children, in KiB (Linux: ru_maxrss is in KiB).
fn children_peak_rss_kib() -> Option<i64> {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    (rc == 0).then_some(ru.ru_maxrss)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we do not use.
    let rows: usize = std::env::var("ESTIMATE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("rows.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).expect("create rows.csv"));
    writeln!(f, "id,title,body").expect("write");
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut bytes = 0usize;
    for i in 0..rows {
        let mut body = String::with_capacity(1100);
        while body.len() < 1000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let w = WORDS[(seed >> 33) as usize % WORDS.len()];
            let _ = write!(body, "{w} ");
        }
        bytes += body.len();
        writeln!(f, "r{i},Item {i},\"{}\"", body.trim_end()).expect("write");
    }
    drop(f);
    std::fs::write(
        dir.path().join("job.toml"),
        r#"
[input]
path = "rows.csv"
id = "id"

[prompt]
system = "You summarize product descriptions in one sentence."
user = "Title: {{ title }}\n\n{{ body }}"

[model]
name = "gpt-4o-mini"
max_tokens = 100

[limits]
requests_per_minute = 5000
tokens_per_minute = 2000000

[output]
path = "out.csv"
"#,
    )
    .expect("write job");

    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_promptmill"))
        .current_dir(dir.path())
        .args(["estimate", "job.toml", "--json"])
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("run promptmill estimate");
    let wall = start.elapsed().as_secs_f64();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        panic!("estimate failed: {:?}", out.status);
    }
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("estimate JSON");
    assert_eq!(e["rows"].as_u64(), Some(rows as u64));
    let rss = children_peak_rss_kib()
        .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "estimate: {rows} rows of ~{} B, {cores} cores",
        bytes / rows.max(1)
    );
    println!("| rows | prompt tokens | wall s | rows/s | peak RSS |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {rows} | {} | {wall:.2} | {:.0} | {rss} |",
        e["prompt_tokens"]["total"],
        rows as f64 / wall
    );
}
