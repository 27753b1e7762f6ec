//! Cost tests against hand-computed figures from the shipped LiteLLM snapshot
//! (litellm 1.110.2). Prices are quoted in the comments as the file lists them (USD per
//! token) and then in picodollars (1 USD = 1e12).

use super::table::{strip_snapshot, BUILTIN_FOR_TEST};
use super::*;
use std::io::Write;
use std::path::Path;

fn usage(prompt: u64, completion: u64, cached: u64, cache_write: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: cached,
        cache_write_tokens: cache_write,
        ..Usage::default()
    }
}

fn price(model: &str) -> &'static ModelPrice {
    PriceTable::builtin()
        .lookup(model)
        .unwrap_or_else(|| panic!("{model} missing from the built-in table"))
}

#[test]
fn builtin_table_parses_with_its_metadata() {
    // Parse the embedded text directly so a broken file fails here with the serde error.
    let (json, meta, name) = BUILTIN_FOR_TEST;
    let table = PriceTable::parse(json, Path::new(name)).unwrap();
    let meta: serde_json::Value = serde_json::from_str(meta).unwrap();
    assert_eq!(meta["version"], "1.110.2");
    let t = PriceTable::builtin();
    assert_eq!(t.as_of(), "2026-11-20");
    assert!(t.source().contains("litellm 1.110.2"), "{}", t.source());
    assert_eq!(t.origin(), &PriceOrigin::Builtin);
    assert_eq!(t.len(), table.len());
    assert!(t.len() > 3000, "{}", t.len());
    for model in [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5.4",
        "gpt-5.5",
        "o3-mini",
        "o4-mini",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-opus-4-6",
        "gemini-2.5-pro",
    ] {
        assert!(t.lookup(model).is_some(), "{model} not in table");
    }
    assert_eq!(
        price("gpt-5").deprecation_date.as_deref(),
        Some("2026-12-11")
    );
}

#[test]
fn keys_parse_into_part_band_and_tier() {
    let k = |s: &str| parse_key(s);
    assert_eq!(
        k("input_cost_per_token"),
        Some(PriceKey {
            part: Part::Input,
            above: None,
            tier: Tier::Live
        })
    );
    assert_eq!(
        k("cache_read_input_token_cost_above_272k_tokens_flex"),
        Some(PriceKey {
            part: Part::CacheRead,
            above: Some(272_000),
            tier: Tier::Flex
        })
    );
    assert_eq!(
        k("cache_creation_input_token_cost_above_1hr_above_200k_tokens"),
        Some(PriceKey {
            part: Part::CacheWrite1h,
            above: Some(200_000),
            tier: Tier::Live
        })
    );
    assert_eq!(
        k("output_cost_per_token_batches"),
        Some(PriceKey {
            part: Part::Output,
            above: None,
            tier: Tier::Batch
        })
    );
    for other in [
        "cache_creation_input_token_cost_above_12hr",
        "input_cost_per_token_above_k_tokens",
        "input_cost_per_audio_token",
        "output_cost_per_token_ultrafast",
        "input_cost_per_token_above_99999999999999999999k_tokens",
        "max_input_tokens",
    ] {
        assert_eq!(k(other), None, "{other}");
    }
    for name in [
        "cache_creation_input_token_cost_above_1hr_priority",
        "output_cost_per_token_above_200k_tokens_batches",
    ] {
        assert_eq!(key_name(&k(name).unwrap()), name);
    }
}

#[test]
fn tiny_per_token_prices_convert_exactly() {
    assert_eq!(Money::from_usd(5e-9), Money(5_000));
    assert_eq!(Money::from_usd(1.25e-08), Money(12_500));
    assert_eq!(Money::from_usd(1.125e-05), Money(11_250_000));
    assert_eq!(
        price("gpt-5-mini").listed(Part::CacheRead, None, Tier::Flex),
        Some(Money(12_500))
    );
    assert_eq!(
        price("o4-mini").listed(Part::CacheRead, None, Tier::Live),
        Some(Money(275_000))
    );
    assert_eq!(
        price("claude-sonnet-4-5").listed(Part::CacheWrite1h, None, Tier::Live),
        Some(Money(6_000_000))
    );
}

