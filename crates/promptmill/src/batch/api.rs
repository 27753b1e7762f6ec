//! The OpenAI Files and Batches endpoints: upload, create, retrieve, list, download.

use std::fs::File;
use std::io::{Seek as _, Write as _};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::state::RequestCounts;
use crate::client::{self, Provider, Secret};
use crate::config::Job;
use crate::slots::temp_file_beside;

/// The parts of a batch object promptmill uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchObject {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub input_file_id: String,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    #[serde(default)]
    pub request_counts: Option<RequestCounts>,
    #[serde(default)]
    pub created_at: Option<u64>,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Validation errors of a `failed` batch.
    #[serde(default)]
    pub errors: Option<Value>,
}

impl BatchObject {
    /// Why a `failed` batch failed, as the provider says it.
    pub fn failure_reason(&self) -> String {
        self.errors
            .as_ref()
            .map_or_else(|| "no reason given".into(), |e| e.to_string())
    }

    /// Whether a `failed` batch was refused for the provider's enqueued-token limit
    /// (`errors.data[].code = "token_limit_exceeded"`): nothing in it ran, and it can be
    /// submitted again once other batches finish.
    pub fn token_limit_exceeded(&self) -> bool {
        self.status == "failed"
            && self
                .errors
                .as_ref()
                .and_then(|e| e["data"].as_array())
                .is_some_and(|d| d.iter().any(|e| e["code"] == "token_limit_exceeded"))
    }
}

#[derive(Deserialize)]
struct Page {
    data: Vec<BatchObject>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

/// A client for the Files and Batches endpoints of one job's API. Its transport (base URL,
/// the job's provider's authentication, error messages) also carries Anthropic's Message
/// Batches (see `anthropic.rs`).
pub struct BatchApi {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    key: Secret,
    provider: Box<dyn Provider>,
}

impl BatchApi {
    /// The client for `job` (reads nothing from the network).
    pub fn for_job(job: &Job, key: Secret) -> anyhow::Result<BatchApi> {
        let base = client::base_url(job);
        client::check_base_url(&base, job.api.allow_insecure_http)?;
        let http = client::http_client(
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(600)),
        )?;
        Ok(BatchApi {
            http,
            base,
            key,
            provider: client::provider_for(job),
        })
    }

    /// Sends `req` with the job's authentication: the body of a 2xx answer, else an error
    /// naming `what`, the status and the provider's message (the key scrubbed).
    pub(super) async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let resp = self.answer(req, what).await?;
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{what}: the answer was cut off"))?;
        Ok(bytes.to_vec())
    }

    /// Like [`send`](Self::send), streaming a 2xx answer's body into an unnamed temporary
    /// file beside `beside` instead of memory (an output file can be hundreds of
    /// megabytes); the file is returned rewound.
    pub(super) async fn send_to_file(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        beside: &Path,
    ) -> anyhow::Result<File> {
        let mut resp = self.answer(req, what).await?;
        let mut file = temp_file_beside(beside).context("cannot create a temporary file")?;
        while let Some(chunk) = resp
            .chunk()
            .await
            .with_context(|| format!("{what}: the answer was cut off"))?
        {
            file.write_all(&chunk)
                .context("cannot write a temporary file")?;
        }
        file.rewind().context("cannot read a temporary file")?;
        Ok(file)
    }

    /// Sends `req` with the job's authentication; a non-2xx answer is an error naming
    /// `what`, the status and the provider's message (the key scrubbed).
    async fn answer(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = self
            .provider
            .authorize(req, &self.key)
            .send()
            .await
            .with_context(|| format!("{what}: no answer from {}", self.base))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status.is_redirection() {
            let msg = client::redirect_message(resp.headers());
            bail!("{what}: HTTP {}: {}", status.as_u16(), self.key.scrub(&msg));
        }
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{what}: the answer was cut off"))?;
        Err(self.refusal(what, status, &bytes))
    }

    /// The error for a non-2xx answer: `what`, the status and the provider's message, with
    /// the key scrubbed.
    fn refusal(&self, what: &str, status: reqwest::StatusCode, body: &[u8]) -> anyhow::Error {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let msg = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
        anyhow!("{what}: HTTP {}: {}", status.as_u16(), self.key.scrub(&msg))
    }

    /// [`BatchApi::send`], the answer read as JSON.
    pub(super) async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<T> {
        let bytes = self.send(req, what).await?;
        serde_json::from_slice(&bytes).with_context(|| format!("{what}: unexpected answer"))
    }

    /// `POST /files` with purpose `batch`: the file id.
    pub async fn upload(&self, path: &Path) -> anyhow::Result<String> {
        let what = format!("uploading {}", path.display());
        let bytes = tokio::fs::read(path)
            .await
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "batch.jsonl".into());
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name)
            .mime_str("application/jsonl")?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", "batch")
            .part("file", part);
        let req = self
            .http
            .post(format!("{}/files", self.base))
            .multipart(form);
        let v: Value = self.json(req, &what).await?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{what}: the answer has no file id"))
    }

    /// `POST /batches`.
    pub async fn create(
        &self,
        file_id: &str,
        endpoint: &str,
        metadata: &Map<String, Value>,
    ) -> anyhow::Result<BatchObject> {
        let body = json!({"input_file_id": file_id, "endpoint": endpoint,
            "completion_window": "24h", "metadata": metadata});
        let req = self.http.post(format!("{}/batches", self.base)).json(&body);
        self.json(req, &format!("creating a batch from {file_id}"))
            .await
    }

    /// `POST /batches/{id}/cancel`: the batch stops; what it finished stays in its files.
    pub async fn cancel(&self, id: &str) -> anyhow::Result<BatchObject> {
        let req = self.http.post(format!("{}/batches/{id}/cancel", self.base));
        self.json(req, &format!("cancelling batch {id}")).await
    }

    /// `GET /batches/{id}`.
    pub async fn retrieve(&self, id: &str) -> anyhow::Result<BatchObject> {
        let req = self.http.get(format!("{}/batches/{id}", self.base));
        self.json(req, &format!("checking batch {id}")).await
    }

    /// Finds a batch by its chunk key (metadata) or input file id, newest first, looking
    /// through at most `max_pages` pages of 100, passing over the batches in `skip`.
    pub async fn find(
        &self,
        key_field: &str,
        key: &str,
        file_id: &str,
        skip: &[String],
        max_pages: usize,
    ) -> anyhow::Result<Option<BatchObject>> {
        let mut after: Option<String> = None;
        for _ in 0..max_pages {
            let mut req = self
                .http
                .get(format!("{}/batches", self.base))
                .query(&[("limit", "100")]);
            if let Some(a) = &after {
                req = req.query(&[("after", a.as_str())]);
            }
            let page: Page = self.json(req, "listing batches").await?;
            let hit = page.data.into_iter().find(|b| {
                !skip.contains(&b.id)
                    && (b.input_file_id == file_id
                        || b.metadata
                            .as_ref()
                            .and_then(|m| m.get(key_field))
                            .and_then(Value::as_str)
                            == Some(key))
            });
            if hit.is_some() {
                return Ok(hit);
            }
            if !page.has_more || page.last_id.is_none() {
                break;
            }
            after = page.last_id;
        }
        Ok(None)
    }

    /// `GET /files/{id}/content`.
    pub async fn download(&self, file_id: &str, beside: &Path) -> anyhow::Result<File> {
        let req = self
            .http
            .get(format!("{}/files/{file_id}/content", self.base));
        self.send_to_file(req, &format!("downloading file {file_id}"), beside)
            .await
    }
}
