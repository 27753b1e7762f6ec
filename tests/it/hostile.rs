//! Hostile input and secrets, end to end: files users did not write, templates that try to
//! escape, cells that a spreadsheet would run, servers that misbehave, and API keys that
//! must never be written anywhere. Every test runs the real binary against the mock API on
//! 127.0.0.1.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::{assert_absent, assert_exit, col, stderr, text, JobFile, Mock, Workspace, TEST_KEY};

/// Writes `job.toml` reading `input` (no id column), with `user` as the user template.
fn job(ws: &Workspace, base_url: &str, input: &str, user: &str) {
    ws.write_job(
        "job.toml",
        &JobFile {
            input: &format!("path = \"{input}\""),
            prompt: &format!("user = '''{user}'''"),
            api: &format!("base_url = \"{base_url}\""),
            limits: "max_in_flight = 4\nmax_retries = 1",
            ..JobFile::default()
        },
    );
}

fn write_bytes(ws: &Workspace, rel: &str, bytes: &[u8]) {
    std::fs::write(ws.path(rel), bytes).unwrap();
}

/// A fresh mock, and a workspace whose `job.toml` reads `input`, holding `content`, with
/// `user` as the user template.
fn setup(input: &str, content: impl AsRef<[u8]>, user: &str) -> (Mock, Workspace) {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    write_bytes(&ws, input, content.as_ref());
    job(&ws, &mock.base_url, input, user);
    (mock, ws)
}

/// Exit 2 with `needle` in stderr, nothing sent to the mock, no output written.
fn assert_refused(ws: &Workspace, mock: &Mock, out: &std::process::Output, needle: &str) {
    assert_exit(out, 2);
    let err = stderr(out);
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(mock.stat("requests"), 0, "a request was sent");
    assert!(!ws.path("out/result.csv").exists(), "an output was written");
}

/// Each bad input: a refusal naming file:line(:column), before any request.
#[test]
fn bad_inputs_are_refused_with_their_position_before_any_request() {
    let mock = Mock::start(&[]);
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "ragged.csv",
            b"text,n\na,1\nb\n".to_vec(),
            "ragged.csv:3:1: row has 1 fields but the header has 2".into(),
        ),
        (
            "utf8.csv",
            b"n,text\n1,ok\n2,bad \xff\xfe here\n".to_vec(),
            "utf8.csv:3:2: invalid UTF-8 in column \"text\"".into(),
        ),
        ("empty.csv", Vec::new(), "empty.csv: file is empty".into()),
        (
            "header.csv",
            b"text\n".to_vec(),
            "header.csv: no data rows".into(),
        ),
        (
            "dup.csv",
            b"text,n,text\na,1,b\n".to_vec(),
            "dup.csv:1:3: duplicate column name \"text\"".into(),
        ),
        (
            "deep.jsonl",
            format!("{{\"text\":\"a\"}}\n{{\"text\":{deep}}}\n").into_bytes(),
            "deep.jsonl:2:".into(), // …:COLUMN: invalid JSON: recursion limit exceeded
        ),
        (
            "array.jsonl",
            b"{\"text\":\"a\"}\n[1,2]\n".to_vec(),
            "array.jsonl:2: expected a JSON object, found array".into(),
        ),
        (
            "notjson.jsonl",
            b"{\"text\":\"a\"}\nnot json at all\n".to_vec(),
            "notjson.jsonl:2:2: invalid JSON".into(),
        ),
    ];
    for (name, bytes, needle) in cases {
        let ws = Workspace::new();
        write_bytes(&ws, name, &bytes);
        job(&ws, &mock.base_url, name, "Say {{ text }}");
        let out = ws.run(&["run", "job.toml"]);
        assert_refused(&ws, &mock, &out, &needle);
    }
}

