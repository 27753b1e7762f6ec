//! From a row to exactly what will be sent: rendered messages, the provider's request body,
//! its hash (the row's identity for resume and cache), and its prompt-token count.
//!
//! The dry run, the validation pass and the live run all plan rows with the same code, so the
//! estimate prices exactly the requests the run sends.

use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::client::Provider;
use crate::config::{Endpoint, Job};
use crate::render::{RenderError, Renderer};
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
        let messages = self.renderer.render(row)?;
        Ok(self.planned(messages, prompt_tokens))
    }

    /// Rendered messages as a request: its body, hash and prompt tokens (counted unless
    /// given).
    fn planned(&self, messages: Vec<Message>, prompt_tokens: Option<u64>) -> Planned {
        let body = self.provider.body(&self.job.model, &messages);
        let prompt_tokens = match prompt_tokens {
            Some(n) => n,
            None => self.count(&messages),
        };
        let hash = request_hash(self.provider.name(), &self.url, &body);
        Planned {
            messages,
            body,
            hash,
            prompt_tokens,
        }
    }

    /// Plans a rejected row's next attempt: `feedback` (the failed checks' reasons) goes
    /// where the template puts `check_feedback`, or, when no template reads it, after the
    /// last user message, under [`crate::checks::FEEDBACK_HEADER`].
    pub fn plan_with_feedback(&self, row: &Row, feedback: &str) -> Result<Planned, RenderError> {
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
        Ok(self.planned(messages, None))
    }

    /// Plans the judge's request about `answer` (this planner being the judge's; see
    /// [`crate::judge`]). Its hash covers the answer: a new answer needs a new verdict.
    pub fn plan_judge(&self, row: &Row, answer: &str) -> Result<Planned, RenderError> {
        let messages = self.renderer.render_judge(row, answer)?;
        Ok(self.planned(messages, None))
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
        match self.job.api.endpoint {
            Endpoint::Chat => counter.count_chat(messages),
            Endpoint::Completions => {
                let text: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                counter.count_text(&text.join("\n\n"))
            }
        }
    }

    /// Lets go of the tokenizer (its tables are freed once no other counter uses them): a
    /// run calls it after the estimate pass has counted every row.
    pub fn release_tokenizer(&mut self) {
        self.counter = None;
    }

    /// True when prompt-token counts are exact for this model.
    pub fn exact_tokens(&self) -> bool {
        self.exact
    }

    /// The tokenizer used for prompt counts.
    pub fn encoding(&self) -> crate::tokens::Encoding {
        self.encoding
    }

    /// Tokens a request may generate in total (max_tokens × variants).
    pub fn max_completion_tokens(&self) -> u64 {
        self.job.model.max_tokens as u64 * self.job.model.n.unwrap_or(1).max(1) as u64
    }

    /// The prompt-token count to reserve for budget and rate limits: exact counts as they
    /// are, approximations with a 25% margin so the cap holds even when they run low.
    pub fn prompt_tokens_to_reserve(&self, counted: u64) -> u64 {
        if self.exact {
            counted
        } else {
            counted + counted / 4 + 8
        }
    }

    /// The renderer (for its variable list).
    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }
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
