//! The built-in mock API, driven over HTTP the way clients and other tests will use it.

use crate::common::start_mock_in_process as start;
use promptmill_mock::{MockServer, MockStatsSnapshot};
use serde_json::{json, Value};
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn chat_body(text: &str) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": text}
        ],
        "temperature": 0.2,
        "seed": 7
    })
}

/// `POST /chat/completions` with `key` as the bearer token (none when `None`).
async fn chat_as(server: &MockServer, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = client().post(format!("{}/chat/completions", server.base_url()));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.json(body).send().await.unwrap()
}

/// `POST /chat/completions` with a key the mock takes (it checks none unless told one).
async fn chat(server: &MockServer, body: &Value) -> reqwest::Response {
    chat_as(server, Some("sk-test"), body).await
}

/// Sends `req` and reads the answer's JSON body.
async fn fetch<T: serde::de::DeserializeOwned>(req: reqwest::RequestBuilder) -> T {
    req.send().await.unwrap().json().await.unwrap()
}

async fn json_of(resp: reqwest::Response) -> Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn chat_completion_has_openai_shape_and_is_deterministic() {
    let server = start(&[]).await;
    assert!(server.base_url().starts_with("http://127.0.0.1:"));
    assert!(server.base_url().ends_with("/v1"));
    let body = chat_body("Classify the sentiment of: I love this product so much");
    let resp = chat(&server, &body).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "x-request-id").unwrap().starts_with("req_"));
    assert!(
        header(&resp, "x-ratelimit-limit-requests").is_none(),
        "no limit set"
    );
    let v = json_of(resp).await;
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-4o-mini");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(
        content.starts_with("Mock answer for: Classify the sentiment of: I love this"),
        "{content}"
    );
    let u = &v["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!((20..=60).contains(&c), "{c}");
    assert!(p > 6);
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + c);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 0);

    let again = json_of(chat(&server, &body).await).await;
    assert_eq!(again["choices"], v["choices"]);
    assert_eq!(again["usage"], v["usage"]);
    let stats = server.stats();
    assert_eq!((stats.requests, stats.ok), (2, 2));
    assert_eq!((stats.distinct_prompts, stats.duplicate_prompts), (1, 1));
    assert_eq!(stats.prompt_tokens, 2 * p);
    server.shutdown().await;
}

