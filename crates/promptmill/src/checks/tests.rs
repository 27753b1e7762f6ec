use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

#[derive(Deserialize)]
struct List {
    checks: Vec<CheckSpec>,
}

fn specs(toml_text: &str) -> Vec<CheckSpec> {
    toml::from_str::<List>(toml_text).unwrap().checks
}

fn checks(toml_text: &str) -> Checks {
    Checks::new(&specs(toml_text), None).unwrap()
}

fn err(toml_text: &str, schema: Option<&[String]>) -> String {
    Checks::new(&specs(toml_text), schema)
        .unwrap_err()
        .to_string()
}

fn row(index: u64, cols: &[(&str, &str)]) -> Row {
    Row {
        index,
        line: index + 2,
        id: (index + 1).to_string(),
        fields: cols
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect(),
    }
}

/// The one check's reason (`None` when it passed).
fn one(c: &mut Checks, r: &Row, answer: &str) -> Option<String> {
    let res = c.evaluate(r, answer, None);
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].passed, res[0].reason.is_none(), "{res:?}");
    res[0].reason.clone()
}

#[test]
fn length_counts_characters_as_users_see_them() {
    let mut c = checks("[[checks]]\nname = \"len\"\nmax_chars = 5\n");
    let r = row(0, &[]);
    // Five "é" written as e + combining acute: 10 code points, 5 characters.
    assert_eq!(one(&mut c, &r, &"e\u{301}".repeat(5)), None);
    assert_eq!(
        one(&mut c, &r, &"e\u{301}".repeat(6)).as_deref(),
        Some("6 characters, max 5")
    );
    // Woman technologist with a skin tone (ZWJ sequence), a family, two flags, one CJK pair:
    // 1 + 1 + 2 + ... characters.
    let emoji = "\u{1F469}\u{1F3FD}\u{200D}\u{1F4BB}\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}\u{1F1EB}\u{1F1F7}\u{1F1EF}\u{1F1F5}";
    assert_eq!(one(&mut c, &r, emoji), None, "4 characters");
    assert_eq!(
        one(&mut c, &r, &format!("{emoji}你好")).as_deref(),
        Some("6 characters, max 5")
    );
    // Right-to-left: Arabic with a combining fatha, Hebrew; surrounding whitespace not counted.
    assert_eq!(
        one(&mut c, &r, "  \u{645}\u{64E}\u{631}\u{62D}\u{628}\u{627}\n"),
        None
    );
    assert_eq!(
        one(&mut c, &r, "שלום עולם").as_deref(),
        Some("9 characters, max 5")
    );

    let mut c = checks("[[checks]]\nname = \"len\"\nmin_chars = 3\nmax_words = 3\n");
    assert_eq!(
        one(&mut c, &r, "ab").as_deref(),
        Some("2 characters, min 3")
    );
    // CJK: one word per ideograph; Arabic and Hebrew words split at spaces; emoji are no words.
    assert_eq!(
        one(&mut c, &r, "你好世界").as_deref(),
        Some("4 words, max 3")
    );
    assert_eq!(one(&mut c, &r, "مرحبا بالعالم 🎉🎉"), None);
    assert_eq!(
        one(&mut c, &r, "Hello שלום עולם world").as_deref(),
        Some("4 words, max 3")
    );
}

#[test]
fn regex_and_not_regex() {
    let mut c =
        checks("[[checks]]\nname = \"shape\"\nregex = '^\\p{Lu}'\nnot_regex = 'https?://\\S+'\n");
    let r = row(0, &[]);
    assert_eq!(one(&mut c, &r, "Élan vital"), None);
    assert_eq!(
        one(&mut c, &r, "élan, see http://x.example/a").as_deref(),
        Some("does not match regex '^\\p{Lu}'; matches not_regex 'https?://\\S+' at 'http://x.example/a'")
    );
    // Scripts without case never match \p{Lu}.
    assert_eq!(
        one(&mut c, &r, "שלום").as_deref(),
        Some("does not match regex '^\\p{Lu}'")
    );
}

