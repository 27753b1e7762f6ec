//! File-driven template tests, in minijinja's own style.
//!
//! Each `render_inputs/*.txt` holds the row's fields as a JSON object, a line `---`, and
//! the template, rendered as the inline `prompt.user` of a row with index 16 (row 17),
//! file line 18 and id `sku-17`. The snapshot holds the rendered text, or the error.

use promptmill::render::{PromptSpec, Renderer, TemplateSource};
use promptmill::types::Row;

#[test]
fn render_inputs() {
    insta::glob!("render_inputs/*.txt", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let (fields, template) = text
            .split_once("\n---\n")
            .expect("a JSON row, a line `---`, then the template");
        let fields: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(fields).unwrap();
        let row = Row {
            index: 16,
            line: 18,
            id: "sku-17".to_string(),
            fields,
        };
        let spec = PromptSpec {
            user: Some(TemplateSource::Inline(template.to_string())),
            ..PromptSpec::default()
        };
        let output = match Renderer::new(&spec) {
            Err(err) => format!("!!! template error: {err}"),
            Ok(renderer) => match renderer.render(&row) {
                Ok(messages) => messages
                    .iter()
                    .map(|message| message.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                Err(err) => format!("!!! render error: {err}\nvariable: {:?}", err.variable()),
            },
        };
        insta::with_settings!({ description => template, omit_expression => true }, {
            insta::assert_snapshot!(output);
        });
    });
}