#[test]
fn standard_costs_match_hand_computed_picodollars() {
    // gpt-4o-mini: 1.5e-07 / 6e-07 => 150_000 / 600_000.
    // 1000 prompt + 200 completion = 150_000_000 + 120_000_000.
    let p = price("gpt-4o-mini");
    assert_eq!(
        p.cost(&usage(1000, 200, 0, 0), Tier::Live),
        Money(270_000_000)
    );

    // gpt-4o, cache read: 1024 of 1500 prompt tokens cached. input 2.5e-06, cache read
    // 1.25e-06, output 1e-05: 476*2_500_000 + 1024*1_250_000 + 300*10_000_000.
    let p = price("gpt-4o");
    assert_eq!(
        p.cost(&usage(1500, 300, 1024, 0), Tier::Live),
        Money(1_190_000_000 + 1_280_000_000 + 3_000_000_000)
    );

    // No cache prices => cached tokens at the input price (gpt-3.5-turbo: 5e-07 /
    // 1.5e-06). 100*500_000 + 10*1_500_000 whatever the cached split.
    let p = price("gpt-3.5-turbo");
    assert_eq!(
        p.cost(&usage(100, 10, 40, 0), Tier::Live),
        Money(65_000_000)
    );
    // Inconsistent usage (cached > prompt) never underflows.
    assert_eq!(p.cost(&usage(10, 0, 40, 0), Tier::Live), Money(20_000_000));
}

#[test]
fn cache_writes_5m_and_1h() {
    // claude-sonnet-4-5: input 3e-06, cache read 3e-07, write 3.75e-06, 1-hour write 6e-06,
    // output 1.5e-05. Prompt 10_000 = 2000 uncached + 3000 read + 5000 written, 2000 of
    // them for an hour; 100 out.
    let p = price("claude-sonnet-4-5");
    let u = Usage {
        cache_write_1h_tokens: 2000,
        ..usage(10_000, 100, 3000, 5000)
    };
    // 2000*3_000_000 + 3000*300_000 + 3000*3_750_000 + 2000*6_000_000 + 100*15_000_000
    assert_eq!(
        p.cost(&u, Tier::Live),
        Money(6_000_000_000 + 900_000_000 + 11_250_000_000 + 12_000_000_000 + 1_500_000_000)
    );
    // All 5-minute: 5000*3_750_000 instead.
    assert_eq!(
        p.cost(&usage(10_000, 100, 3000, 5000), Tier::Live),
        Money(6_000_000_000 + 900_000_000 + 18_750_000_000 + 1_500_000_000)
    );
    // A 1-hour count above the writes (a bad server) is capped at the writes.
    let bad = Usage {
        cache_write_1h_tokens: 9000,
        ..usage(10_000, 100, 3000, 5000)
    };
    assert_eq!(
        p.cost(&bad, Tier::Live),
        Money(6_000_000_000 + 900_000_000 + 30_000_000_000 + 1_500_000_000)
    );
}