#[test]
fn word_lists_match_whole_words_and_phrases() {
    let mut c = checks(
        "[[checks]]\nname = \"claims\"\nnever_contain = [\"Waterproof\", \"free shipping\", \"café\", \"防水\"]\nmust_contain = [\"Acme\"]\n",
    );
    let r = row(0, &[]);
    assert_eq!(
        one(&mut c, &r, "The ACME bottle, waterproofing sold apart."),
        None
    );
    assert_eq!(
        one(&mut c, &r, "Acme: WATERPROOF!").as_deref(),
        Some("contains banned word 'Waterproof'")
    );
    assert_eq!(
        one(&mut c, &r, "acme — Free\n shipping, at the CAFE\u{301}").as_deref(),
        Some("contains banned words 'free shipping', 'café'")
    );
    assert_eq!(one(&mut c, &r, "Acme free, shipping soon"), None);
    assert_eq!(
        one(&mut c, &r, "这个瓶子防水").as_deref(),
        Some("contains banned word '防水'; missing required word 'Acme'")
    );
    let mut c = checks(
        "[[checks]]\nname = \"he\"\nmust_contain = [\"שלום\", \"Acme\"]\ncase_insensitive = false\n",
    );
    assert_eq!(one(&mut c, &r, "Acme אומר שלום"), None);
    assert_eq!(
        one(&mut c, &r, "ACME אומר שלומות").as_deref(),
        Some("missing required words 'שלום', 'Acme'")
    );
}

#[test]
fn no_new_terms_flags_invented_names_and_numbers() {
    let mut c = checks(
        "[[checks]]\nname = \"facts\"\nno_new_terms = true\ncolumns = [\"name\", \"notes\"]\nallow = [\"Free returns\", \"24/7\"]\n",
    );
    let r = row(
        0,
        &[
            ("name", "Acme Trail bottle"),
            (
                "notes",
                "Holds 1,000 ml; weighs 3 kg; 20% lighter. Made in Portugal.",
            ),
            ("secret", "Waterproof 50 ml"),
        ],
    );
    // Sentence-initial words alone are not terms; columns and allow-list cover the rest.
    assert_eq!(
        one(
            &mut c,
            &r,
            "Meet the Acme Trail bottle. It holds 1000 ml, weighs 3kg and is 20 % lighter. \
             Made in Portugal. Free returns, help 24/7. I love it, as I said."
        ),
        None
    );
    // Other columns than the named ones do not count.
    assert_eq!(
        one(
            &mut c,
            &r,
            "Our Waterproof bottle holds 50 ml, 20% more than the Acme Trail Max."
        )
        .as_deref(),
        Some("new terms: Waterproof, 50 ml, Acme Trail Max")
    );
    // A known number with a different unit is new; a run starting a sentence keeps its tail.
    assert_eq!(
        one(&mut c, &r, "Weighs 3 lbs. Discover Lisbon Nights.").as_deref(),
        Some("new terms: 3 lbs, Lisbon Nights")
    );
    // CJK and right-to-left text have no capitals: only numbers count; emoji are ignored.
    let r = row(1, &[("name", "瓶子容量500毫升"), ("notes", "")]);
    assert_eq!(one(&mut c, &r, "容量500毫升的瓶子 👩🏽‍💻 🇯🇵"), None);
    assert_eq!(
        one(&mut c, &r, "容量700毫升").as_deref(),
        Some("new terms: 700")
    );
    assert_eq!(
        one(&mut c, &r, "زجاجة 500 مل, חדש 12").as_deref(),
        Some("new terms: 12")
    );
    // Combining accents match their precomposed form; a missing column is empty.
    let r = row(2, &[("name", "Crème Brûlée")]);
    assert_eq!(
        one(&mut c, &r, "A true Cre\u{300}me Bru\u{302}le\u{301}e."),
        None
    );
}

const LONG: &str = "The Acme Trail bottle keeps water cold for a whole day on the trail, \
    folds flat when empty, and clips to any backpack strap with its sturdy carabiner. \
    Made from recycled steel with a leak-proof lid, it survives drops, dust and dishwashers, \
    and comes in six colours chosen by hikers who tested it through a summer of mountains.";

