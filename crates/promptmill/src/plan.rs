//! From a row to exactly what will be sent: rendered messages, the provider's request body,
//! its hash (the row's identity for resume and cache), and its prompt-token count.
//!
//! The dry run, the validation pass and the live run all plan rows with the same code, so the
//! estimate prices exactly the requests the run sends.

use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::client::Provider;
use crate::config::{Endpoint, Job, ModelConfig};
use crate::render::{RenderError, RenderErrorKind, Renderer};
use crate::tokens::TokenCounter;
use crate::types::{Message, Row};

/// One row, ready to send.
#[derive(Debug, Clone)]
pub struct Planned {
    pub messages: Vec<Message>,
    pub body: Value,
    /// Hex SHA-256 of provider, URL and body: equal hashes mean identical requests.
    pub hash: String,
    /// Prompt tokens as the API will bill them (exact for OpenAI model families).
    pub prompt_tokens: u64,
    /// The row's own model (`model.name_column`), when it is not the job's.
    pub model: Option<String>,
    /// Tokens the request may generate in all (the row's `max_tokens` × variants).
    pub max_completion_tokens: u64,
    /// Whether `prompt_tokens` is exact for the model it is sent to.
    pub exact: bool,
}

/// Plans rows for one job.
pub struct Planner {
    renderer: Renderer,
    /// None once released (see [`Planner::release_tokenizer`]).
    counter: Option<TokenCounter>,
    exact: bool,
    encoding: crate::tokens::Encoding,
    provider: Box<dyn Provider>,
    job: Job,
    url: String,
    /// What request identities are hashed with as the base URL.
    base_url: String,
    /// Token counters of row models (`model.name_column`) other than the job's.
    row_counters: std::sync::Mutex<std::collections::HashMap<String, TokenCounter>>,
}

impl Planner {
    /// A planner for `job` speaking through `provider` to `base_url`.
    pub fn new(
        job: &Job,
        renderer: Renderer,
        provider: Box<dyn Provider>,
        base_url: &str,
    ) -> Planner {
        let url = provider.url(base_url, &job.model);
        let counter = TokenCounter::for_model(&job.model.name);
        Planner {
            renderer,
            exact: counter.is_exact(),
            encoding: counter.encoding(),
            counter: Some(counter),
            provider,
            job: job.clone(),
            url,
            base_url: base_url.to_string(),
            row_counters: Default::default(),
        }
    }

    /// Renders and prices one row.
    pub fn plan(&self, row: &Row) -> Result<Planned, RenderError> {
        self.plan_counted(row, None)
    }

    /// Like [`plan`](Self::plan), with the prompt tokens already counted (by the estimate
    /// pass) when `prompt_tokens` is given.
    pub fn plan_counted(
        &self,
        row: &Row,
        prompt_tokens: Option<u64>,
    ) -> Result<Planned, RenderError> {
        let model = self.row_model(row)?;
        let messages = self.renderer.render(row)?;
        Ok(self.planned(messages, prompt_tokens, model))
    }

    /// Rendered messages as a request: its body, hash and prompt tokens (counted unless
    /// given), sent with the row's own model settings when it has any.
    fn planned(
        &self,
        messages: Vec<Message>,
        prompt_tokens: Option<u64>,
        model: Option<ModelConfig>,
    ) -> Planned {
        let m = model.as_ref().unwrap_or(&self.job.model);
        let body = self.provider.body(m, &messages);
        let other = model.as_ref().filter(|m| m.name != self.job.model.name);
        let (count, exact) = match other {
            None => (
                prompt_tokens.unwrap_or_else(|| self.count(&messages)),
                self.exact,
            ),
            Some(m) => self.count_for(&m.name, &messages),
        };
        let hash = match model {
            Some(ref m) if m.name != self.job.model.name => request_hash(
                self.provider.name(),
                &self.provider.url(&self.base_url, m),
                &body,
            ),
            _ => request_hash(self.provider.name(), &self.url, &body),
        };
        Planned {
            messages,
            body,
            hash,
            prompt_tokens: count,
            model: other.map(|m| m.name.clone()),
            max_completion_tokens: u64::from(m.max_tokens) * u64::from(m.n.unwrap_or(1).max(1)),
            exact,
        }
    }