#[test]
fn batch_times_cache() {
    // claude-sonnet-4-5 batch: input 1.5e-06, read 1.5e-07, write 1.875e-06, output
    // 7.5e-06 listed; the 1-hour write has no batch key, so 6e-06 scales by 1.5/3 = 3e-06.
    let p = price("claude-sonnet-4-5");
    assert!(!p.batch_derived);
    let u = Usage {
        cache_write_1h_tokens: 2000,
        ..usage(10_000, 100, 3000, 5000)
    };
    // 2000*1_500_000 + 3000*150_000 + 3000*1_875_000 + 2000*3_000_000 + 100*7_500_000
    assert_eq!(
        p.cost(&u, Tier::Batch),
        Money(3_000_000_000 + 450_000_000 + 5_625_000_000 + 6_000_000_000 + 750_000_000)
    );

    // gpt-4o lists batch input/output (1.25e-06 / 5e-06) but no batch cache read: 1.25e-06
    // scaled by 1.25/2.5 = 625_000. 476*1_250_000 + 1024*625_000 + 300*5_000_000.
    let p = price("gpt-4o");
    assert_eq!(
        p.cost(&usage(1500, 300, 1024, 0), Tier::Batch),
        Money(595_000_000 + 640_000_000 + 1_500_000_000)
    );

    // gpt-5 lists its batch cache read (6.25e-08): 1000 of 3000 cached, 100 out at 5e-06.
    // 2000*625_000 + 1000*62_500 + 100*5_000_000.
    let p = price("gpt-5");
    assert_eq!(
        p.cost(&usage(3000, 100, 1000, 0), Tier::Batch),
        Money(1_250_000_000 + 62_500_000 + 500_000_000)
    );

    // gpt-3.5-turbo lists none: half of 5e-07 / 1.5e-06.
    let p = price("gpt-3.5-turbo");
    assert!(p.batch_derived);
    assert_eq!(
        p.cost(&usage(1000, 100, 0, 0), Tier::Batch),
        Money(1000 * 250_000 + 100 * 750_000)
    );
}

#[test]
fn flex_and_priority_with_reasoning() {
    // gpt-5-mini: 10_000 prompt, 2000 cached, 500 completion of which 300 reasoning (a
    // subset of completion: billed once, as output).
    let p = price("gpt-5-mini");
    let u = Usage {
        reasoning_tokens: 300,
        ..usage(10_000, 500, 2000, 0)
    };
    // standard: 2.5e-07 / cache 2.5e-08 / 2e-06.
    assert_eq!(
        p.cost(&u, Tier::Live),
        Money(8000 * 250_000 + 2000 * 25_000 + 500 * 2_000_000)
    );
    // flex: 1.25e-07 / cache 1.25e-08 / 1e-06.
    assert_eq!(
        p.cost(&u, Tier::Flex),
        Money(8000 * 125_000 + 2000 * 12_500 + 500 * 1_000_000)
    );
    // priority: 4.5e-07 / cache 4.5e-08 / 3.6e-06.
    assert_eq!(
        p.cost(&u, Tier::Priority),
        Money(8000 * 450_000 + 2000 * 45_000 + 500 * 3_600_000)
    );
    assert_eq!(p.tiers(), Tier::ALL.to_vec());

    // gpt-4o has priority (4.25e-06, cache 2.125e-06, out 1.7e-05) but no flex.
    let p = price("gpt-4o");
    assert_eq!(p.tiers(), vec![Tier::Live, Tier::Priority, Tier::Batch]);
    assert_eq!(
        p.cost(&usage(1500, 300, 1024, 0), Tier::Priority),
        Money(476 * 4_250_000 + 1024 * 2_125_000 + 300 * 17_000_000)
    );
    // Served at a tier the table does not list: billed at standard, never $0.
    assert_eq!(
        p.cost(&usage(1500, 300, 1024, 0), Tier::Flex),
        p.cost(&usage(1500, 300, 1024, 0), Tier::Live)
    );
    // Claude lists neither.
    assert_eq!(
        price("claude-haiku-4-5").tiers(),
        vec![Tier::Live, Tier::Batch]
    );
}