/// A UTF-8 BOM and CRLF line ends are read as a normal file: the BOM is not part of the first
/// column's name (the strict template would fail otherwise) and `\r` is not part of a value.
#[test]
fn bom_and_crlf_are_read_cleanly() {
    let (_mock, ws) = setup(
        "in.csv",
        b"\xef\xbb\xbftext,n\r\nhello,1\r\nworld,2\r\n",
        "{{ text }}|{{ n }}| [[mock:echo]]",
    );
    let out = ws.run(&["run", "job.toml", "--quiet"]);
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("out/result.csv");
    assert_eq!(&h[..2], ["text", "n"]);
    let o = col(&h, "output");
    assert_eq!(rows[0][o], "hello|1| [[mock:echo]]");
    assert_eq!(rows[1][o], "world|2| [[mock:echo]]");
}

/// A 10 MB cell does not crash the reader; rendered into a prompt it passes the 4 MiB message
/// cap and is refused naming the row, before any request. Unused, it is just carried along.
#[test]
fn ten_megabyte_cell_is_refused_by_the_render_cap_not_a_crash() {
    let big = "x".repeat(10 * 1024 * 1024);
    let (mock, ws) = setup(
        "in.csv",
        format!("n,text\n1,small\n2,{big}\n"),
        "Say {{ text }}",
    );
    let out = ws.run(&["run", "job.toml"]);
    assert_refused(&ws, &mock, &out, "in.csv");
    let err = stderr(&out);
    assert!(err.contains("line 3"), "{err}");
    assert!(err.len() < 10_000, "the error must not echo the cell");

    // With --skip-bad-rows the row is a failed row saying why; the small one is sent.
    let out = ws.run(&["run", "job.toml", "--quiet", "--skip-bad-rows"]);
    assert_exit(&out, 1);
    let (h, rows) = ws.csv("out/result.csv");
    assert_eq!(rows[0][col(&h, "status")], "ok");
    assert_eq!(rows[1][col(&h, "status")], "failed");
    let error = &rows[1][col(&h, "error")];
    assert!(
        error.contains("in.csv: row 2 (line 3") && error.contains("over the limit"),
        "{error}"
    );
    assert_eq!(mock.stat("requests"), 1);

    // The same file, with a template that does not use the big column, runs.
    job(&ws, &mock.base_url, "in.csv", "Count {{ n }}");
    let out = ws.run(&["run", "job.toml", "--quiet", "--output", "out/small.jsonl"]);
    assert_exit(&out, 0);
    assert_eq!(mock.stat("requests"), 3);
}

/// `--skip-bad-rows`: every unreadable record is in the output exactly once, in place, failed,
/// with its file:line:column; good rows are sent. Running again sends nothing more.
#[test]
fn skip_bad_rows_lists_each_bad_row_once_in_place_with_its_reason() {
    let bad_rows = b"n,text\n1,first\n2\n3,bad \xff\n4,last\n";
    let (mock, ws) = setup("in.csv", bad_rows, "Say {{ text }}");

    // Without the flag: refused, naming the first bad row.
    let out = ws.run(&["run", "job.toml"]);
    assert_refused(&ws, &mock, &out, "in.csv:3:1: row has 1 fields");

    for round in 0..2 {
        let out = ws.run(&["run", "job.toml", "--quiet", "--skip-bad-rows"]);
        assert_exit(&out, 1);
        let (h, rows) = ws.csv("out/result.csv");
        let (n, status, error) = (col(&h, "n"), col(&h, "status"), col(&h, "error"));
        assert_eq!(rows.len(), 4, "round {round}: {rows:?}");
        let statuses: Vec<&str> = rows.iter().map(|r| r[status].as_str()).collect();
        assert_eq!(statuses, ["ok", "failed", "failed", "ok"]);
        assert_eq!((rows[0][n].as_str(), rows[3][n].as_str()), ("1", "4"));
        assert!(
            rows[1][error].contains("in.csv:3:1: row has 1 fields"),
            "{}",
            rows[1][error]
        );
        assert!(
            rows[2][error].contains("in.csv:4:2: invalid UTF-8"),
            "{}",
            rows[2][error]
        );
        // Unreadable rows keep no input cells.
        assert_eq!(rows[1][n], "");
        assert_eq!(mock.stat("requests"), 2, "round {round}");
        let s = ws.summary();
        assert_eq!(
            (s["succeeded"].as_u64(), s["failed"].as_u64()),
            (Some(2), Some(2))
        );
    }
}

