//! Snapshots of what users read: `--help` of the program and of every subcommand, and the
//! summary table a mock run prints. A change to any of them shows up as a snapshot diff to
//! review (`cargo insta review`), not as a silent change.
//!
//! The text must not depend on the machine: clap would wrap help at the terminal's width
//! (with its `wrap_help` feature, read from `COLUMNS` when stdout is not a terminal), so every
//! command here runs with `COLUMNS=100`; and the run's wall time and achieved rates are
//! redacted after their shape is checked.

use crate::common;
use crate::common::repo_copy;

use std::process::{Command, Output};

use common::{assert_exit, promptmill};

/// `promptmill ARGS` with a fixed terminal width and no colour.
fn cli() -> Command {
    let mut c = promptmill();
    c.env("COLUMNS", "100")
        .env("LINES", "50")
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR_FORCE");
    c
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommand names listed under "Commands:" in the top-level help.
fn subcommands(help: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line == "Commands:" {
            in_commands = true;
            continue;
        }
        if in_commands {
            // Entries are indented; the section ends at the first line that is not.
            if !line.starts_with("  ") {
                break;
            }
            if let Some(name) = line.split_whitespace().next() {
                names.push(name.to_string());
            }
        }
    }
    names
}

#[test]
fn help_of_every_subcommand() {
    let out = cli().arg("--help").output().expect("run promptmill");
    assert_exit(&out, 0);
    let top = stdout(&out);
    insta::assert_snapshot!("help", top);

    let names = subcommands(&top);
    // Today's ten plus clap's `help`: a parse that finds fewer has lost the list.
    assert!(names.len() >= 11, "subcommands found: {names:?}");
    for name in names.iter().filter(|n| *n != "help") {
        let out = cli()
            .args([name.as_str(), "--help"])
            .output()
            .expect("run promptmill");
        assert_exit(&out, 0);
        insta::assert_snapshot!(format!("help_{name}"), stdout(&out));
    }
}

/// The `time` line's value (`2.0s, 368 requests/min, 46709 tokens/min`) with its run-dependent
/// figures replaced, after checking it has that shape.
fn redact_time(value: &str) -> String {
    let parts: Vec<&str> = value.split(", ").collect();
    let [wall, rpm, tpm] = parts.as_slice() else {
        panic!("the time line changed shape: {value:?}");
    };
    let is_duration = wall.split(' ').all(|w| {
        w.len() > 1 && w.ends_with(['s', 'm', 'h']) && {
            let num = w.trim_end_matches(['s', 'm', 'h']);
            num.parse::<f64>().is_ok()
        }
    });
    assert!(is_duration, "wall time {wall:?} in {value:?}");
    for (part, unit) in [(rpm, " requests/min"), (tpm, " tokens/min")] {
        let n = part
            .strip_suffix(unit)
            .unwrap_or_else(|| panic!("{part:?} does not end with {unit:?}"));
        assert!(n.parse::<u64>().is_ok(), "{part:?} is not a count");
    }
    "[wall time], [n] requests/min, [n] tokens/min".to_string()
}

/// The summary table with the run-dependent figures redacted.
fn redact_summary(table: &str) -> String {
    let mut redacted = 0;
    let lines: Vec<String> = table
        .lines()
        .map(|line| match line.strip_prefix("  time") {
            Some(rest) => {
                redacted += 1;
                let value = rest.trim_start();
                let pad = &rest[..rest.len() - value.len()];
                format!("  time{pad}{}", redact_time(value))
            }
            None => line.to_string(),
        })
        .collect();
    assert_eq!(redacted, 1, "no single time line in:\n{table}");
    lines.join("\n")
}

#[test]
fn summary_of_a_fixed_mock_run() {
    let work = repo_copy::repo_copy();
    let out = cli()
        .current_dir(work.path())
        .args(["run", "examples/product-copy/job.toml", "--mock"])
        .output()
        .expect("run promptmill");
    assert_exit(&out, 0);
    // The table is on stderr; stdout stays empty for scripts (`--json` puts JSON there).
    assert_eq!(stdout(&out), "", "a run without --json wrote to stdout");
    let table = String::from_utf8_lossy(&out.stderr);
    insta::assert_snapshot!("mock_run_summary", redact_summary(&table));
}

#[test]
fn redaction_keeps_the_shape_checked() {
    let t = "  job  x\n  time               2.0s, 368 requests/min, 46709 tokens/min\n  output   o";
    assert_eq!(
        redact_summary(t),
        "  job  x\n  time               [wall time], [n] requests/min, [n] tokens/min\n  output   o"
    );
    assert_eq!(
        redact_time("1m 07s, 5 requests/min, 9 tokens/min"),
        "[wall time], [n] requests/min, [n] tokens/min"
    );
    let bad = std::panic::catch_unwind(|| redact_time("2.0s, fast"));
    assert!(
        bad.is_err(),
        "a time line of another shape must not be redacted"
    );
}
