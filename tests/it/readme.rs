//! README.md's shell examples, run for real. Every `promptmill …` or `cargo run -- …` line of
//! its ```` ```sh ```` blocks that can run offline goes through the built binary, in README
//! order, in one temp copy of `examples/`, `jobs/` and `templates/`, with no API key
//! in the environment, and must exit as the README says. The quick start's summary figures
//! must be what its command prints today.
//!
//! Which lines run (the rule, so nothing is skipped silently):
//! - only lines whose command is `promptmill ARGS` or `cargo run -- ARGS` (run as the binary
//!   with ARGS); other lines (`cargo test`, `export …`, `cargo install …`, `cargo bench …`)
//!   are not promptmill's and are left alone;
//! - of those, a line runs when it passes `--mock` or `--dry-run`, or its subcommand is one
//!   that never talks to a provider ([`OFFLINE_SUBCOMMANDS`]); the others need a key and the
//!   network and are skipped;
//! - a bare `job.toml` (the Batch API section's placeholder for "your job") is the starter job
//!   `promptmill init` writes, which the test creates first in the working folder;
//! - the expected exit code is 0 unless the line's comment says `exit N`;
//! - a line using shell syntax the test cannot run (quotes, `$`, pipes, redirections) fails
//!   the test rather than being skipped, so the rule has to be extended on purpose.
//!
//! The test fails when fewer than [`MIN_COMMANDS_RUN`] lines ran, so it cannot pass by
//! running nothing.

use crate::common;
use crate::common::repo_copy;

use std::path::Path;
use std::process::Output;

use common::{promptmill, text};

/// Subcommands that never send a request to a provider.
const OFFLINE_SUBCOMMANDS: [&str; 4] = ["estimate", "init", "report", "completions"];

/// How many README lines run today: the quick start's run and report, three estimates, the
/// batch run with `--mock`, and two shards and their merge. Lower it only when the README
/// loses such a line on purpose.
const MIN_COMMANDS_RUN: usize = 9;

/// One shell line from a ```` ```sh ```` block.
#[derive(Debug)]
struct ShellLine {
    /// 1-based line in README.md.
    line: usize,
    /// The command, without its trailing comment.
    command: String,
    /// The trailing `# …` comment, if any.
    comment: String,
}

/// The non-empty, non-comment lines of every ```` ```sh ```` block, in order.
fn sh_lines(readme: &str) -> Vec<ShellLine> {
    let mut lines = Vec::new();
    let mut in_sh = false;
    let mut in_other = false;
    for (i, raw) in readme.lines().enumerate() {
        let trimmed = raw.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            if in_sh || in_other {
                in_sh = false;
                in_other = false;
            } else if info.trim() == "sh" {
                in_sh = true;
            } else {
                in_other = true;
            }
            continue;
        }
        if !in_sh || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // A comment starts at " #" (no line here has `#` inside a word).
        let (command, comment) = match trimmed.find(" #") {
            Some(at) => (&trimmed[..at], trimmed[at + 2..].trim()),
            None => (trimmed, ""),
        };
        lines.push(ShellLine {
            line: i + 1,
            command: command.trim().to_string(),
            comment: comment.to_string(),
        });
    }
    assert!(
        !in_sh && !in_other,
        "README.md: a fenced block is never closed"
    );
    lines
}

/// The arguments after `promptmill` / `cargo run --`, or None for another program.
fn promptmill_args(command: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let args = match words.as_slice() {
        ["promptmill", rest @ ..] => rest,
        ["cargo", "run", "--", rest @ ..] => rest,
        _ => return None,
    };
    Some(args.iter().map(|s| s.to_string()).collect())
}

/// Whether the line can run without a key or the network (see the rule above).
fn runs_offline(args: &[String]) -> bool {
    args.iter().any(|a| a == "--mock" || a == "--dry-run")
        || args
            .first()
            .is_some_and(|sub| OFFLINE_SUBCOMMANDS.contains(&sub.as_str()))
}