/// The same for JSONL with an id column: a line that is not JSON and a line that is not an
/// object become failed rows in place.
#[test]
fn skip_bad_rows_in_jsonl_with_an_id_column() {
    let (mock, ws) = setup(
        "in.jsonl",
        "{\"id\":\"a\",\"text\":\"one\"}\n{oops\n\n\"just a string\"\n{\"id\":\"d\",\"text\":\"four\"}\n",
        "Say {{ text }}",
    );
    let out = ws.run(&[
        "run",
        "job.toml",
        "--quiet",
        "--set",
        "input.id=id",
        "--set",
        "input.skip_bad_rows=true",
        "--output",
        "out/result.jsonl",
    ]);
    assert_exit(&out, 1);
    let lines = ws.jsonl("out/result.jsonl");
    assert_eq!(lines.len(), 4, "{lines:?}");
    let status: Vec<&str> = lines
        .iter()
        .map(|l| l["status"].as_str().unwrap())
        .collect();
    assert_eq!(status, ["ok", "failed", "failed", "ok"]);
    assert!(lines[1]["error"]
        .as_str()
        .unwrap()
        .contains("in.jsonl:2:2: invalid JSON"));
    assert!(lines[2]["error"]
        .as_str()
        .unwrap()
        .contains("in.jsonl:4: expected a JSON object, found string"));
    assert_eq!(mock.stat("requests"), 2);
}

/// Writes `job.toml` reading `in.csv` with the user prompt from the template file `template`.
fn template_job(ws: &Workspace, base_url: &str, template: &str) {
    ws.write_job(
        "job.toml",
        &JobFile {
            input: "path = \"in.csv\"",
            prompt: &format!("template = \"{template}\""),
            model: "name = \"gpt-4o-mini\"",
            api: &format!("base_url = \"{base_url}\""),
            ..JobFile::default()
        },
    );
}

/// A file that cannot be read is named, with the system's reason said once (errors that
/// carry their cause in their own message used to repeat it at the end of the line).
#[test]
fn a_missing_job_file_or_template_is_named_with_the_reason_once() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    let out = ws.run(&["run", "nowhere.toml"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("nowhere.toml: cannot read job file"), "{err}");
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");

    ws.write("in.csv", "text\nhello\n");
    template_job(&ws, &mock.base_url, "tpl/missing.j2");
    let out = ws.run(&["run", "job.toml"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("missing.j2: cannot read template"), "{err}");
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
    assert_eq!(mock.stat("requests"), 0);
}

/// A template syntax error names the template file and line.
#[test]
fn template_syntax_error_names_file_and_line() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.write("in.csv", "text\nhello\n");
    ws.write("tpl/prompt.j2", "Line one\nSay {{ text }}\n{% if text %}\n");
    template_job(&ws, &mock.base_url, "tpl/prompt.j2");
    let out = ws.run(&["run", "job.toml"]);
    assert_refused(&ws, &mock, &out, "prompt.j2:3: syntax error");
}

/// Templates reach neither files outside their folder nor the environment.
#[test]
fn templates_cannot_read_files_or_environment() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.write("in.csv", "text\nhello\n");
    ws.write("secret.txt", "TOPSECRET-FILE-CONTENT");
    for (i, body) in [
        "{% include \"../secret.txt\" %}",
        "{% include \"/etc/passwd\" %}",
        "{% include \"sub/../../secret.txt\" %}",
        "{{ PROMPTMILL_TEST_SECRET }}",
        "{{ env.PROMPTMILL_TEST_SECRET }}",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("tpl/t{i}.j2");
        ws.write(&name, body);
        template_job(&ws, &mock.base_url, &name);
        let env = [
            ("OPENAI_API_KEY", TEST_KEY),
            ("PROMPTMILL_TEST_SECRET", "TOPSECRET-ENV-VALUE"),
        ];
        let out = ws.run_env(&env, &["run", "job.toml"]);
        assert_refused(&ws, &mock, &out, &format!("t{i}.j2"));
        let all = text(&out);
        assert!(!all.contains("TOPSECRET"), "{body}: {all}");
        assert!(!all.contains("root:"), "{body}: {all}");
    }
}

