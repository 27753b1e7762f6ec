//! Azure OpenAI: the OpenAI chat body and response, sent to a deployment URL with an
//! `api-key` header and an `api-version` query parameter.
//!
//! The base URL is the resource endpoint (`AZURE_OPENAI_ENDPOINT`, e.g.
//! `https://my-resource.openai.azure.com`); the deployment defaults to the model name.

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::openai::{parse_openai, parse_openai_stream, OpenAi};
use super::{ApiError, Completion, Provider, Secret, SseEvent};
use crate::config::{Endpoint, ModelConfig};
use crate::types::Message;

/// The `api-version` used when the job sets none: the latest GA data-plane version that
/// supports `json_schema` structured outputs and `stream_options`.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The Azure OpenAI API shape.
#[derive(Debug, Clone)]
pub struct Azure {
    api_version: String,
    deployment: Option<String>,
    /// Azure's chat body is OpenAI's (the `model` field is ignored by Azure).
    body: OpenAi,
}

impl Azure {
    /// A provider for the given `api-version` (None: [`DEFAULT_API_VERSION`]) and deployment
    /// (None: the model name).
    pub fn new(api_version: Option<String>, deployment: Option<String>) -> Azure {
        Azure {
            api_version: api_version
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_API_VERSION.to_string()),
            deployment: deployment.filter(|d| !d.trim().is_empty()),
            body: OpenAi::new(Endpoint::Chat),
        }
    }
}

impl Provider for Azure {
    fn name(&self) -> &'static str {
        "azure"
    }

    fn body(&self, model: &ModelConfig, messages: &[Message]) -> Value {
        self.body.body(model, messages)
    }

    fn url(&self, base_url: &str, model: &ModelConfig) -> String {
        let base = base_url.trim_end_matches('/');
        // An endpoint given with the `/openai` suffix (as some portals show it) works too.
        let base = base.strip_suffix("/openai").unwrap_or(base);
        let deployment = self.deployment.as_deref().unwrap_or(&model.name);
        let mut url = format!("{base}/openai/deployments/");
        url.extend(url::form_urlencoded::byte_serialize(deployment.as_bytes()));
        url.push_str("/chat/completions?api-version=");
        url.extend(url::form_urlencoded::byte_serialize(
            self.api_version.as_bytes(),
        ));
        url
    }

    fn authorize(&self, req: reqwest::RequestBuilder, key: &Secret) -> reqwest::RequestBuilder {
        match key.header_value("") {
            Some(v) => req.header("api-key", v),
            None => req,
        }
    }

    fn parse(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> Result<Completion, ApiError> {
        parse_openai(status, headers, body)
    }

    fn parse_stream(
        &self,
        headers: &HeaderMap,
        events: &[SseEvent],
    ) -> Result<Completion, ApiError> {
        parse_openai_stream(headers, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelConfig {
        toml::from_str("name = \"gpt-4o-mini\"\nmax_tokens = 10").unwrap()
    }

    #[test]
    fn deployment_url_carries_the_version_and_never_the_key() {
        let a = Azure::new(None, None);
        assert_eq!(
            a.url("https://r.openai.azure.com/", &model()),
            "https://r.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
        );
        let a = Azure::new(Some("2025-01-01-preview".into()), Some("my copy".into()));
        assert_eq!(
            a.url("https://r.openai.azure.com/openai", &model()),
            "https://r.openai.azure.com/openai/deployments/my+copy/chat/completions?api-version=2025-01-01-preview"
        );
        let req = a.authorize(
            reqwest::Client::new().post("https://r.openai.azure.com/x"),
            &Secret::new("azkey".into()),
        );
        let req = req.build().unwrap();
        assert_eq!(req.headers()["api-key"], "azkey");
        assert!(req.headers().get("authorization").is_none());
        assert!(!req.url().as_str().contains("azkey"));
    }
}
