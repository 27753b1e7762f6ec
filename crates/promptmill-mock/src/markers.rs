//! Magic markers in the last user message that make the mock misbehave on purpose.

/// The markers found in one prompt (see the `mock` module docs for what each does).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Markers {
    pub(crate) bad_request: bool,
    pub(crate) always_500: bool,
    pub(crate) fail_first: Option<u32>,
    /// The first N requests for this prompt sent with `service_tier: "flex"` are answered
    /// 429 "resource unavailable", as OpenAI's flex tier does when it has no capacity.
    pub(crate) flex_unavailable: Option<u32>,
    /// Report this many prompt tokens as read from the prompt cache (at most the prompt):
    /// `prompt_tokens_details.cached_tokens`.
    pub(crate) cached: Option<u64>,
    pub(crate) hang: bool,
    pub(crate) bad_json: bool,
    pub(crate) no_choices: bool,
    pub(crate) slow_body: bool,
    pub(crate) length: bool,
    pub(crate) echo: bool,
    /// The answer is the request's settings: `model=… temperature=… max_tokens=…`.
    pub(crate) settings: bool,
    /// The first structured answer to this prompt is not JSON.
    pub(crate) bad_schema: bool,
    /// The first streamed answer to this prompt is cut off half-way.
    pub(crate) cut_stream: bool,
    /// The model refuses: OpenAI's `message.refusal`, Anthropic's `stop_reason: "refusal"`.
    pub(crate) refusal: bool,
    /// `finish_reason: "content_filter"` (Anthropic: `stop_reason: "refusal"`).
    pub(crate) content_filter: bool,
    /// One choice only, whatever `n` asked for (a server that ignores `n`).
    pub(crate) one_choice: bool,
    /// A structured answer's `score` field is this (a judge told what to say); the last
    /// such marker wins.
    pub(crate) score: Option<i32>,
    /// A `[[mock:...]]` we do not know: answered 400 so a typo in a test cannot pass silently.
    pub(crate) unknown: bool,
}

/// Every marker starts with this.
pub(crate) const PREFIX: &str = "[[mock:";

impl Markers {
    /// Find every `[[mock:NAME]]` in `text`.
    pub(crate) fn parse(text: &str) -> Markers {
        let mut m = Markers::default();
        let mut rest = text;
        while let Some(start) = rest.find(PREFIX) {
            let after = &rest[start + PREFIX.len()..];
            let Some(end) = after.find("]]") else {
                m.unknown = true;
                break;
            };
            match &after[..end] {
                "400" => m.bad_request = true,
                "500" => m.always_500 = true,
                "hang" => m.hang = true,
                "bad-json" => m.bad_json = true,
                "no-choices" => m.no_choices = true,
                "slow-body" => m.slow_body = true,
                "length" => m.length = true,
                "echo" => m.echo = true,
                "settings" => m.settings = true,
                "bad-schema" => m.bad_schema = true,
                "cut-stream" => m.cut_stream = true,
                "refusal" => m.refusal = true,
                "content-filter" => m.content_filter = true,
                "one-choice" => m.one_choice = true,
                other => {
                    if let Some(n) = other.strip_prefix("fail-first:") {
                        match n.parse() {
                            Ok(n) => m.fail_first = Some(n),
                            Err(_) => m.unknown = true,
                        }
                    } else if let Some(n) = other.strip_prefix("flex-unavailable:") {
                        match n.parse() {
                            Ok(n) => m.flex_unavailable = Some(n),
                            Err(_) => m.unknown = true,
                        }
                    } else if let Some(n) = other.strip_prefix("cached:") {
                        match n.parse() {
                            Ok(n) => m.cached = Some(n),
                            Err(_) => m.unknown = true,
                        }
                    } else if let Some(n) = other.strip_prefix("score:") {
                        match n.parse() {
                            Ok(n) => m.score = Some(n),
                            Err(_) => m.unknown = true,
                        }
                    } else {
                        m.unknown = true;
                    }
                }
            }
            rest = &after[end + 2..];
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_marker() {
        assert_eq!(Markers::parse("plain text [[mock"), Markers::default());
        let m = Markers::parse("a [[mock:echo]] b [[mock:length]][[mock:fail-first:3]]");
        assert!(m.echo && m.length && !m.unknown);
        assert_eq!(m.fail_first, Some(3));
        assert_eq!(
            Markers::parse("[[mock:flex-unavailable:2]]").flex_unavailable,
            Some(2)
        );
        assert!(Markers::parse("[[mock:flex-unavailable:]]").unknown);
        assert_eq!(Markers::parse("[[mock:cached:64]]").cached, Some(64));
        assert!(Markers::parse("[[mock:cached:-1]]").unknown);
        let m = Markers::parse("[[mock:score:3]] x [[mock:score:9]]");
        assert_eq!(m.score, Some(9));
        assert!(Markers::parse("[[mock:score:high]]").unknown);
        let m = Markers::parse("[[mock:bad-schema]] [[mock:cut-stream]]");
        assert!(m.bad_schema && m.cut_stream && !m.unknown);
        let m = Markers::parse("[[mock:refusal]][[mock:content-filter]] [[mock:one-choice]]");
        assert!(m.refusal && m.content_filter && m.one_choice && !m.unknown);
        for (t, f) in [
            ("[[mock:400]]", Markers::parse("[[mock:400]]").bad_request),
            ("[[mock:500]]", Markers::parse("[[mock:500]]").always_500),
            ("[[mock:hang]]", Markers::parse("[[mock:hang]]").hang),
            (
                "[[mock:bad-json]]",
                Markers::parse("[[mock:bad-json]]").bad_json,
            ),
            (
                "[[mock:no-choices]]",
                Markers::parse("[[mock:no-choices]]").no_choices,
            ),
            (
                "[[mock:slow-body]]",
                Markers::parse("[[mock:slow-body]]").slow_body,
            ),
        ] {
            assert!(f, "{t}");
        }
    }

    #[test]
    fn typos_are_flagged_not_ignored() {
        assert!(Markers::parse("[[mock:fail_first:2]]").unknown);
        assert!(Markers::parse("[[mock:fail-first:x]]").unknown);
        assert!(Markers::parse("[[mock:echo").unknown);
    }
}
