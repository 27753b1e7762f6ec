//! The template context of one row, built cheaply once per row and shared by its messages.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, Serde, Value};

use crate::types::Row;

/// Names the renderer provides besides the row's columns. They shadow columns of the
/// same name, which stay reachable as `row["row_id"]`.
pub(super) const RESERVED: [&str; 4] = ["row", "row_number", "row_id", FEEDBACK];

/// The variable holding the failed checks' reasons when a rejected row is regenerated
/// (empty otherwise).
pub const FEEDBACK: &str = "check_feedback";

/// The variable holding the answer in the judge's templates (`[judge]`). It is set only
/// there, where it shadows a column of the same name (still reachable as `row["answer"]`).
pub const ANSWER: &str = "answer";

/// Builds the context of `row`: every column at top level, plus `row`, `row_number`,
/// `row_id` and `check_feedback` (`feedback`, or empty), and `answer` when given.
pub(super) fn row_context(row: &Row, feedback: Option<&str>, answer: Option<&str>) -> Value {
    Value::from_object(RowContext {
        // One conversion of the row per render; columns are looked up in it lazily, so the
        // context itself costs no copy of the map.
        fields: Value::from(Serde(&row.fields)),
        row_number: row.index.saturating_add(1),
        row_id: Value::from(row.id.as_str()),
        feedback: Value::from(feedback.unwrap_or("")),
        answer: answer.map(Value::from),
    })
}

/// A map-like context that answers lookups from the row instead of copying it.
#[derive(Debug)]
struct RowContext {
    fields: Value,
    row_number: u64,
    row_id: Value,
    feedback: Value,
    answer: Option<Value>,
}

impl Object for RowContext {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "row" => Some(self.fields.clone()),
            "row_number" => Some(Value::from(self.row_number)),
            "row_id" => Some(self.row_id.clone()),
            FEEDBACK => Some(self.feedback.clone()),
            ANSWER if self.answer.is_some() => self.answer.clone(),
            _ => self
                .fields
                .get_item(key)
                .ok()
                .filter(|value| !value.is_undefined()),
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut keys: Vec<Value> = RESERVED.iter().map(|&name| Value::from(name)).collect();
        let answer = self.answer.is_some();
        if answer {
            keys.push(Value::from(ANSWER));
        }
        if let Ok(columns) = self.fields.try_iter() {
            keys.extend(columns.filter(|k| {
                !k.as_str()
                    .is_some_and(|k| RESERVED.contains(&k) || (answer && k == ANSWER))
            }));
        }
        Enumerator::Values(keys)
    }
}