#[test]
fn unique_flags_exact_and_near_duplicates_keeping_the_first() {
    let mut c = checks("[[checks]]\nname = \"uniq\"\nunique = true\n");
    let r = |i| row(i, &[]);
    assert_eq!(one(&mut c, &r(0), LONG), None);
    assert_eq!(
        one(
            &mut c,
            &r(1),
            "Bright copy for the Acme lamp, nothing alike."
        ),
        None
    );
    // Case and whitespace do not make a new answer.
    let shouted = LONG.to_uppercase().replace(' ', "  \n");
    assert_eq!(
        one(&mut c, &r(2), &shouted).as_deref(),
        Some("duplicate of row 1")
    );
    // One word changed: a near-duplicate, named with its estimated similarity.
    let near = LONG.replace("six colours", "seven colours");
    let reason = one(&mut c, &r(3), &near).unwrap();
    assert!(
        reason.starts_with("near-duplicate of row 1 (0.9"),
        "{reason}"
    );
    // Re-evaluating the kept row (a regenerated answer) does not flag it against itself,
    // and its new text replaces the old one.
    assert_eq!(one(&mut c, &r(0), LONG), None);
    assert_eq!(
        one(
            &mut c,
            &r(0),
            "A fresh take on trail bottles, entirely rewritten."
        ),
        None
    );
    assert_eq!(one(&mut c, &r(4), LONG), None, "row 1's old answer is gone");
    // CJK and emoji near-duplicates.
    let zh = "这款水瓶可以让水在一整天内保持冰凉，空瓶时可以折叠，并能用结实的登山扣挂在任何背包带上。它由再生钢制成，带防漏盖子，经得起摔打、灰尘和洗碗机。";
    assert_eq!(one(&mut c, &r(5), zh), None);
    assert_eq!(
        one(&mut c, &r(6), &zh.replace("洗碗机。", "洗碗机！")).map(|s| s[..26].to_string()),
        Some("near-duplicate of row 6 (0".into())
    );
    assert_eq!(one(&mut c, &r(7), "🇫🇷🇯🇵👩🏽‍💻"), None);
    assert_eq!(
        one(&mut c, &r(8), "🇫🇷🇯🇵👩🏽‍💻").as_deref(),
        Some("duplicate of row 8")
    );
}

#[test]
fn unique_threshold_decides_what_is_near() {
    let r = |i| row(i, &[]);
    let a = "The Acme lamp lights a desk evenly and dims without flicker.";
    let b = "The Acme lamp lights a room evenly and dims without noise.";
    let mut strict = checks("[[checks]]\nname = \"u\"\nunique = true\nthreshold = 1.0\n");
    assert_eq!(one(&mut strict, &r(0), a), None);
    assert_eq!(one(&mut strict, &r(1), b), None);
    let mut loose = checks("[[checks]]\nname = \"u\"\nunique = true\nthreshold = 0.3\n");
    assert_eq!(one(&mut loose, &r(0), a), None);
    let reason = one(&mut loose, &r(1), b).unwrap();
    assert!(
        reason.starts_with("near-duplicate of row 1 (0."),
        "{reason}"
    );
    assert_eq!(
        one(
            &mut loose,
            &r(2),
            "Completely different words here, nothing shared."
        ),
        None
    );
}