#[test]
fn long_context_threshold_bills_the_whole_request() {
    // gpt-5.4: input 2.5e-06 (5e-06 above 272k), output 1.5e-05 (2.25e-05), cache read
    // 2.5e-07 (5e-07).
    let p = price("gpt-5.4");
    assert_eq!(p.long_context_thresholds(), &[272_000]);
    // At the threshold: base prices.
    assert_eq!(
        p.cost(&usage(272_000, 1000, 0, 0), Tier::Live),
        Money(272_000 * 2_500_000 + 1000 * 15_000_000)
    );
    // One token over: every token at the higher prices.
    assert_eq!(
        p.cost(&usage(272_001, 1000, 0, 0), Tier::Live),
        Money(272_001 * 5_000_000 + 1000 * 22_500_000)
    );
    // Cached tokens count towards the threshold and are billed at the band's read price.
    assert_eq!(
        p.cost(&usage(300_000, 1000, 100_000, 0), Tier::Live),
        Money(200_000 * 5_000_000 + 100_000 * 500_000 + 1000 * 22_500_000)
    );
    // Flex above 272k: 2.5e-06 / read 2.5e-07 / out 1.125e-05.
    assert_eq!(
        p.cost(&usage(300_000, 1000, 100_000, 0), Tier::Flex),
        Money(200_000 * 2_500_000 + 100_000 * 250_000 + 1000 * 11_250_000)
    );
    // Priority lists no band: the band's standard prices scaled by priority/standard
    // input (5e-06 / 2.5e-06 = 2) and output (3e-05 / 1.5e-05 = 2).
    assert_eq!(
        p.cost(&usage(300_000, 1000, 0, 0), Tier::Priority),
        Money(300_000 * 10_000_000 + 1000 * 45_000_000)
    );
    // Summed usage of many small requests is never priced as one long request.
    assert_eq!(
        p.cost_of_many(&usage(300_000, 1000, 0, 0), Tier::Live),
        Money(300_000 * 2_500_000 + 1000 * 15_000_000)
    );

    // gemini-2.5-pro: 200k band; 1.25e-06 -> 2.5e-06 input, 1e-05 -> 1.5e-05 output.
    let p = price("gemini-2.5-pro");
    assert_eq!(
        p.cost(&usage(200_001, 10, 0, 0), Tier::Live),
        Money(200_001 * 2_500_000 + 10 * 15_000_000)
    );
}

#[test]
fn lookup_strips_provider_prefixes_and_snapshot_dates() {
    let t = PriceTable::builtin();
    assert_eq!(t.lookup("openai/gpt-4o-mini").unwrap().model, "gpt-4o-mini");
    assert_eq!(t.lookup("azure/gpt-4.1").unwrap().model, "azure/gpt-4.1");
    assert_eq!(
        t.lookup("anthropic/claude-haiku-4-5").unwrap().model,
        "claude-haiku-4-5"
    );
    assert_eq!(
        t.lookup("openrouter-x/gpt-4o-2024-08-06").unwrap().model,
        "gpt-4o-2024-08-06"
    );
    // No exact entry: the dated suffix is stripped.
    assert_eq!(t.lookup("gpt-5.4-2031-01-01").unwrap().model, "gpt-5.4");
    assert_eq!(
        t.lookup("claude-opus-4-6-20990101").unwrap().model,
        "claude-opus-4-6"
    );
    // An exact dated entry wins over its base (this snapshot kept a higher price).
    let old = t.lookup("gpt-4o-2024-05-13").unwrap();
    assert_eq!(old.model, "gpt-4o-2024-05-13");
    assert_eq!(old.input, Money(5_000_000));
}

#[test]
fn unknown_models_are_none_with_suggestions() {
    let t = PriceTable::builtin();
    for name in [
        "llama-3-70b",
        "gpt-4o-turbo-ultra",
        "",
        "/",
        "openai/",
        "gpt-3.5-turbo-0613", // short snapshot suffixes are not guessed
        "x-20250514",
    ] {
        assert!(t.lookup(name).is_none(), "{name:?} should be unknown");
    }
    let close = t.suggest("gpt-5.5-mni", 5);
    assert!(close.contains(&"gpt-5.5"), "{close:?}");
    assert!(t.suggest("zzzzzzzzzzzzzzzzzzzzzz", 5).is_empty());
}