/// A row value holding template code is sent as text, never run.
#[test]
fn row_values_are_never_executed() {
    let (_mock, ws) = setup(
        "in.jsonl",
        concat!(
            "{\"text\":\"{{ 7 * 7 }}\"}\n",
            "{\"text\":\"{% include '/etc/passwd' %}\"}\n",
            "{\"text\":\"{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}\"}\n",
        ),
        "{{ text }} [[mock:echo]]",
    );
    let out = ws.run(&["run", "job.toml", "--quiet", "--max-tokens", "500"]);
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("out/result.csv");
    let o = col(&h, "output");
    assert_eq!(rows[0][o], "{{ 7 * 7 }} [[mock:echo]]");
    assert!(rows[1][o].starts_with("{% include '/etc/passwd' %}"));
    assert!(rows[2][o].starts_with("{% for i in range(100000) %}"));
}

/// A runaway template fails fast (fuel), before any request, naming the template.
#[test]
fn runaway_template_fails_fast() {
    let (mock, ws) = setup(
        "in.csv",
        "text\nhello\n",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ text }}{% endfor %}{% endfor %}",
    );
    // The fuel stops it (its message), not the machine's patience.
    let out = ws.run(&["run", "job.toml"]);
    assert_refused(&ws, &mock, &out, "execution budget");

    // Unbounded output (a huge string from a filter) hits the size cap or the fuel.
    job(&ws, &mock.base_url, "in.csv", "{{ text * 100000000 }}");
    let out = ws.run(&["run", "job.toml"]);
    assert_exit(&out, 2);
    assert_eq!(mock.stat("requests"), 0);
}

const FORMULAS: &[&str] = &[
    "=HYPERLINK(\"http://evil.example\",\"click\")",
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
    "\tTAB",
    "\rCR",
    "plain",
];

/// A job that echoes each of `FORMULAS` back as its output.
fn formula_setup() -> (Mock, Workspace) {
    let mut input = String::new();
    for f in FORMULAS {
        input.push_str(&serde_json::json!({ "text": f }).to_string());
        input.push('\n');
    }
    setup("in.jsonl", input, "{{ text }} [[mock:echo]]")
}

/// Generated cells that a spreadsheet would run are prefixed with `'` in CSV by default.
#[test]
fn csv_output_neutralises_formulas_by_default() {
    let (_mock, ws) = formula_setup();
    let out = ws.run(&["run", "job.toml", "--quiet"]);
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("out/result.csv");
    let o = col(&h, "output");
    for (row, f) in rows.iter().zip(FORMULAS) {
        let want = format!("{f} [[mock:echo]]");
        if *f == "plain" {
            assert_eq!(row[o], want);
        } else {
            assert_eq!(row[o], format!("'{want}"));
        }
    }
}

/// `--no-formula-guard` writes CSV cells as they are; JSONL is always written as is.
#[test]
fn formula_guard_can_be_turned_off_and_jsonl_is_as_is() {
    let (_mock, ws) = formula_setup();
    let out = ws.run(&["run", "job.toml", "--quiet", "--no-formula-guard"]);
    assert_exit(&out, 0);
    let (h, rows) = ws.csv("out/result.csv");
    let o = col(&h, "output");
    for (row, f) in rows.iter().zip(FORMULAS) {
        assert_eq!(row[o], format!("{f} [[mock:echo]]"));
    }

    let out = ws.run(&["run", "job.toml", "--quiet", "--output", "out/r.jsonl"]);
    assert_exit(&out, 0);
    let lines = ws.jsonl("out/r.jsonl");
    for (line, f) in lines.iter().zip(FORMULAS) {
        assert_eq!(line["output"], format!("{f} [[mock:echo]]"));
    }
}

