use super::*;
use serde_json::json;
use std::fs;

fn row(fields: serde_json::Value) -> Row {
    let serde_json::Value::Object(fields) = fields else {
        panic!("fields must be an object");
    };
    Row {
        index: 16,
        line: 18,
        id: "sku-17".to_string(),
        fields,
    }
}

fn inline(text: &str) -> TemplateSource {
    TemplateSource::Inline(text.to_string())
}

fn user_spec(source: TemplateSource) -> PromptSpec {
    PromptSpec {
        user: Some(source),
        ..PromptSpec::default()
    }
}

fn render_one(source: TemplateSource, fields: serde_json::Value) -> Result<String, RenderError> {
    let renderer = Renderer::new(&user_spec(source)).unwrap();
    let mut messages = renderer.render(&row(fields))?;
    assert_eq!(messages.len(), 1);
    Ok(messages.remove(0).content)
}

/// A temp dir holding the given files.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn renderer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Renderer>();
    assert_send_sync::<RenderError>();
    assert_send_sync::<TemplateError>();
}

#[test]
fn system_then_user() {
    let renderer = Renderer::new(&PromptSpec {
        user: Some(inline("Describe {{ name }}.")),
        system: Some(inline("You write copy.")),
        messages: vec![],
        section: None,
    })
    .unwrap();
    let messages = renderer.render(&row(json!({"name": "a lamp"}))).unwrap();
    assert_eq!(
        messages,
        vec![
            Message::new(Role::System, "You write copy."),
            Message::new(Role::User, "Describe a lamp."),
        ]
    );
}

#[test]
fn messages_list_keeps_its_order() {
    let spec = PromptSpec {
        messages: vec![
            MessageSpec {
                role: Role::User,
                source: inline("Q: {{ q }}"),
            },
            MessageSpec {
                role: Role::Assistant,
                source: inline("A: {{ a }}"),
            },
            MessageSpec {
                role: Role::User,
                source: inline("And {{ row_id }}?"),
            },
        ],
        ..PromptSpec::default()
    };
    let messages = Renderer::new(&spec)
        .unwrap()
        .render(&row(json!({"q": "1+1", "a": "2"})))
        .unwrap();
    let got: Vec<(Role, &str)> = messages
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Role::User, "Q: 1+1"),
            (Role::Assistant, "A: 2"),
            (Role::User, "And sku-17?")
        ]
    );
}

#[test]
fn messages_and_system_user_conflict() {
    let spec = PromptSpec {
        system: Some(inline("s")),
        messages: vec![MessageSpec {
            role: Role::User,
            source: inline("u"),
        }],
        ..PromptSpec::default()
    };
    let err = Renderer::new(&spec).unwrap_err();
    assert!(matches!(err, TemplateError::Conflicting), "{err}");
}

#[test]
fn no_message_is_an_error() {
    let err = Renderer::new(&PromptSpec::default()).unwrap_err();
    assert!(matches!(err, TemplateError::NoMessages), "{err}");
}

#[test]
fn syntax_error_names_file_and_line() {
    let dir = dir_with(&[("copy.j2", "Hello\n{{ name }}\n{% if name %}")]);
    let path = dir.path().join("copy.j2");
    let err = Renderer::new(&user_spec(TemplateSource::File(path.clone()))).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:3: syntax error: unexpected end of input, expected end of block",
            path.display()
        )
    );
}

#[test]
fn syntax_error_in_inline_template_names_the_field() {
    let err = Renderer::new(&PromptSpec {
        system: Some(inline("{{ oops")),
        user: Some(inline("fine")),
        messages: vec![],
        section: None,
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("inline prompt.system:1: syntax error: "),
        "{err}"
    );
}

#[test]
fn unreadable_and_empty_templates_fail_up_front() {
    let dir = dir_with(&[("blank.j2", " \n\n")]);
    let missing = dir.path().join("missing.j2");
    let err = Renderer::new(&user_spec(TemplateSource::File(missing.clone()))).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read template: ", missing.display())),
        "{err}"
    );
    let blank = dir.path().join("blank.j2");
    let err = Renderer::new(&user_spec(TemplateSource::File(blank.clone()))).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: template is empty", blank.display())
    );
}

#[test]
fn variables_lists_what_templates_read() {
    let renderer = Renderer::new(&PromptSpec {
        system: Some(inline("{% set n = namespace(x=1) %}{{ tone }}")),
        user: Some(inline(
            "{% for t in tags %}{{ loop.index }}{{ t }}{% endfor %}{{ specs.weight }}\
             {{ row['Product Name'] }}{{ row_number }}{{ row_id }}{% for i in range(2) %}{% endfor %}\
             {% if nick is defined %}{{ nick }}{% endif %}",
        )),
        messages: vec![],
        section: None,
    })
    .unwrap();
    let expected: BTreeSet<String> = ["nick", "specs", "tags", "tone"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(renderer.variables(), expected);
}

#[test]
fn missing_variable_error_names_row_variable_and_line() {
    let dir = dir_with(&[(
        "copy.j2",
        "Write copy for {{ name }}.\n\nColour: {{ colour }}\n",
    )]);
    let path = dir.path().join("copy.j2");
    let err = render_one(TemplateSource::File(path.clone()), json!({"name": "lamp"})).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "row 17 (line 18, id \"sku-17\"): undefined variable 'colour' in {}:3",
            path.display()
        )
    );
    assert_eq!(err.row_index(), 16);
    assert_eq!(err.row_line(), 18);
    assert_eq!(err.row_id(), "sku-17");
    assert_eq!(err.variable(), Some("colour"));
}