#[test]
fn checks_read_structured_fields_and_feedback_lists_failures() {
    let fields = vec!["headline".to_string(), "body".to_string()];
    let mut c = Checks::new(
        &specs(
            "[[checks]]\nname = \"headline_len\"\non = \"headline\"\nmax_chars = 10\n\
             [[checks]]\nname = \"banned\"\nnever_contain = [\"waterproof\"]\n\
             [[checks]]\nname = \"body-words\"\non = \"body\"\nmax_words = 2\n",
        ),
        Some(&fields),
    )
    .unwrap();
    assert_eq!(
        c.columns(),
        ["check_headline_len", "check_banned", "check_body-words"]
    );
    let answer = json!({"headline": "A headline far too long", "body": "Two words"});
    let res = c.evaluate(&row(0, &[]), &answer.to_string(), answer.as_object());
    assert_eq!(
        res,
        [
            CheckResult {
                name: "headline_len".into(),
                passed: false,
                reason: Some("23 characters, max 10".into())
            },
            CheckResult {
                name: "banned".into(),
                passed: true,
                reason: None
            },
            CheckResult {
                name: "body-words".into(),
                passed: true,
                reason: None
            },
        ]
    );
    assert_eq!(feedback(&res), "- headline_len: 23 characters, max 10");
    let answer = json!({"body": "Waterproof, truly waterproof"});
    let res = c.evaluate(&row(1, &[]), &answer.to_string(), answer.as_object());
    assert_eq!(
        feedback(&res),
        "- headline_len: the answer has no field 'headline'\n\
         - banned: contains banned word 'waterproof'\n\
         - body-words: 3 words, max 2"
    );
    assert_eq!(feedback(&[]), "");
}

#[test]
fn bad_checks_are_refused_naming_the_entry_and_the_key() {
    let fields = vec!["headline".to_string()];
    let cases: &[(&str, Option<&[String]>, &str)] = &[
        ("name = \"\"\nmax_chars = 3", None, "checks[0] (): name: must not be empty"),
        ("name = \"a b\"\nmax_chars = 3", None, "checks[0] (a b): name: ' ' is not allowed; use only letters A-Z a-z, digits, '_' and '-'"),
        ("name = \"x\"", None, "checks[0] (x): no check given; set one of max_chars"),
        ("name = \"x\"\nmax_chars = 0", None, "checks[0] (x): max_chars: 0 is outside the allowed range 1–1000000"),
        ("name = \"x\"\nmax_words = 2000000", None, "checks[0] (x): max_words: 2000000 is outside the allowed range 1–1000000"),
        ("name = \"x\"\nmin_chars = 9\nmax_chars = 3", None, "checks[0] (x): min_chars (9) is greater than max_chars (3)"),
        ("name = \"x\"\nmax_chars = 3\nregex = \"a\"", None, "checks[0] (x): keys of several kinds of check are set: length (max_chars, min_chars, max_words) and regex (regex, not_regex)"),
        ("name = \"x\"\nregex = \"(unclosed\"", None, "checks[0] (x): regex: not a valid regular expression: "),
        ("name = \"x\"\nnot_regex = \"a{99999999}\"", None, "checks[0] (x): not_regex: not a valid regular expression: "),
        ("name = \"x\"\nmax_chars = 3\ncase_insensitive = false", None, "checks[0] (x): case_insensitive: only used by must_contain/never_contain checks"),
        ("name = \"x\"\nunique = true\ncolumns = [\"a\"]", None, "checks[0] (x): columns: only used by no_new_terms checks"),
        ("name = \"x\"\nmust_contain = []", None, "checks[0] (x): must_contain and never_contain are both empty"),
        ("name = \"x\"\nnever_contain = [\"ok\", \"!!\"]", None, "checks[0] (x): never_contain[1]: \"!!\" has no word in it"),
        ("name = \"x\"\nno_new_terms = true", None, "checks[0] (x): columns: name at least one input column"),
        ("name = \"x\"\nno_new_terms = false\ncolumns = [\"a\"]", None, "checks[0] (x): no_new_terms: set it to true"),
        ("name = \"x\"\nunique = true\nthreshold = 1.5", None, "checks[0] (x): threshold: 1.5 is outside the allowed range: more than 0, at most 1"),
        ("name = \"x\"\nunique = true\nthreshold = nan", None, "checks[0] (x): threshold: NaN is outside the allowed range"),
        ("name = \"x\"\nunique = true\nthreshold = 0.0", None, "checks[0] (x): threshold: 0 is outside the allowed range"),
        ("name = \"x\"\non = \"headline\"\nmax_chars = 3", None, "checks[0] (x): on: \"headline\" would be a structured-output field, but the job has no model.schema"),
        ("name = \"x\"\non = \"title\"\nmax_chars = 3", Some(&fields), "checks[0] (x): on: \"title\" is neither a field of model.schema nor an [[outputs]] name; allowed: \"output\" or one of \"headline\""),
    ];
    for (body, schema, want) in cases {
        let got = err(&format!("[[checks]]\n{body}\n"), *schema);
        assert!(got.starts_with(want), "{body}\n got: {got}\nwant: {want}");
    }
    let got = err(
        "[[checks]]\nname = \"a\"\nmax_chars = 3\n[[checks]]\nname = \"a\"\nunique = true\n",
        None,
    );
    assert!(
        got.starts_with("checks[1] (a): name: another check is already named \"a\""),
        "{got}"
    );
    // `on = "output"` is always the whole answer, schema or not.
    Checks::new(
        &specs("[[checks]]\nname = \"x\"\non = \"output\"\nmax_chars = 3\n"),
        Some(&fields),
    )
    .unwrap();
    assert!(Checks::new(&[], None).unwrap().is_empty());
}

