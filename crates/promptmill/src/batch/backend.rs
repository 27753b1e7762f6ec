//! The seam between the batch commands and the provider's Batch API: OpenAI's Files and
//! Batches, or Anthropic's Message Batches. Both speak in [`BatchObject`]s and in OpenAI
//! output lines, so collecting, joining and pricing are the same for either.

use std::fs::File;
use std::path::Path;

use anyhow::bail;
use serde_json::Value;

use super::anthropic::{self, MessageBatches};
use super::api::{BatchApi, BatchObject};
use super::input;
use crate::client::{self, Secret};
use crate::config::{Job, ProviderKind};

/// The Batch API of one job's provider.
pub enum Backend {
    /// `POST /files` + `POST /batches` (uploaded input files, metadata on each batch).
    OpenAi(BatchApi),
    /// `POST /messages/batches` (the requests in the body, no metadata).
    Anthropic(MessageBatches),
}

/// Whether promptmill can run `provider`'s jobs in batch mode.
pub fn supports(provider: ProviderKind) -> bool {
    matches!(provider, ProviderKind::Openai | ProviderKind::Anthropic)
}

/// One input-file line for a row's request, in the shape the job's provider takes.
pub fn request_line(
    provider: ProviderKind,
    row: u64,
    hash: &str,
    url: &str,
    body: &Value,
) -> Vec<u8> {
    match provider {
        ProviderKind::Anthropic => anthropic::line(row, hash, body),
        _ => input::line(row, hash, url, body),
    }
}

/// A results file of the job's provider as OpenAI output lines (what `import` reads).
pub fn result_lines(provider: ProviderKind, file: File, beside: &Path) -> anyhow::Result<File> {
    match provider {
        ProviderKind::Anthropic => anthropic::output_lines(file, beside),
        _ => Ok(file),
    }
}

impl Backend {
    /// The backend for `job`'s provider (reads nothing from the network).
    pub fn for_job(job: &Job, key: Secret) -> anyhow::Result<Backend> {
        client::check_provider_settings(job)?;
        Ok(match job.api.provider {
            ProviderKind::Openai => Backend::OpenAi(BatchApi::for_job(job, key)?),
            ProviderKind::Anthropic => Backend::Anthropic(MessageBatches::for_job(job, key)?),
            ProviderKind::Azure => bail!("batch mode does not support api.provider = \"azure\""),
        })
    }

    /// The batch `id` as it is now.
    pub async fn retrieve(&self, id: &str) -> anyhow::Result<BatchObject> {
        match self {
            Backend::OpenAi(a) => a.retrieve(id).await,
            Backend::Anthropic(a) => a.retrieve(id).await,
        }
    }

    /// Asks the provider to cancel batch `id`; returns it as it is then.
    pub async fn cancel(&self, id: &str) -> anyhow::Result<BatchObject> {
        match self {
            Backend::OpenAi(a) => a.cancel(id).await,
            Backend::Anthropic(a) => a.cancel(id).await,
        }
    }

    /// A finished batch's output or error file (`file`, as its [`BatchObject`] names it) as
    /// OpenAI output lines; `input` is the chunk's input file, which Anthropic's results are
    /// checked against.
    pub async fn download(&self, file: &str, input: &Path) -> anyhow::Result<File> {
        match self {
            Backend::OpenAi(a) => a.download(file, input).await,
            Backend::Anthropic(a) => a.results(file, input).await,
        }
    }
}
