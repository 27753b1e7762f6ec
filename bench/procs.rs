//! What the benchmarks share: the release binary, the rows, the mock, and a child's CPU time
//! and peak memory read from `/proc` (Linux only).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Builds the release binary and returns its path; `PROMPTMILL_BENCH_BIN` names another
/// binary to measure instead (nothing is built then). Exits 2 when there is none.
pub fn build() -> PathBuf {
    try_build().unwrap_or_else(|e| {
        eprintln!("bench: {e}");
        std::process::exit(2);
    })
}

fn try_build() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("PROMPTMILL_BENCH_BIN") {
        let bin = PathBuf::from(bin);
        eprintln!("bench: measuring {} (PROMPTMILL_BENCH_BIN)", bin.display());
        // Absolute: the benches run it from other folders.
        return std::fs::canonicalize(&bin)
            .map_err(|e| format!("PROMPTMILL_BENCH_BIN: no binary at {}: {e}", bin.display()));
    }
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("bench: cargo build --release --bin promptmill");
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "promptmill"])
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build --release failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release").join("promptmill");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("no binary at {}", bin.display()))
    }
}

pub fn write_rows(path: &Path, n: usize) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut w = std::io::BufWriter::new(f);
    let mut go = || -> std::io::Result<()> {
        writeln!(w, "id,name,color")?;
        for i in 0..n {
            writeln!(w, "r{i},item {i},color {}", i % 7)?;
        }
        w.flush()
    };
    go().map_err(|e| format!("write {}: {e}", path.display()))
}

/// Starts `promptmill mock-server` on a free loopback port with `latency_ms` before each
/// answer and the flags `extra`; returns the child and the base URL its banner names.
pub fn start_mock(
    bin: &Path,
    latency_ms: u64,
    extra: &[String],
) -> Result<(Child, String), String> {
    let latency = latency_ms.to_string();
    let mut child = Command::new(bin)
        .args(["mock-server", "--port", "0", "--latency-ms", &latency])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the mock: {e}"))?;
    let out = child.stdout.take().ok_or("no mock stdout")?;
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .ok_or_else(|| format!("no loopback URL in the mock banner: {line:?}"))?;
    Ok((child, url.to_string()))
}

pub type Watched = (Option<i32>, f64, u64, String, String);

/// Waits for the child, sampling its peak RSS; reads its CPU time once it is a zombie.
pub fn watch(mut child: Child) -> Result<Watched, String> {
    let pid = child.id();
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut peak = 0u64;
    let cpu = loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak = peak.max(kb);
        }
        if proc_state(pid) == Some('Z') {
            break cpu_secs(pid).unwrap_or(0.0);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = child.wait().map_err(|e| e.to_string())?;
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok((status.code(), cpu, peak, stdout, stderr))
}

pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

pub fn proc_state(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// utime + stime in seconds (fields 14 and 15; clock ticks are 100/s on Linux).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

pub fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