#[tokio::test]
async fn max_tokens_n_and_stop_shape_the_choices() {
    let server = start(&[]).await;
    let mut body = chat_body("Write a long story about a lighthouse keeper");
    body["max_completion_tokens"] = json!(5);
    body["n"] = json!(3);
    let v = json_of(chat(&server, &body).await).await;
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let mut sum = 0;
    for (i, ch) in choices.iter().enumerate() {
        assert_eq!(ch["index"], i);
        assert_eq!(ch["finish_reason"], "length");
        let text = ch["message"]["content"].as_str().unwrap();
        assert!(text.len() <= 20, "{text}");
        sum += text.len().div_ceil(4) as u64;
    }
    assert_eq!(v["usage"]["completion_tokens"].as_u64().unwrap(), sum);

    let mut body = chat_body("stop here please");
    body["stop"] = json!(["here"]);
    let v = json_of(chat(&server, &body).await).await;
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Mock answer for: stop "
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn over_rpm_answers_429_with_retry_and_ratelimit_headers() {
    // 60 RPM: a one-second slice of 1 request, refilled after 1 s (slow enough that a
    // loaded machine cannot refill it between two requests by accident).
    let server = start(&["--rpm", "60", "--tpm", "1000000"]).await;
    let body = chat_body("hello");
    let resp = chat(&server, &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-ratelimit-limit-requests"), Some("60"));
    assert_eq!(header(&resp, "x-ratelimit-remaining-requests"), Some("59"));
    let reset = header(&resp, "x-ratelimit-reset-requests").unwrap();
    assert!(reset.ends_with("ms") || reset == "1s", "{reset}");
    assert_eq!(header(&resp, "x-ratelimit-limit-tokens"), Some("1000000"));
    assert!(header(&resp, "x-ratelimit-remaining-tokens").is_some());
    assert!(header(&resp, "x-ratelimit-reset-tokens").is_some());
    let resp = chat(&server, &body).await;
    assert_eq!(resp.status(), 429);
    let ms: u64 = header(&resp, "retry-after-ms").unwrap().parse().unwrap();
    assert!((1..=1000).contains(&ms), "{ms}");
    assert_eq!(header(&resp, "retry-after"), Some("1"));
    assert!(header(&resp, "x-ratelimit-remaining-requests").is_some());
    let v = json_of(resp).await;
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["param"].is_null());
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Rate limit reached for requests"));

    tokio::time::sleep(Duration::from_millis(ms)).await;
    assert_eq!(
        chat(&server, &body).await.status(),
        200,
        "room after retry-after-ms"
    );
    let stats = server.stats();
    assert_eq!((stats.ok, stats.rate_limited), (2, 1));
}

#[tokio::test]
async fn over_tpm_answers_429_tokens() {
    // 6000 TPM: 100 tokens per second slice; each request charges prompt + 200.
    let server = start(&["--tpm", "6000"]).await;
    let mut body = chat_body("count my tokens");
    body["max_tokens"] = json!(200);
    assert_eq!(
        chat(&server, &body).await.status(),
        200,
        "a full slice admits it"
    );
    let resp = chat(&server, &body).await;
    assert_eq!(resp.status(), 429);
    assert!(header(&resp, "x-ratelimit-limit-requests").is_none());
    assert_eq!(header(&resp, "x-ratelimit-limit-tokens"), Some("6000"));
    let v = json_of(resp).await;
    assert_eq!(v["error"]["type"], "tokens");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn no_rate_headers_flag_omits_them() {
    let server = start(&["--rpm", "600", "--no-rate-headers"]).await;
    let resp = chat(&server, &chat_body("hi")).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "x-ratelimit-limit-requests").is_none());
}

#[tokio::test]
async fn wrong_or_missing_key_is_401_and_masked() {
    let server = start(&["--api-key", "sk-right-key-000000"]).await;
    let body = chat_body("hi");
    let resp = chat_as(&server, Some("sk-wrong-key-1234abcd"), &body).await;
    assert_eq!(resp.status(), 401);
    let v = json_of(resp).await;
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert_eq!(msg, "Incorrect API key provided: sk-...abcd.");

    let resp = chat_as(&server, None, &body).await;
    assert_eq!(resp.status(), 401);
    let resp = chat_as(&server, Some("sk-right-key-000000"), &body).await;
    assert_eq!(resp.status(), 200);
    let stats = server.stats();
    assert_eq!((stats.requests, stats.unauthorized, stats.ok), (3, 2, 1));
}

#[tokio::test]
async fn fail_rate_answers_some_500s_reproducibly() {
    let run = || async {
        let server = start(&["--fail-rate", "0.3", "--seed", "9"]).await;
        let mut statuses = Vec::new();
        for i in 0..100 {
            let resp = chat(&server, &chat_body(&format!("row {i}"))).await;
            if resp.status() == 500 {
                let v = json_of(resp).await;
                assert_eq!(v["error"]["type"], "server_error");
                assert!(v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("The server had an error while processing your request."));
                statuses.push(500);
            } else {
                statuses.push(resp.status().as_u16());
            }
        }
        let stats = server.stats();
        assert_eq!(stats.server_errors + stats.ok, 100);
        statuses
    };
    let first = run().await;
    let fails = first.iter().filter(|s| **s == 500).count();
    assert!(
        (15..=45).contains(&fails),
        "{fails} of 100 failed at fail_rate 0.3"
    );
    assert_eq!(first, run().await, "same seed, same sequence of faults");
}