/// Invalid JSON, a 200 without choices, a body that stalls, a server that hangs: each is a
/// failed attempt, retried, then a failed row; the other rows succeed; never a crash.
#[test]
fn hostile_responses_are_retried_then_fail_the_row() {
    let (mock, ws) = setup(
        "in.csv",
        "text\nfine\n[[mock:bad-json]]\n[[mock:no-choices]]\n[[mock:slow-body]]\n[[mock:hang]]\n",
        "Say {{ text }}",
    );
    // The timeout leaves a loaded machine room to answer the fine row; the hanging rows
    // cost two attempts of it each. How many attempts were made is checked below, not time.
    let out = ws.run(&[
        "run",
        "job.toml",
        "--quiet",
        "--max-retries",
        "1",
        "--set",
        "api.timeout_secs=4",
    ]);
    assert_exit(&out, 1);
    assert!(!text(&out).contains("panicked"));
    let (h, rows) = ws.csv("out/result.csv");
    let (status, attempts, error) = (col(&h, "status"), col(&h, "attempts"), col(&h, "error"));
    assert_eq!(rows[0][status], "ok", "{:?}", rows[0]);
    for r in &rows[1..] {
        assert_eq!(r[status], "failed", "{r:?}");
        assert_eq!(r[attempts], "2", "one retry: {r:?}");
        assert!(!r[error].is_empty());
    }
    // Every attempt reached the server (the fine row may have needed a retry on a busy
    // machine, hence the sum rather than a constant).
    let sum: u64 = rows
        .iter()
        .map(|r| r[attempts].parse::<u64>().unwrap())
        .sum();
    assert!(sum >= 9, "{rows:?}");
    assert_eq!(mock.stat("requests"), sum, "{rows:?}");
}

/// A server on loopback that answers 200 with a body over the 64 MiB cap: a failed attempt,
/// retried, never an out-of-memory crash.
#[test]
fn a_huge_body_is_a_failed_attempt() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut served = 0;
        for conn in listener.incoming().take(2) {
            let mut s = conn.unwrap();
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
            );
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..70 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
            served += 1;
        }
        served
    });
    let ws = Workspace::new();
    ws.write("in.csv", "text\nhello\n");
    job(
        &ws,
        &format!("http://{addr}/v1"),
        "in.csv",
        "Say {{ text }}",
    );
    let out = ws.run(&["run", "job.toml", "--quiet", "--max-retries", "1"]);
    assert_exit(&out, 1);
    let (h, rows) = ws.csv("out/result.csv");
    assert_eq!(rows[0][col(&h, "status")], "failed");
    assert_eq!(rows[0][col(&h, "attempts")], "2");
    assert!(
        rows[0][col(&h, "error")].contains("larger than"),
        "{:?}",
        rows[0]
    );
    assert_eq!(server.join().unwrap(), 2);
}

