//! `promptmill init [DIR]` (a starter job that runs with `--mock` at once) and
//! `promptmill completions SHELL`.

use crate::common;

use common::*;

#[test]
fn init_in_an_empty_folder_then_run_mock_succeeds() {
    let ws = Workspace::new();
    let out = ws.run(&["init", "starter"]);
    assert_exit(&out, 0);
    for f in ["job.toml", "prompt.j2", "products.csv"] {
        assert!(ws.path("starter").join(f).is_file(), "{f} written");
    }
    let job = ws.read("starter/job.toml");
    assert!(
        job.lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count()
            >= 5,
        "{job}"
    );
    assert!(stderr(&out).contains("promptmill run starter/job.toml --mock"));

    let out = ws.run_env(&[], &["run", "starter/job.toml", "--mock", "--quiet"]);
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("starter/out/products.csv");
    assert_eq!(rows.len(), 5);
    let (status, output) = (col(&h, "status"), col(&h, "output"));
    assert!(rows
        .iter()
        .all(|r| r[status] == "ok" && !r[output].is_empty()));
    assert_eq!(ws.json("starter/out/products.summary.json")["succeeded"], 5);

    // The page is one command away.
    let out = ws.run_env(&[], &["report", "starter/job.toml"]);
    assert_exit(&out, 0);
    assert!(ws.path("starter/out/products.report.html").is_file());
}

#[test]
fn init_into_the_current_folder_by_default() {
    let ws = Workspace::new();
    assert_exit(&ws.run(&["init"]), 0);
    assert!(ws.path("job.toml").is_file());
    assert_exit(
        &ws.run_env(&[], &["run", "job.toml", "--mock", "--quiet"]),
        0,
    );
}

#[test]
fn init_never_overwrites_a_file() {
    let ws = Workspace::new();
    ws.write("here/prompt.j2", "my own template");
    let out = ws.run(&["init", "here"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("prompt.j2") && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(ws.read("here/prompt.j2"), "my own template");
    assert!(
        !ws.path("here/job.toml").exists(),
        "nothing written when one file is in the way"
    );
}

#[test]
fn bash_completions_load_and_complete_the_commands() {
    let ws = Workspace::new();
    let out = ws.run(&["completions", "bash"]);
    assert_exit(&out, 0);
    let script = ws.write("promptmill.bash", &String::from_utf8_lossy(&out.stdout));
    // Load the script in a real bash and ask it to complete `promptmill re`.
    let check = format!(
        "source '{}' && complete -p promptmill && COMP_WORDS=(promptmill re) COMP_CWORD=1 \
         COMP_LINE='promptmill re' COMP_POINT=13 && _promptmill promptmill re promptmill && \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &check])
        .output()
        .expect("run bash");
    assert_exit(&out, 0);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("-F _promptmill promptmill"), "{said}");
    let replies: Vec<&str> = said.lines().skip(1).collect();
    assert_eq!(replies, ["report"], "{said}");

    let out = ws.run(&["completions", "no-such-shell"]);
    assert_exit(&out, 2);
}
