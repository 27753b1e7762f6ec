//! `promptmill mock-run-batch -i IN -o OUT`: the mock standing in for vLLM's offline batch
//! runner (`vllm run-batch`, `python -m vllm.entrypoints.openai.run_batch`), the path for
//! self-hosted models: it reads an OpenAI batch input file and writes vLLM's output file.
//!
//! Every line is answered by the mock's own chat handler (the same text a live request
//! gets), and written in input order as vLLM writes it: one file for answers and errors
//! alike, each line `{"id": "vllm-…", "custom_id", "response": {"status_code",
//! "request_id": "vllm-batch-…", "body"}, "error"}`. An answer has `error: null`; a request
//! the server refused has `body: null` and the refusal in `error`; a `url` other than
//! `/v1/chat/completions` gets vLLM's 400 with its message. A line that is not a batch
//! request (not JSON, no `custom_id`) stops the run, as vLLM's validation does.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::batch_core::ask;
use super::state::Shared;
use super::text::mix;
use super::MockConfig;

/// Flags of `promptmill mock-run-batch` (vLLM's `run-batch` names).
#[derive(Debug, clap::Args)]
pub struct RunBatchArgs {
    /// The OpenAI batch input file (JSONL: `custom_id`, `method`, `url`, `body`).
    #[arg(short = 'i', long = "input-file", value_name = "IN")]
    pub input_file: PathBuf,
    /// Where to write vLLM's output file (JSONL, one line per input line, in input order).
    #[arg(short = 'o', long = "output-file", value_name = "OUT")]
    pub output_file: PathBuf,
    /// Seed for the answer text (the mock server's `--seed`).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Answers every line of `args.input_file` into `args.output_file`; returns the number of
/// lines written.
pub async fn run_batch(args: RunBatchArgs) -> anyhow::Result<u64> {
    let input = &args.input_file;
    let file =
        std::fs::File::open(input).with_context(|| format!("{}: cannot read", input.display()))?;
    let out = &args.output_file;
    let mut w = BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("{}: cannot create", out.display()))?,
    );
    let cfg = MockConfig {
        seed: args.seed,
        ..MockConfig::default()
    };
    // Nothing shuts this in-process mock down: it ends with the command.
    let (_down, rx) = watch::channel(false);
    let shared = Arc::new(Shared::new(cfg, rx));
    let headers = HeaderMap::new();
    let mut n = 0u64;
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.with_context(|| format!("{}: cannot read", input.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = || format!("{}: line {}", input.display(), i + 1);
        let v: Value =
            serde_json::from_slice(&line).with_context(|| format!("{}: not JSON", at()))?;
        let Some(custom_id) = v["custom_id"].as_str() else {
            bail!("{}: no custom_id", at());
        };
        n += 1;
        let id = format!("vllm-{:016x}", mix(args.seed ^ n));
        let request_id = format!("vllm-batch-{:016x}", mix(args.seed ^ n ^ 0x5eed));
        let url = v["url"].as_str().unwrap_or("");
        let result = if url != "/v1/chat/completions" {
            json!({"id": id, "custom_id": custom_id,
                "response": {"status_code": 400, "request_id": request_id, "body": null},
                "error": format!("URL {url} was used. Supported endpoints: \
                    /v1/chat/completions, /v1/embeddings, /score, /rerank.")})
        } else {
            let body = serde_json::to_vec(&v["body"]).unwrap_or_default();
            let chat = super::openai::chat_completions;
            let (status, bytes) = ask(chat, &shared, &headers, &[AUTHORIZATION], body).await;
            let answer: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            if status.is_success() {
                json!({"id": id, "custom_id": custom_id,
                    "response": {"status_code": status.as_u16(), "request_id": request_id,
                        "body": answer},
                    "error": null})
            } else {
                // vLLM's ErrorResponse: the error object, no body.
                json!({"id": id, "custom_id": custom_id,
                    "response": {"status_code": status.as_u16(), "request_id": request_id,
                        "body": null},
                    "error": {"error": answer["error"]}})
            }
        };
        writeln!(w, "{result}").with_context(|| format!("{}: cannot write", out.display()))?;
    }
    w.flush()
        .with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(n)
}