fn every_kind() -> Checks {
    checks(
        "[[checks]]\nname = \"len\"\nmax_chars = 5\nmin_chars = 2\nmax_words = 3\n\
         [[checks]]\nname = \"re\"\nregex = '^\\w'\nnot_regex = '\\d{3,}'\n\
         [[checks]]\nname = \"words\"\nmust_contain = [\"a b\"]\nnever_contain = [\"é\", \"防水\"]\n\
         [[checks]]\nname = \"facts\"\nno_new_terms = true\ncolumns = [\"src\"]\nallow = [\"X 1\"]\n\
         [[checks]]\nname = \"uniq\"\nunique = true\nthreshold = 0.05\n",
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    /// No answer, column text or order of rows makes evaluation panic.
    #[test]
    fn evaluation_never_panics(
        texts in proptest::collection::vec(
            ("\\PC{0,40}", "[a-zA-Z0-9 .,%'\u{301}\u{200d}🇫🇷你é\u{5d0}-\u{5ea}\u{627}-\u{64a}]{0,40}"),
            1..8
        ),
        src in "\\PC{0,30}",
    ) {
        let mut c = every_kind();
        for (i, (a, b)) in texts.iter().enumerate() {
            let r = row((i % 3) as u64, &[("src", src.as_str())]);
            for answer in [a, b] {
                let res = c.evaluate(&r, answer, json!({"x": answer}).as_object());
                prop_assert_eq!(res.len(), 5);
                for x in &res {
                    prop_assert_eq!(x.passed, x.reason.is_none());
                }
                let _ = feedback(&res);
            }
        }
    }
}

#[test]
fn unique_finds_every_near_duplicate_among_many_rows_and_nothing_else() {
    // 300 texts of 50 pseudo-words, then each again with its last word changed (Jaccard
    // about 0.97: well above the threshold, as the estimate is about ±0.04).
    let mut state: u64 = 7;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let texts: Vec<String> = (0..300)
        .map(|_| {
            (0..50)
                .map(|_| {
                    let len = 3 + next() % 6;
                    (0..len)
                        .map(|_| char::from(b'a' + (next() % 26) as u8))
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let mut c = checks("[[checks]]\nname = \"u\"\nunique = true\n");
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(one(&mut c, &row(i as u64, &[]), t), None, "row {}", i + 1);
    }
    for (i, t) in texts.iter().enumerate() {
        let variant = format!("{} again", t.rsplit_once(' ').unwrap().0);
        let Some(reason) = one(&mut c, &row(1000 + i as u64, &[]), &variant) else {
            let sh = |t: &str| -> std::collections::HashSet<String> {
                let g: Vec<char> = t.chars().collect();
                g.windows(4).map(|w| w.iter().collect()).collect()
            };
            let (a, b) = (sh(t), sh(&variant));
            let j = a.intersection(&b).count() as f64 / a.union(&b).count() as f64;
            panic!("row {i} missed, true jaccard {j}");
        };
        assert!(
            reason.starts_with(&format!("near-duplicate of row {} (", i + 1)),
            "{reason}"
        );
    }
}
