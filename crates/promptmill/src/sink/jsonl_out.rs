//! JSONL output: one object per row, input values with their types, generated text as is.

use std::io::Write;

use serde_json::{Map, Value};

use super::{result_values, OutRow, OutputSpec, RowWriter, SinkError};

pub(crate) struct JsonlOut<'s, W: Write> {
    out: W,
    spec: &'s OutputSpec,
    line: Vec<u8>,
}

impl<'s, W: Write> JsonlOut<'s, W> {
    pub(crate) fn new(out: W, spec: &'s OutputSpec) -> Self {
        JsonlOut {
            out,
            spec,
            line: Vec::with_capacity(1024),
        }
    }
}

fn io(source: std::io::Error) -> SinkError {
    SinkError::Io {
        path: Default::default(),
        source,
    }
}

impl<W: Write> RowWriter for JsonlOut<'_, W> {
    fn write(&mut self, row: &OutRow<'_>) -> Result<(), SinkError> {
        let mut obj = Map::with_capacity(self.spec.input_columns.len() + 8);
        for c in &self.spec.input_columns {
            obj.insert(c.clone(), row.input.get(c).cloned().unwrap_or(Value::Null));
        }
        for (k, v) in result_values(self.spec, row) {
            obj.insert(k, v);
        }
        self.line.clear();
        serde_json::to_writer(&mut self.line, &obj).map_err(|e| io(e.into()))?;
        self.line.push(b'\n');
        self.out.write_all(&self.line).map_err(io)
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(io)
    }
}