#[test]
fn snapshot_suffixes() {
    assert_eq!(strip_snapshot("gpt-4o-2024-08-06"), Some("gpt-4o"));
    assert_eq!(
        strip_snapshot("claude-sonnet-4-20250514"),
        Some("claude-sonnet-4")
    );
    assert_eq!(strip_snapshot("gpt-4-0613"), None);
    assert_eq!(strip_snapshot("gpt-4o"), None);
    assert_eq!(strip_snapshot("-2024-08-06"), None);
    assert_eq!(strip_snapshot("model-2024-8-06"), None);
    assert_eq!(
        strip_snapshot("日本語モデル-2024-08-06"),
        Some("日本語モデル")
    );
}

fn write_temp(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// Shaped like LiteLLM's file: a `sample_spec` with prose values, entries priced per
/// second or per image, nulls, arrays, nested objects, provider-qualified names.
const LITELLM_STYLE: &str = r#"{
  "sample_spec": {
    "max_tokens": "LEGACY parameter. set to max_output_tokens if provider specifies it.",
    "max_input_tokens": "max input tokens, if the provider specifies it.",
    "input_cost_per_token": 0.0,
    "output_cost_per_token": 0.0,
    "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
    "mode": "one of: chat, embedding, completion, image_generation",
    "supported_regions": ["global", "us-west-2"]
  },
  "gpt-4o": {
    "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
    "cache_read_input_token_cost": null,
    "input_cost_per_token_batches": 1.25e-06, "output_cost_per_token_batches": 5e-06,
    "max_input_tokens": 128000, "max_output_tokens": 16384.0, "max_tokens": 16384,
    "litellm_provider": "openai", "mode": "chat",
    "supported_modalities": ["text", "image"],
    "search_context_cost_per_query": {"search_context_size_low": 0.03},
    "supports_vision": true
  },
  "azure/gpt-4o": {
    "input_cost_per_token": 2.75e-06, "output_cost_per_token": 1.1e-05,
    "litellm_provider": "azure", "mode": "chat"
  },
  "text-embedding-3-small": {
    "input_cost_per_token": 2e-08, "output_cost_per_token": 0.0,
    "litellm_provider": "openai", "mode": "embedding"
  },
  "whisper-1": {"input_cost_per_second": 0.0001, "output_cost_per_second": 0.0001,
    "litellm_provider": "openai", "mode": "audio_transcription"},
  "dall-e-3": {"input_cost_per_pixel": null, "output_cost_per_image": 0.04,
    "litellm_provider": "openai", "mode": "image_generation"},
  "broken-null": {"input_cost_per_token": null, "output_cost_per_token": 1e-06},
  "broken-string": {"input_cost_per_token": "1e-06", "output_cost_per_token": 1e-06},
  "a-list": [1, 2, 3],
  "a-number": 42,
  "a-null": null
}"#;

#[test]
fn litellm_style_file_with_junk_loads() {
    let f = write_temp(LITELLM_STYLE);
    let t = PriceTable::from_file(f.path()).unwrap();
    let mut names: Vec<&str> = t.models().map(|m| m.model.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["azure/gpt-4o", "gpt-4o", "text-embedding-3-small"]);
    let p = t.lookup("gpt-4o").unwrap();
    assert_eq!(p.listed(Part::CacheRead, None, Tier::Live), None);
    assert_eq!(p.max_output_tokens, Some(16384));
    assert_eq!(p.provider, "openai");
    // Exact provider-qualified entries win over prefix stripping.
    assert_eq!(t.lookup("azure/gpt-4o").unwrap().input, Money(2_750_000));
    assert_eq!(t.lookup("openai/gpt-4o").unwrap().input, Money(2_500_000));
    assert_eq!(t.source(), "");
}