/// Plain http to another machine would send the key in clear: refused before any connection
/// (192.0.2.1 is TEST-NET-1, never routed: a connection attempt would end after the connect
/// timeout with a connection error and exit 3, not this refusal with exit 2).
#[test]
fn plain_http_to_another_machine_is_refused() {
    let ws = Workspace::new();
    ws.write("in.csv", "text\nhello\n");
    job(&ws, "http://192.0.2.1/v1", "in.csv", "Say {{ text }}");
    let out = ws.run(&["run", "job.toml", "--set", "api.connect_timeout_secs=30"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("allow_insecure_http"), "{err}");
    assert!(!ws.path("out/result.csv").exists());
    assert!(!ws.path("out/result.journal.jsonl").exists());
}

/// A key written in the job file is refused, pointing to the environment variable, and the
/// message does not repeat the key.
#[test]
fn key_in_job_file_is_refused() {
    let ws = Workspace::new();
    ws.write("in.csv", "text\nhello\n");
    job(&ws, "http://127.0.0.1:9/v1", "in.csv", "Say {{ text }}");
    let toml = ws.read("job.toml").replace(
        "[api]\n",
        "[api]\napi_key = \"sk-PLAINTEXT-KEY-IN-JOB-FILE-0042\"\n",
    );
    ws.write("job.toml", &toml);
    let out = ws.run(&["run", "job.toml"]);
    assert_exit(&out, 2);
    let all = text(&out);
    assert!(all.contains("OPENAI_API_KEY"), "{all}");
    assert!(!all.contains("PLAINTEXT-KEY"), "{all}");
}

/// A key an HTTP header cannot carry is refused up front (not sent without auth), without
/// repeating it.
#[test]
fn unusable_key_is_refused_without_echoing_it() {
    let mock = Mock::start(&[]);
    let ws = Workspace::new();
    ws.csv_rows(2);
    ws.job(&mock.base_url, "");
    let env = [("OPENAI_API_KEY", "sk-BADKEY-abc\u{7f}def-0042")];
    let out = ws.run_env(&env, &["run", "job.toml"]);
    assert_exit(&out, 2);
    let all = text(&out);
    assert!(all.contains("OPENAI_API_KEY"), "{all}");
    assert!(!all.contains("BADKEY"), "{all}");
    assert_eq!(mock.stat("requests"), 0);
}

/// The key-leak test: a whole job at `RUST_LOG=trace`, first with a wrong key from the
/// environment (401, job stops), then with the right key from `api.api_key_file` (runs to
/// the end). Neither key appears in any stream or in any file the job wrote.
#[test]
fn api_keys_never_leak_even_at_trace_level() {
    const RIGHT: &str = "sk-RIGHTKEY-4d0c7e9a1b2f-never-print-me";
    const WRONG: &str = "sk-WRONGKEY-8e1f2a3b4c5d-never-print-me";
    let mock = Mock::start(&["--api-key", RIGHT]);
    let ws = Workspace::new();
    ws.csv_rows(5);
    ws.job(&mock.base_url, "");

    let trace = |env_key: Option<&str>, extra: &[&str]| {
        let mut env = vec![("RUST_LOG", "trace")];
        env.extend(env_key.map(|k| ("OPENAI_API_KEY", k)));
        ws.run_env(&env, &[&["run", "job.toml"], extra].concat())
    };

    let out = trace(Some(WRONG), &[]);
    assert_exit(&out, 3);
    let first = text(&out);
    assert!(
        first.contains("401") || first.contains("API key"),
        "{first}"
    );
    // Trace logging is really on (so this test could see a leak).
    assert!(first.contains("TRACE"), "no trace output:\n{first}");
    // The 401 stops the job: only what was already in flight reached the server.
    assert!(mock.stat("unauthorized") >= 1);
    assert_eq!(ws.summary()["status"], "aborted");

    // The right key from a file the job names.
    ws.write("secrets/key.txt", &format!("{RIGHT}\n"));
    // The response cache (when the job has one) lives in the workspace too, so the scan
    // below covers it.
    let out = trace(
        None,
        &[
            "--set",
            "api.api_key_file=secrets/key.txt",
            "--set",
            "cache.dir=cache",
        ],
    );
    assert_exit(&out, 0);
    let second = text(&out);
    assert!(second.contains("TRACE"));
    assert_eq!(ws.summary()["succeeded"], 5);

    // The in-process mock (`--mock`) at trace level, with the key in the environment.
    let out = trace(Some(RIGHT), &["--mock", "--output", "out/mock.csv"]);
    assert_exit(&out, 0);
    let third = text(&out);

    for (name, stream) in [
        ("first run", &first),
        ("second run", &second),
        ("--mock run", &third),
    ] {
        for key in [RIGHT, WRONG] {
            assert!(!stream.contains(key), "{name} printed a key");
            // Nor the distinctive middle of it (a partial echo).
            assert!(
                !stream.contains(&key[3..20]),
                "{name} printed part of a key"
            );
        }
    }
    let key_file = ws.path("secrets/key.txt");
    for key in [RIGHT, WRONG] {
        assert_absent(ws.dir.path(), key, &[&key_file]);
        assert_absent(ws.dir.path(), &key[3..20], &[&key_file]);
    }
    // The journal, summary and output exist (so the scan above covered them).
    for f in [
        "out/result.csv",
        "out/result.summary.json",
        "out/result.journal.jsonl",
    ] {
        assert!(ws.path(f).exists(), "{f}");
    }
}
