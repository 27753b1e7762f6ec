//! `promptmill report JOB`: the review page, checked as a file and in a real headless
//! Chromium (see tests/it/common/browser.rs for when that is skipped).

use crate::common;
use crate::common::browser;

use browser::Browser;
use common::*;

/// Markup a model might write: it must be shown as text, never run.
const IMG: &str = "<img src=x onerror=alert(1)>";
const SCRIPT: &str = "</script><script>alert(2)</script>";

/// rows.csv with `n` plain rows, then a row the mock answers with markup (it echoes the
/// prompt), a row whose name closes a script block (and holds U+2028), and a row the mock
/// refuses (400, so it fails). Returns the job's path; its output is out/result.csv.
fn hostile_job(ws: &Workspace, n: usize) -> String {
    let mut s = String::from("id,name,color\n");
    for i in 1..=n {
        s.push_str(&format!("r{i},item {i},color {}\n", i % 3));
    }
    s.push_str(&format!("x1,\"{IMG} [[mock:echo]]\",red\n"));
    s.push_str(&format!("x2,\"{SCRIPT} \u{2028} [[mock:echo]]\",blue\n"));
    s.push_str("x3,broken [[mock:400]],green\n");
    ws.write("rows.csv", &s);
    ws.write_job(
        "job.toml",
        &JobFile {
            limits: "max_in_flight = 8\nmax_retries = 0",
            ..JobFile::default()
        },
    )
}

/// Runs the job with --mock (one row fails: exit 1), then `report`; returns the page path.
fn run_and_report(ws: &Workspace, job: &str) -> std::path::PathBuf {
    let out = ws.run(&["run", job, "--mock", "--quiet"]);
    assert_exit(&out, 1);
    let out = ws.run(&["report", job]);
    assert_exit(&out, 0);
    let page = ws.path("out/result.report.html");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        page.display().to_string(),
        "stdout is the page's path"
    );
    page
}

#[test]
fn the_page_is_self_contained_and_holds_markup_only_as_escaped_data() {
    let ws = Workspace::new();
    let job = hostile_job(&ws, 3);
    let page = std::fs::read_to_string(run_and_report(&ws, &job)).unwrap();
    // The markup the model wrote is nowhere in the file as markup...
    assert!(!page.contains(IMG), "raw <img> in the page");
    assert!(
        !page.contains("<script>alert(2)"),
        "raw <script> in the page"
    );
    assert!(!page.contains('\u{2028}'));
    // ...but in the data, escaped.
    assert!(page.contains(r"\u003cimg src=x onerror=alert(1)\u003e"));
    // Exactly the page's own two script blocks, and nothing is loaded from anywhere.
    assert_eq!(page.matches("<script").count(), 2, "{page}");
    // (The one URL is the SVG namespace name, which is never fetched.)
    let rest = page.replace("'http://www.w3.org/2000/svg'", "");
    for remote in [
        "http://", "https://", "src=\"", "href=\"", "@import", "url(",
    ] {
        assert!(!rest.contains(remote), "page refers to {remote}");
    }
    assert!(page.contains("Content-Security-Policy"));
    assert!(page.contains("default-src 'none'"));
}

#[test]
fn the_page_never_holds_the_api_key() {
    let ws = Workspace::new();
    let job = hostile_job(&ws, 2);
    let key = "sk-report-secret-7781";
    let out = ws.run_env(
        &[("OPENAI_API_KEY", key)],
        &["run", &job, "--mock", "--quiet"],
    );
    assert_exit(&out, 1);
    let out = ws.run_env(
        &[("OPENAI_API_KEY", key), ("RUST_LOG", "trace")],
        &["report", &job],
    );
    assert_exit(&out, 0);
    assert!(!text(&out).contains(key));
    assert_absent(ws.dir.path(), key, &[]);
    let page = ws.read("out/result.report.html");
    assert!(page.contains("environment variable OPENAI_API_KEY"));
}

#[test]
fn a_job_that_has_not_run_is_refused_naming_the_output() {
    let ws = Workspace::new();
    ws.csv_rows(2);
    let job = ws.write_job("job.toml", &JobFile::default());
    let out = ws.run(&["report", &job]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("result.csv") && err.contains("run the job first"),
        "{err}"
    );
    assert!(!ws.path("out/result.report.html").exists());
}

#[test]
fn the_page_is_never_written_over_the_jobs_own_files() {
    let ws = Workspace::new();
    let job = hostile_job(&ws, 2);
    run_and_report(&ws, &job);
    for own in ["out/result.csv", "out/result.summary.json"] {
        let before = ws.read(own);
        let out = ws.run(&[
            "report",
            &job,
            "--html",
            &ws.path(own).display().to_string(),
        ]);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains("one of the job's own files"),
            "{}",
            text(&out)
        );
        assert_eq!(ws.read(own), before, "{own} unchanged");
    }
    // Elsewhere is fine.
    let out = ws.run(&["report", &job, "--html", "pages/review.html"]);
    assert_exit(&out, 0);
    assert!(ws.read("pages/review.html").contains("report-data"));
}

#[test]
fn an_unreadable_output_line_is_named() {
    let ws = Workspace::new();
    ws.csv_rows(2);
    let job = ws.write_job("job.toml", &JobFile::default());
    ws.write(
        "out/result.csv",
        "id,output,status\nr1,hello,ok\nr2,a,b,c\n",
    );
    let out = ws.run(&["report", &job]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("result.csv: line 3"), "{err}");

    let job = ws.write_job(
        "jsonl.toml",
        &JobFile {
            output: "path = \"out/result.jsonl\"",
            ..JobFile::default()
        },
    );
    ws.write(
        "out/result.jsonl",
        "{\"id\":\"r1\",\"output\":\"x\"}\n[1]\n",
    );
    let out = ws.run(&["report", &job]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("result.jsonl: line 2: expected a JSON object"),
        "{err}"
    );
}