#[tokio::test]
async fn markers_misbehave_on_demand() {
    let server = start(&[]).await;
    let status = |text: &'static str| {
        let server = &server;
        async move { chat(server, &chat_body(text)).await.status().as_u16() }
    };
    assert_eq!(status("x [[mock:400]]").await, 400);
    assert_eq!(status("x [[mock:500]]").await, 500);
    assert_eq!(status("x [[mock:500]]").await, 500);
    assert_eq!(status("typo [[mock:fail_first:1]]").await, 400);
    for expected in [500, 500, 200, 200] {
        assert_eq!(status("y [[mock:fail-first:2]]").await, expected);
    }

    let v = json_of(chat(&server, &chat_body("z [[mock:length]]")).await).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let v = json_of(chat(&server, &chat_body("Echo me back [[mock:echo]]")).await).await;
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Echo me back [[mock:echo]]"
    );

    let resp = chat(&server, &chat_body("[[mock:bad-json]]")).await;
    assert_eq!(resp.status(), 200);
    assert!(serde_json::from_str::<Value>(&resp.text().await.unwrap()).is_err());
    let resp = chat(&server, &chat_body("[[mock:no-choices]]")).await;
    assert_eq!(json_of(resp).await, json!({"choices": []}));

    let short = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let url = format!("{}/chat/completions", server.base_url());
    let hang = short
        .post(&url)
        .json(&chat_body("[[mock:hang]]"))
        .send()
        .await;
    assert!(hang.unwrap_err().is_timeout());
    let slow = short
        .post(&url)
        .json(&chat_body("[[mock:slow-body]]"))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200, "headers arrive");
    assert!(
        slow.text().await.unwrap_err().is_timeout(),
        "body never completes"
    );

    let stats = server.stats();
    assert_eq!(stats.bad_requests, 2);
    assert_eq!(stats.server_errors, 4);
    // Shutdown does not wait an hour for the hung and stalled requests.
    tokio::time::timeout(Duration::from_secs(3), server.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn quota_runs_out_for_good() {
    let server = start(&["--quota-requests", "2"]).await;
    for i in 0..2 {
        assert_eq!(
            chat(&server, &chat_body(&format!("q{i}"))).await.status(),
            200
        );
    }
    for i in 2..4 {
        let resp = chat(&server, &chat_body(&format!("q{i}"))).await;
        assert_eq!(resp.status(), 429);
        let v = json_of(resp).await;
        assert_eq!(v["error"]["type"], "insufficient_quota");
        assert_eq!(v["error"]["code"], "insufficient_quota");
    }
    assert_eq!(server.stats().quota_exceeded, 2);
}

#[tokio::test]
async fn stats_and_reset_over_http() {
    let server = start(&[]).await;
    for text in ["a", "b", "a"] {
        assert_eq!(chat(&server, &chat_body(text)).await.status(), 200);
    }
    let root = server.base_url().trim_end_matches("/v1").to_owned();
    let stats: MockStatsSnapshot = fetch(client().get(format!("{root}/_mock/stats"))).await;
    assert_eq!(stats, server.stats());
    assert_eq!((stats.requests, stats.ok), (3, 3));
    assert_eq!((stats.distinct_prompts, stats.duplicate_prompts), (2, 1));
    let raw: Value = fetch(client().get(format!("{root}/_mock/stats"))).await;
    assert_eq!(raw["duplicate_prompts"], 1);

    let zeroed: MockStatsSnapshot = fetch(client().post(format!("{root}/_mock/reset"))).await;
    assert_eq!(zeroed, MockStatsSnapshot::default());
    assert_eq!(server.stats(), MockStatsSnapshot::default());

    let resp = client()
        .post(format!("{root}/v1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        json_of(resp).await["error"]["message"],
        "Invalid URL (POST /v1/nope)"
    );
}

#[tokio::test]
async fn bad_bodies_are_400() {
    let server = start(&[]).await;
    let url = format!("{}/chat/completions", server.base_url());
    let resp = client().post(&url).body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        json_of(resp).await["error"]["type"],
        "invalid_request_error"
    );
    let resp = chat(&server, &json!({"model": "m"})).await;
    assert_eq!(resp.status(), 400);
    let resp = chat(
        &server,
        &json!({"messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(server.stats().bad_requests, 3);
}

#[tokio::test]
async fn legacy_completions_endpoint() {
    let server = start(&[]).await;
    let resp = client()
        .post(format!("{}/completions", server.base_url()))
        .json(&json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi to the world", "max_tokens": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = json_of(resp).await;
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "gpt-3.5-turbo-instruct");
    let choice = &v["choices"][0];
    assert!(choice["text"]
        .as_str()
        .unwrap()
        .starts_with("Mock answer for: Say hi to the world"));
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    let c = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["total_tokens"].as_u64().unwrap(), 5 + c);

    // Without max_tokens the legacy endpoint stops at 16 tokens, like OpenAI's.
    let again = json!({"model": "m", "prompt": "again"});
    let v: Value = fetch(
        client()
            .post(format!("{}/completions", server.base_url()))
            .json(&again),
    )
    .await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 16);
}

#[tokio::test]
async fn azure_route_checks_api_key_and_api_version() {
    let server = start(&["--api-key", "az-key-0123"]).await;
    let root = server.base_url().trim_end_matches("/v1").to_string();
    let url = |q: &str| format!("{root}/openai/deployments/my-dep/chat/completions{q}");
    let mut body = chat_body("hello azure");
    body.as_object_mut().unwrap().remove("model");
    let send =
        |u: String, key: &'static str| client().post(u).header("api-key", key).json(&body).send();
    let ok = send(url("?api-version=2024-10-21"), "az-key-0123")
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let v = json_of(ok).await;
    assert_eq!(
        v["model"], "my-dep",
        "the deployment stands in for the model"
    );
    let no_version = send(url(""), "az-key-0123").await.unwrap();
    assert_eq!(no_version.status(), 400);
    assert!(json_of(no_version).await["error"]["message"]
        .as_str()
        .unwrap()
        .contains("api-version"));
    let wrong = send(url("?api-version=2024-10-21"), "az-nope")
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
}

#[tokio::test]
async fn anthropic_route_has_anthropic_shapes() {
    let server = start(&["--api-key", "ant-key-0123", "--rpm", "600"]).await;
    let url = format!("{}/messages", server.base_url());
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 50, "system": "Be terse.",
        "messages": [{"role": "user", "content": "hello [[mock:fail-first:1]]"}]});
    let post = |b: &Value, version: bool| {
        let mut r = client().post(&url).header("x-api-key", "ant-key-0123");
        if version {
            r = r.header("anthropic-version", "2023-06-01");
        }
        r.json(b).send()
    };
    let no_version = post(&body, false).await.unwrap();
    assert_eq!(no_version.status(), 400);
    let v = json_of(no_version).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let overloaded = post(&body, true).await.unwrap();
    assert_eq!(overloaded.status().as_u16(), 529);
    assert_eq!(
        json_of(overloaded).await["error"]["type"],
        "overloaded_error"
    );
    let ok = post(&body, true).await.unwrap();
    assert_eq!(ok.status(), 200);
    let reset = header(&ok, "anthropic-ratelimit-requests-reset")
        .unwrap()
        .to_string();
    assert!(promptmill::time::parse_rfc3339(&reset).is_some(), "{reset}");
    assert_eq!(
        header(&ok, "anthropic-ratelimit-requests-limit"),
        Some("600")
    );
    let v = json_of(ok).await;
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 5);
    let mut no_max = body.clone();
    no_max.as_object_mut().unwrap().remove("max_tokens");
    assert_eq!(post(&no_max, true).await.unwrap().status(), 400);
}

#[tokio::test]
async fn streams_end_with_usage_and_done() {
    let server = start(&[]).await;
    let mut body = chat_body("stream me");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = chat(&server, &body).await;
    assert_eq!(header(&resp, "content-type"), Some("text/event-stream"));
    let text = resp.text().await.unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let usage: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let mut bad = chat_body("x");
    bad["stream_options"] = json!({"include_usage": true});
    assert_eq!(chat(&server, &bad).await.status(), 400);
}