    /// The row's model settings when the job takes any from its columns
    /// (`model.name_column`, `model.temperature_column`, `model.max_tokens_column`) and the
    /// row's cells set one; `None` = the job's. A cell that cannot be used is the row's
    /// error, naming the column.
    fn row_model(&self, row: &Row) -> Result<Option<ModelConfig>, RenderError> {
        let job = &self.job.model;
        let mut model: Option<ModelConfig> = None;
        let err = |key: &'static str, column: &str, message: String| {
            RenderError::new(
                row,
                RenderErrorKind::Setting {
                    key,
                    column: column.to_string(),
                    message,
                },
            )
        };
        for (key, column) in job.row_columns() {
            let cell = match row.fields.get(column) {
                None => {
                    return Err(err(key, column, "the input has no such column".into()));
                }
                Some(Value::Null) => continue,
                Some(Value::String(s)) if s.trim().is_empty() => continue,
                Some(v) => v,
            };
            let m = model.get_or_insert_with(|| job.clone());
            match key {
                "model.name_column" => {
                    m.name = row_model_name(cell).map_err(|e| err(key, column, e))?
                }
                "model.temperature_column" => {
                    m.temperature = Some(row_temperature(cell).map_err(|e| err(key, column, e))?)
                }
                _ => m.max_tokens = row_max_tokens(cell).map_err(|e| err(key, column, e))?,
            }
        }
        Ok(model)
    }

    /// Counts `messages` for a row model other than the job's, with that model's tokenizer
    /// (loaded once per model): the count and whether it is exact.
    fn count_for(&self, model: &str, messages: &[Message]) -> (u64, bool) {
        let counter = {
            let mut counters = self.row_counters.lock().unwrap_or_else(|e| e.into_inner());
            counters
                .entry(model.to_string())
                .or_insert_with(|| TokenCounter::for_model(model))
                .clone()
        };
        (self.count_with(&counter, messages), counter.is_exact())
    }

    /// Plans a rejected row's next attempt: `feedback` (the failed checks' reasons) goes
    /// where the template puts `check_feedback`, or, when no template reads it, after the
    /// last user message, under [`crate::checks::FEEDBACK_HEADER`].
    pub fn plan_with_feedback(&self, row: &Row, feedback: &str) -> Result<Planned, RenderError> {
        let model = self.row_model(row)?;
        let mut messages = self.renderer.render_with(row, Some(feedback))?;
        if !self.renderer.reads_feedback() {
            let note = format!("\n\n{}\n{feedback}", crate::checks::FEEDBACK_HEADER);
            match messages
                .iter_mut()
                .rev()
                .find(|m| m.role == crate::types::Role::User)
            {
                Some(last) => last.content.push_str(&note),
                None => messages.push(Message::new(
                    crate::types::Role::User,
                    note.trim_start().to_string(),
                )),
            }
        }
        Ok(self.planned(messages, None, model))
    }

    /// Plans the judge's request about `answer` (this planner being the judge's; see
    /// [`crate::judge`]). Its hash covers the answer: a new answer needs a new verdict.
    pub fn plan_judge(&self, row: &Row, answer: &str) -> Result<Planned, RenderError> {
        let messages = self.renderer.render_judge(row, answer)?;
        Ok(self.planned(messages, None, None))
    }

    /// Whether the templates read `answer` (see [`Renderer::reads_answer`]).
    pub fn reads_answer(&self) -> bool {
        self.renderer.reads_answer()
    }

    fn count(&self, messages: &[Message]) -> u64 {
        // Released: a row the estimate did not count (the input changed under the run) loads
        // the tables again for a moment.
        let loaded;
        let counter = match &self.counter {
            Some(c) => c,
            None => {
                loaded = TokenCounter::for_model(&self.job.model.name);
                &loaded
            }
        };
        self.count_with(counter, messages)
    }

    fn count_with(&self, counter: &TokenCounter, messages: &[Message]) -> u64 {
        match self.job.api.endpoint {
            Endpoint::Chat => counter.count_chat(messages),
            Endpoint::Completions => {
                let text: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                counter.count_text(&text.join("\n\n"))
            }
        }
    }

    /// Lets go of the tokenizer (its tables are freed once no other counter uses them, on a
    /// thread of their own): a run calls it after the estimate pass has counted every row.
    pub fn release_tokenizer(&mut self) {
        if let Some(c) = self.counter.take() {
            c.release();
        }
    }

    /// True when prompt-token counts are exact for this model.
    pub fn exact_tokens(&self) -> bool {
        self.exact
    }

    /// The tokenizer used for prompt counts.
    pub fn encoding(&self) -> crate::tokens::Encoding {
        self.encoding
    }

    /// Tokens a request with the job's model settings may generate in total (max_tokens ×
    /// variants); a row with its own `max_tokens` says so in [`Planned`].
    pub fn max_completion_tokens(&self) -> u64 {
        self.job.model.max_tokens as u64 * self.job.model.n.unwrap_or(1).max(1) as u64
    }

    /// The prompt-token count to reserve for budget and rate limits: exact counts as they
    /// are, approximations with a 25% margin so the cap holds even when they run low.
    pub fn prompt_tokens_to_reserve(&self, counted: u64) -> u64 {
        reserve(counted, self.exact)
    }

    /// The renderer (for its variable list).
    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }
}