#[test]
fn missing_variable_is_named_through_filters_and_guards() {
    // `nick` is missing too, but guarded: the error must name `colour`.
    let template = "{% if nick is defined %}{{ nick }}{% endif %}\n{{ colour | upper }}";
    let err = render_one(inline(template), json!({})).unwrap_err();
    assert_eq!(err.variable(), Some("colour"), "{err}");
    assert!(
        err.to_string().ends_with("in inline prompt.user:2"),
        "{err}"
    );
}

#[test]
fn file_named_html_or_json_is_not_escaped() {
    let dir = dir_with(&[
        ("page.html.j2", "{{ body }}"),
        ("data.json.j2", "{{ body }}"),
        ("page.html", "{{ body }}"),
    ]);
    for name in ["page.html.j2", "data.json.j2", "page.html"] {
        let out = render_one(
            TemplateSource::File(dir.path().join(name)),
            json!({"body": "<b>\"Tom & Jerry\"</b>"}),
        )
        .unwrap();
        assert_eq!(out, "<b>\"Tom & Jerry\"</b>", "{name}");
    }
}

#[test]
fn includes_load_sibling_files() {
    let dir = dir_with(&[
        (
            "copy.j2",
            "{% include 'header.j2' %}\n{% from 'macros.j2' import shout %}{{ shout(name) }}",
        ),
        ("header.j2", "== {{ name }} =="),
        (
            "macros.j2",
            "{% macro shout(x) %}{{ x | upper }}!{% endmacro %}",
        ),
    ]);
    let out = render_one(
        TemplateSource::File(dir.path().join("copy.j2")),
        json!({"name": "lamp"}),
    )
    .unwrap();
    assert_eq!(out, "== lamp ==\nLAMP!");
}

#[test]
fn extends_loads_a_sibling_base() {
    let dir = dir_with(&[
        ("base.j2", "Task: {% block task %}{% endblock %}\nBe brief."),
        (
            "copy.j2",
            "{% extends 'base.j2' %}{% block task %}describe {{ name }}{% endblock %}",
        ),
    ]);
    let out = render_one(
        TemplateSource::File(dir.path().join("copy.j2")),
        json!({"name": "lamp"}),
    )
    .unwrap();
    assert_eq!(out, "Task: describe lamp\nBe brief.");
}

#[test]
fn error_in_included_file_names_that_file() {
    let dir = dir_with(&[
        ("copy.j2", "Intro\n{% include 'header.j2' %}"),
        ("header.j2", "line one\n{{ colour }}"),
    ]);
    let err = render_one(TemplateSource::File(dir.path().join("copy.j2")), json!({})).unwrap_err();
    assert_eq!(err.variable(), Some("colour"), "{err}");
    let header = dir.path().join("header.j2");
    assert!(
        err.to_string()
            .ends_with(&format!("in {}:2", header.display())),
        "{err}"
    );
}

#[test]
fn includes_outside_the_template_directory_are_refused() {
    let dir = dir_with(&[
        ("templates/copy.j2", "x"),
        ("templates/sub/part.j2", "sub"),
        ("templates/.hidden.j2", "hidden"),
        ("secret.txt", "SECRET"),
    ]);
    for name in [
        "../secret.txt",
        "sub/part.j2",
        ".hidden.j2",
        "/etc/hostname",
        "..\\\\secret.txt",
    ] {
        fs::write(
            dir.path().join("templates/copy.j2"),
            format!("{{% include '{name}' %}}"),
        )
        .unwrap();
        let err = render_one(
            TemplateSource::File(dir.path().join("templates/copy.j2")),
            json!({}),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("only files in the same directory"),
            "{name}: {text}"
        );
        assert!(!text.contains("SECRET"), "{text}");
    }
}

#[test]
fn inline_templates_cannot_include() {
    let dir = dir_with(&[("x.j2", "X")]);
    let path = dir.path().join("x.j2").display().to_string();
    let err = render_one(inline(&format!("{{% include '{path}' %}}")), json!({})).unwrap_err();
    assert!(err.to_string().contains("template not found"), "{err}");
}