/// The exit code a comment announces (`exit 4`), else 0. `exit 0/1` names several and is
/// not taken as one.
fn expected_exit(comment: &str) -> i32 {
    let Some(at) = comment.find("exit ") else {
        return 0;
    };
    let rest = &comment[at + 5..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = rest[digits.len()..].chars().next();
    match (digits.parse(), after) {
        (Ok(code), None | Some(' ' | ',' | ';' | ')' | '.')) => code,
        _ => 0,
    }
}

fn run_in(dir: &Path, args: &[String]) -> Output {
    promptmill()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run promptmill")
}

/// Every line of `wanted` except `...` must be a line of `printed` (trailing spaces aside).
fn assert_summary_shown(wanted: &str, printed: &str) {
    let printed: Vec<&str> = printed.lines().map(str::trim_end).collect();
    let mut compared = 0;
    for want in wanted.lines().map(str::trim_end) {
        if want.trim() == "..." || want.trim().is_empty() {
            continue;
        }
        compared += 1;
        assert!(
            printed.contains(&want),
            "README's quick-start summary shows\n{want}\nbut the command prints\n{}",
            printed.join("\n")
        );
    }
    assert!(
        compared >= 5,
        "README's quick-start summary has too few lines to check"
    );
}

/// The fenced block right after "prints a summary like".
fn quick_start_summary(readme: &str) -> String {
    let at = readme
        .find("prints a summary like")
        .expect("README.md: the quick start no longer says \"prints a summary like\"");
    let rest = &readme[at..];
    let open = rest
        .find("```")
        .expect("README.md: no block after the summary");
    let body = &rest[open..];
    let body = &body[body.find('\n').expect("block line") + 1..];
    let close = body
        .find("```")
        .expect("README.md: summary block not closed");
    body[..close].to_string()
}

#[test]
fn readme_commands_run_offline_as_documented() {
    let readme = std::fs::read_to_string(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("README.md"),
    )
    .expect("read README.md");
    let work = repo_copy::repo_copy();
    let dir = work.path();

    // The placeholder `job.toml` of the Batch API section: the starter job.
    let init = run_in(dir, &["init".to_string()]);
    assert!(init.status.success(), "promptmill init:\n{}", text(&init));

    let mut ran = Vec::new();
    let mut quick_start = None;
    for sh in sh_lines(&readme) {
        let Some(args) = promptmill_args(&sh.command) else {
            continue;
        };
        if !runs_offline(&args) {
            continue;
        }
        if let Some(c) = sh
            .command
            .chars()
            .find(|c| "'\"$|<>&;`\\(){}*?~".contains(*c))
        {
            panic!(
                "README.md:{}: `{}` uses shell syntax ({c:?}) this test does not run; extend it",
                sh.line, sh.command
            );
        }
        let out = run_in(dir, &args);
        let want = expected_exit(&sh.comment);
        assert_eq!(
            out.status.code(),
            Some(want),
            "README.md:{}: `{}` should exit {want}\n{}",
            sh.line,
            sh.command,
            text(&out)
        );
        if quick_start.is_none() {
            // "The first command writes … and prints a summary like": the quick start's run.
            quick_start = Some(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        ran.push(format!("README.md:{}: {}", sh.line, sh.command));
    }

    eprintln!("README commands run:\n{}", ran.join("\n"));
    assert!(
        ran.len() >= MIN_COMMANDS_RUN,
        "only {} README commands ran (at least {MIN_COMMANDS_RUN} expected):\n{}",
        ran.len(),
        ran.join("\n")
    );
    assert!(
        ran[0].contains("run examples/product-copy/job.toml --mock"),
        "the first README command is no longer the quick start's mock run: {}",
        ran[0]
    );
    let printed = quick_start.expect("the quick start ran");
    assert_summary_shown(&quick_start_summary(&readme), &printed);
    // What the quick start and the report line say they write.
    for written in [
        "examples/product-copy/out/product-copy.csv",
        "examples/product-copy/out/product-copy.report.html",
    ] {
        assert!(
            dir.join(written).is_file(),
            "README says {written} is written"
        );
    }
}

#[test]
fn the_line_rule_reads_readme_syntax() {
    let lines = sh_lines(
        "text\n```sh\n# a comment\ncargo run -- run a.toml --mock\n\npromptmill run j.toml \
         --mode batch     # submit: exit 4\n```\n```toml\npromptmill estimate x\n```\n",
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0].line, 4);
    assert_eq!(lines[1].comment, "submit: exit 4");
    let args = promptmill_args(&lines[0].command).expect("a promptmill line");
    assert_eq!(args, ["run", "a.toml", "--mock"]);
    assert!(runs_offline(&args));
    let args = promptmill_args(&lines[1].command).expect("a promptmill line");
    assert!(!runs_offline(&args), "a live run needs a key");
    assert_eq!(expected_exit(&lines[1].comment), 4);
    assert_eq!(
        expected_exit("poll; when done: exit 0/1 (4 while running)"),
        0
    );
    assert_eq!(expected_exit(""), 0);
    assert_eq!(promptmill_args("cargo test"), None);
    assert_eq!(promptmill_args("export OPENAI_API_KEY=sk-..."), None);
}