/// A prompt count with its margin when it is approximate (see
/// [`Planner::prompt_tokens_to_reserve`]).
pub fn reserve(counted: u64, exact: bool) -> u64 {
    if exact {
        counted
    } else {
        counted + counted / 4 + 8
    }
}

/// A model name from a `model.name_column` cell.
fn row_model_name(cell: &Value) -> Result<String, String> {
    let Value::String(s) = cell else {
        return Err(format!("{cell} is not a model name"));
    };
    let name = s.trim();
    if name.len() > 256 || name.chars().any(char::is_control) {
        return Err("not a model name (too long, or it holds control characters)".into());
    }
    Ok(name.to_string())
}

/// A number from a cell: a number, or text that reads as one.
fn cell_number(cell: &Value) -> Option<f64> {
    match cell {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|v| v.is_finite())
}

/// A temperature from a `model.temperature_column` cell, in the range `--temperature` takes.
fn row_temperature(cell: &Value) -> Result<f64, String> {
    let b = crate::bounds::TEMPERATURE;
    cell_number(cell)
        .filter(|v| (b.min..=b.max).contains(v))
        .ok_or_else(|| format!("{cell} is not a temperature from {} to {}", b.min, b.max))
}

/// A `max_tokens` from a `model.max_tokens_column` cell: a whole number, at least 1.
fn row_max_tokens(cell: &Value) -> Result<u32, String> {
    cell_number(cell)
        .filter(|v| v.fract() == 0.0 && *v >= 1.0 && *v <= f64::from(u32::MAX))
        .map(|v| v as u32)
        .ok_or_else(|| format!("{cell} is not a max_tokens (a whole number, at least 1)"))
}

/// The identity of a request: SHA-256 over provider, URL and canonical body JSON.
pub fn request_hash(provider: &str, url: &str, body: &Value) -> String {
    let mut h = Sha256::new();
    h.update(provider.as_bytes());
    h.update(b"\n");
    h.update(url.as_bytes());
    h.update(b"\n");
    // serde_json writes object keys in a fixed order, so equal bodies hash equal.
    if let Ok(bytes) = serde_json::to_vec(body) {
        h.update(&bytes);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_changes_with_what_is_sent() {
        let a = request_hash(
            "openai",
            "u",
            &json!({"model":"m","messages":[{"role":"user","content":"hi"}]}),
        );
        let b = request_hash(
            "openai",
            "u",
            &json!({"model":"m","messages":[{"role":"user","content":"hi"}]}),
        );
        let c = request_hash(
            "openai",
            "u",
            &json!({"model":"m","messages":[{"role":"user","content":"ho"}]}),
        );
        let d = request_hash(
            "openai",
            "v",
            &json!({"model":"m","messages":[{"role":"user","content":"hi"}]}),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(a.len(), 32);
    }
}