#[test]
fn runaway_loop_runs_out_of_fuel_quickly() {
    let start = std::time::Instant::now();
    let err = render_one(
        inline("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}"),
        json!({}),
    )
    .unwrap_err();
    assert!(
        matches!(err.kind(), RenderErrorKind::OutOfFuel { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "row 17 (line 18, id \"sku-17\"): template exceeded its execution budget in inline prompt.user:1"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn huge_message_is_refused() {
    let err = render_one(inline("{{ 'x' * 5000000 }}"), json!({})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "row 17 (line 18, id \"sku-17\"): the rendered user message is 5000000 bytes, \
         over the limit of 4194304 bytes (inline prompt.user)"
    );
    // A large row value is fine below the limit.
    let big = "y".repeat(1_000_000);
    assert_eq!(
        render_one(inline("{{ text }}"), json!({"text": big}))
            .unwrap()
            .len(),
        1_000_000
    );
}

#[test]
fn recursion_errors_instead_of_overflowing_the_stack() {
    // Run on a thread with a 2 MiB stack, as tokio workers have.
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            let err = render_one(
                inline("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
                json!({}),
            )
            .unwrap_err();
            err.to_string()
        })
        .unwrap();
    let text = handle.join().unwrap();
    assert!(text.contains("recursion"), "{text}");

    let dir = dir_with(&[("self.j2", "again {% include 'self.j2' %}")]);
    let path = dir.path().join("self.j2");
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            render_one(TemplateSource::File(path), json!({}))
                .unwrap_err()
                .to_string()
        })
        .unwrap();
    let text = handle.join().unwrap();
    assert!(text.contains("recursion"), "{text}");
}

#[test]
fn reserved_names_shadow_columns_which_stay_reachable_through_row() {
    let out = render_one(
        inline("{{ row_id }}|{{ row['row_id'] }}|{{ row_number }}"),
        json!({"row_id": "column value"}),
    )
    .unwrap();
    assert_eq!(out, "sku-17|column value|17");
}

#[test]
fn renders_from_many_threads() {
    let renderer = std::sync::Arc::new(
        Renderer::new(&user_spec(inline("{{ row_number }}:{{ name }}"))).unwrap(),
    );
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let renderer = renderer.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let mut r = row(json!({"name": format!("n{t}-{i}")}));
                    r.index = i;
                    let out = renderer.render(&r).unwrap();
                    assert_eq!(out[0].content, format!("{}:n{t}-{i}", i + 1));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

mod fuzz {
    //! Row values are data, whatever they hold: arbitrary Unicode, template syntax, huge
    //! strings. Rendering never panics and prints the value literally (or, past the size
    //! cap, refuses the message cleanly). Bounded: a few dozen cases, so `cargo test` stays
    //! fast.
    use super::*;
    use proptest::prelude::*;

    /// Strings full of template syntax and the characters around it.
    fn template_noise() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(vec![
                "{{",
                "}}",
                "{%",
                "%}",
                "{#",
                "#}",
                "{%-",
                "-%}",
                " ",
                "\n",
                "\r\n",
                "'",
                "\"",
                "\\",
                "range(99999999)",
                "for x in",
                "endfor",
                "include",
                "'/etc/passwd'",
                "import",
                "extends",
                "set",
                "macro",
                "7*7",
                "|",
                "upper",
                "env",
                "self",
                "loop",
                "namespace()",
                "\u{0}",
                "\u{feff}",
                "é",
                "🦀",
                "[[mock:hang]]",
            ]),
            0..40,
        )
        .prop_map(|parts| parts.concat())
    }

    /// A few pieces of template syntax, to be repeated into a huge value.
    fn short_noise() -> impl Strategy<Value = String> {
        template_noise().prop_map(|s| s.chars().take(24).collect())
    }

    /// Any value: arbitrary Unicode, template noise, or a short string repeated up to
    /// a few megabytes.
    fn any_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            template_noise(),
            (short_noise(), 1usize..200_000).prop_map(|(s, n)| s.repeat(n)),
        ]
    }

    proptest! {
        // Few cases and little shrinking: values run to megabytes, and shrinking those is
        // slow. Failures are not persisted (a failing value can be tens of megabytes).
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROMPTMILL_FUZZ_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(48),
            max_shrink_iters: 8,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_row_value_renders_literally(v in any_value()) {
            let renderer = Renderer::new(&user_spec(inline(
                "Before {{ v }} | {{ doc.inner.v }} | {{ row['v'] }} after",
            )))
            .unwrap();
            let r = row(json!({ "v": v, "doc": { "inner": { "v": v } } }));
            let expected = format!("Before {v} | {v} | {v} after");
            match renderer.render(&r) {
                Ok(messages) => {
                    prop_assert!(expected.len() <= MAX_MESSAGE_BYTES);
                    prop_assert_eq!(messages.len(), 1);
                    prop_assert!(messages[0].content == expected, "value changed in rendering");
                }
                Err(e) => {
                    // Past the size cap the message is refused: by the cap, or earlier by
                    // the fuel (bytes produced count as fuel). Nothing else may fail.
                    prop_assert!(expected.len() > MAX_MESSAGE_BYTES, "{}", e);
                    let refused = matches!(
                        e.kind(),
                        RenderErrorKind::TooLarge { .. } | RenderErrorKind::OutOfFuel { .. }
                    );
                    prop_assert!(refused, "{}", e);
                }
            }
        }
    }
}
