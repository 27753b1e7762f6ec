//! The job's settings as the page shows them: what was asked for, never a secret. The API key
//! itself is never read here; only the name of the variable (or file) it comes from is shown,
//! and a base URL loses any user, password, query or fragment it carries.

use serde_json::{json, Value};

use crate::config::{Endpoint, Job, Mode, ProviderKind};

/// The settings of `job` (after command-line overrides), section by section.
pub(super) fn of(job: &Job) -> Value {
    let path = |p: &std::path::Path| p.display().to_string();
    let opt_path = |p: &Option<std::path::PathBuf>| p.as_deref().map(path);
    let prompt = &job.prompt;
    let model = &job.model;
    let api = &job.api;
    json!({
        "job file": path(&job.file),
        "name": job.display_name(),
        "mode": match job.mode {
            Mode::Live => "live",
            Mode::Batch => "batch",
        },
        "input": {
            "path": path(&job.input.path),
            "format": job.input_format().map(|f| f.to_string()),
            "id": job.input.id,
            "skip_bad_rows": job.input.skip_bad_rows,
        },
        "prompt": {
            "system": prompt.system,
            "system_template": opt_path(&prompt.system_template),
            "user": prompt.user,
            "template": opt_path(&prompt.template),
            "messages": prompt.messages.iter().map(|m| json!({
                "role": m.role,
                "content": m.content,
                "template": opt_path(&m.template),
            })).collect::<Vec<_>>(),
        },
        "model": {
            "name": model.name,
            "max_tokens": model.max_tokens,
            "temperature": model.temperature,
            "top_p": model.top_p,
            "stop": model.stop,
            "seed": model.seed,
            "presence_penalty": model.presence_penalty,
            "frequency_penalty": model.frequency_penalty,
            "n": model.n,
            "stream": model.stream,
            "schema": model.schema_json,
            "max_tokens_field": model.max_tokens_field,
            "extra": model.extra.as_ref().and_then(|t| serde_json::to_value(t).ok()),
        },
        "api": {
            "provider": match api.provider {
                ProviderKind::Openai => "openai",
                ProviderKind::Azure => "azure",
                ProviderKind::Anthropic => "anthropic",
            },
            "endpoint": match api.endpoint {
                Endpoint::Chat => "chat",
                Endpoint::Completions => "completions",
            },
            "base_url": api.base_url.as_deref().map(public_url),
            "api key from": match &api.api_key_file {
                Some(f) => format!("file {}", path(f)),
                None => format!("environment variable {}", job.api_key_env()),
            },
            "api_version": api.api_version,
            "deployment": api.deployment,
            "timeout_secs": api.timeout_secs,
            "connect_timeout_secs": api.connect_timeout_secs,
        },
        "limits": {
            "requests_per_minute": job.limits.requests_per_minute,
            "tokens_per_minute": job.limits.tokens_per_minute,
            "max_in_flight": job.limits.max_in_flight,
            "max_retries": job.limits.max_retries,
        },
        "budget": {
            "max_usd_total": job.budget.total_cap(),
            "max_usd_per_run": job.budget.max_usd_per_run,
        },
        "output": {
            "path": path(&job.output.path),
            "columns": job.output.columns,
            "formula_guard": job.output.formula_guard,
        },
        "estimate": { "assume_output_tokens": job.estimate.assume_output_tokens },
        "cache": { "dir": opt_path(&job.cache.dir) },
    })
}

/// A base URL without the parts that may hold credentials (user, password, query, fragment).
fn public_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            // Both fail only for URLs that cannot have a user (no host), which have none.
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(not a valid URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_lose_credentials() {
        assert_eq!(
            public_url("https://user:pw@example.com/v1?api-key=secret#x"),
            "https://example.com/v1"
        );
        assert_eq!(
            public_url("http://127.0.0.1:8080/v1"),
            "http://127.0.0.1:8080/v1"
        );
        assert_eq!(public_url("not a url"), "(not a valid URL)");
    }
}