#[test]
fn the_product_copy_example_gets_a_page_beside_its_output() {
    let ws = Workspace::new();
    let out = ws.run_shipped(
        "examples/product-copy/job.toml",
        &["--quiet"],
        "copy/product-copy.csv",
    );
    assert_exit(&out, 0);
    let out = promptmill()
        .arg("report")
        .arg(format!(
            "{}/examples/product-copy/job.toml",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../..")
        ))
        .arg("--output")
        .arg(ws.path("copy/product-copy.csv"))
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("report: 12 rows"), "{}", text(&out));
    let page = ws.read("copy/product-copy.report.html");
    assert!(page.contains("SKU-012"));
}

/// The rows of the page's table as the browser shows them: each cell's text.
async fn table(b: &Browser) -> Vec<Vec<String>> {
    let v = b
        .eval(
            "return [...document.querySelectorAll('#rows tbody tr')]\
             .map(tr => [...tr.cells].map(td => td.textContent));",
        )
        .await;
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_the_page_shows_every_row_as_text_and_filters_by_status() {
    let Some(b) = Browser::start().await else {
        return;
    };
    // First prove the console check can fail: a page that logs an error and throws.
    let probe = tempfile::tempdir().unwrap();
    let bad = probe.path().join("bad.html");
    std::fs::write(
        &bad,
        "<!DOCTYPE html><script>console.error('probe error'); throw new Error('probe throw');\
         </script>",
    )
    .unwrap();
    b.open(&bad).await;
    let errors = b.errors().await;
    for needle in ["probe error", "probe throw"] {
        assert!(
            errors.iter().any(|e| e.message.contains(needle)),
            "the console check misses {needle:?}: {errors:?}"
        );
    }

    let ws = Workspace::new();
    let job = hostile_job(&ws, 9);
    let page = run_and_report(&ws, &job);
    let (header, rows) = ws.csv("out/result.csv");
    assert_eq!(rows.len(), 12);
    b.open(&page).await;
    let errors = b.errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // One table row per output row, each cell exactly the file's text (after the row number).
    let shown = table(&b).await;
    assert_eq!(shown.len(), rows.len(), "one table row per output row");
    let status = col(&header, "status");
    let cost = col(&header, "cost_usd");
    for (i, (seen, want)) in shown.iter().zip(&rows).enumerate() {
        assert_eq!(seen[0], (i + 1).to_string());
        for (j, cell) in want.iter().enumerate() {
            // A row with tokens but no price says so; none here (the mock model is priced).
            if j == cost && cell.is_empty() {
                continue;
            }
            assert_eq!(&seen[j + 1], cell, "row {} column {}", i + 1, header[j]);
        }
    }
    // The echoed markup is text in its cell, and nothing from the data became an element.
    let output = col(&header, "output");
    let img_row = rows.iter().position(|r| r[0] == "x1").unwrap();
    assert!(
        shown[img_row][output + 1].contains(IMG),
        "{:?}",
        shown[img_row]
    );
    let elements = b
        .eval("return document.querySelectorAll('#rows img, #rows script, body img').length;")
        .await;
    assert_eq!(elements, 0);
    assert_eq!(b.dialog().await, None, "an alert fired");

    // The status filter: only failed rows, then only ok rows, then all again.
    let failed = rows.iter().filter(|r| r[status] == "failed").count();
    let ok = rows.iter().filter(|r| r[status] == "ok").count();
    assert_eq!((failed, ok), (1, 11));
    let select = b
        .client
        .find(fantoccini::Locator::Id("status-filter"))
        .await
        .unwrap();
    select.select_by_value("failed").await.unwrap();
    let only = table(&b).await;
    assert_eq!(only.len(), failed);
    assert!(only.iter().all(|r| r[status + 1] == "failed"), "{only:?}");
    select.select_by_value("ok").await.unwrap();
    let only = table(&b).await;
    assert_eq!(only.len(), ok);
    assert!(only.iter().all(|r| r[status + 1] == "ok"));
    select.select_by_value("").await.unwrap();
    assert_eq!(table(&b).await.len(), rows.len());

    // Search finds the row by the text of its output.
    let search = b
        .client
        .find(fantoccini::Locator::Id("search"))
        .await
        .unwrap();
    search.send_keys("onerror").await.unwrap();
    let found = table(&b).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0][1], "x1");

    assert_eq!(b.dialog().await, None, "an alert fired");
    let errors = b.errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_ten_thousand_rows_are_paged() {
    let Some(b) = Browser::start().await else {
        return;
    };
    let ws = Workspace::new();
    ws.csv_rows(10_000);
    let job = ws.write_job(
        "job.toml",
        &JobFile {
            limits: "max_in_flight = 64",
            output: "path = \"out/result.jsonl\"",
            ..JobFile::default()
        },
    );
    let out = ws.run(&["run", &job, "--mock", "--mock-latency-ms", "0", "--quiet"]);
    assert_exit(&out, 0);
    let out = ws.run(&["report", &job]);
    assert_exit(&out, 0);
    b.open(&ws.path("out/result.report.html")).await;
    let errors = b.errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let count = b
        .eval("return document.getElementById('count').textContent;")
        .await;
    assert_eq!(count, "10,000 of 10,000 rows");
    let shown = table(&b).await;
    assert_eq!(shown.len(), 100, "one page of rows");
    assert_eq!(shown[0][0], "1");
    b.client
        .find(fantoccini::Locator::Id("next"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = table(&b).await;
    assert_eq!(shown[0][0], "101");
    assert_eq!(shown[0][1], "r101");
    let errors = b.errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.close().await;
}