#[test]
fn user_file_overrides_builtin_entries() {
    let f = write_temp(
        r#"{"_source": "my contract", "_as_of": "2030-01-01",
            "gpt-4o-mini": {"input_cost_per_token": 1e-07, "output_cost_per_token": 2e-07},
            "my-model": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}}"#,
    );
    let t = PriceTable::merged_over_builtin(f.path()).unwrap();
    assert_eq!(t.lookup("gpt-4o-mini").unwrap().input, Money(100_000));
    assert_eq!(t.lookup("my-model").unwrap().output, Money(2_000_000));
    assert_eq!(t.lookup("gpt-4o").unwrap().input, Money(2_500_000));
    assert_eq!(t.as_of(), "2030-01-01");
    assert!(t.source().contains("my contract"), "{}", t.source());
    assert!(t.source().contains("built-in"), "{}", t.source());
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let f = write_temp("{\n  \"gpt-4o\": {\"input_cost_per_token\": 1e-06,,}\n}");
    let msg = PriceTable::from_file(f.path()).unwrap_err().to_string();
    assert!(msg.contains(&f.path().display().to_string()), "{msg}");
    assert!(msg.contains("line 2 column"), "{msg}");

    let f = write_temp("[1, 2]");
    let err = PriceTable::from_file(f.path()).unwrap_err();
    assert!(matches!(err, PriceError::NotAnObject { .. }), "{err}");

    let f = write_temp(
        r#"{"sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0}}"#,
    );
    let err = PriceTable::from_file(f.path()).unwrap_err();
    assert!(matches!(err, PriceError::NoModels { .. }), "{err}");

    let missing = Path::new("/nonexistent/prices.json");
    let msg = PriceTable::from_file(missing).unwrap_err().to_string();
    assert!(msg.contains("/nonexistent/prices.json"), "{msg}");
}

#[test]
fn on_geminis_endpoint_gemini_models_take_the_gemini_api_prices() {
    let builtin = PriceTable::builtin();
    let same =
        |a: Option<&ModelPrice>, b: &str| format!("{a:?}") == format!("{:?}", builtin.lookup(b));
    let mut t = builtin.clone();
    // Only LiteLLM's `gemini/` key prices this model.
    assert!(t.lookup("gemini-4-hydrogen").is_none());
    // `gemini-2.5-pro` is also a Vertex AI key, whose cache prices differ from Gemini's.
    assert!(!same(t.lookup("gemini-2.5-pro"), "gemini/gemini-2.5-pro"));
    t.prefer_provider("gemini");
    assert!(t.lookup("gemini-4-hydrogen").is_some());
    assert!(same(
        t.lookup("gemini-4-hydrogen"),
        "gemini/gemini-4-hydrogen"
    ));
    assert!(same(t.lookup("gemini-2.5-pro"), "gemini/gemini-2.5-pro"));
    // Other models, and names with a prefix, are found as before.
    assert!(same(t.lookup("gpt-4o-mini"), "gpt-4o-mini"));
    assert!(same(
        t.lookup("vertex_ai/gemini-2.5-flash-image"),
        "vertex_ai/gemini-2.5-flash-image"
    ));
}

#[test]
fn a_cache_saving_summed_over_many_requests_takes_no_long_context_band() {
    // gpt-5.4: input 2.5e-06, cache read 2.5e-07 (5e-06 / 5e-07 above 272k). 300k tokens
    // read over many requests save (2.5e-06 - 2.5e-07) each: 0.675 USD. Pricing the reads as
    // one long request (the band's 5e-07 read price) said 0.60.
    let p = price("gpt-5.4");
    let t = CacheTokens {
        read: 300_000,
        ..CacheTokens::default()
    };
    let saved = t.saved(p, Tier::Live);
    assert!((saved - 0.675).abs() < 1e-9, "{saved}");
    // claude-sonnet-4-5 writes: 3e-06 input, 3.75e-06 (5 min) and 6e-06 (1 h) writes, read
    // 3e-07. 1,000 read + 1,000 written (400 of them for the hour):
    // read saves 1000 * 2.7e-06 = 0.0027; writes cost 600 * 0.75e-06 + 400 * 3e-06 = 0.00165.
    let p = price("claude-sonnet-4-5");
    let t = CacheTokens {
        read: 1000,
        written: 1000,
        written_1h: 400,
    };
    let saved = t.saved(p, Tier::Live);
    assert!((saved - (0.0027 - 0.00165)).abs() < 1e-9, "{saved}");
}
