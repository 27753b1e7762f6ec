//! Errors of the render stage: bad templates (the job cannot start) and rows that
//! cannot be rendered (the row fails, the job goes on).

use std::fmt;

use crate::types::{Role, Row};

/// A template that cannot be loaded or compiled, or a prompt that is not well formed.
#[derive(thiserror::Error, Debug)]
pub enum TemplateError {
    /// The template file cannot be read.
    #[error("{template}: cannot read template: {source}")]
    Read {
        /// The template file as given.
        template: String,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The template does not parse: `templates/copy.j2:3: syntax error: unexpected end of input`.
    #[error("{}: {message}", TemplateLocation { template: template.clone(), line: *line })]
    Syntax {
        /// The template file, or `inline prompt.user` and the like.
        template: String,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// What is wrong, as minijinja says it.
        message: String,
    },
    /// The template holds nothing but whitespace, so every row would render empty.
    #[error("{template}: template is empty")]
    Empty {
        /// The template file, or `inline prompt.user` and the like.
        template: String,
    },
    /// Both `prompt.messages` and `prompt.system`/`prompt.user` are set.
    #[error("prompt: give either `messages` or `system`/`user`, not both")]
    Conflicting,
    /// No message at all.
    #[error("prompt: no message to send: set `user` (and optionally `system`), or `messages`")]
    NoMessages,
}

/// Where in which template something happened: `templates/copy.j2:3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateLocation {
    /// The template file (an included file is shown beside the one including it), or
    /// `inline prompt.user` and the like.
    pub template: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
}

impl fmt::Display for TemplateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.template),
            None => f.write_str(&self.template),
        }
    }
}

/// Why one row could not be rendered.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum RenderErrorKind {
    /// The template reads a variable (or attribute) the row does not have.
    #[error("undefined variable '{variable}' in {location}")]
    UndefinedVariable {
        /// The missing name, `colour` or `specs.colour`.
        variable: String,
        /// Where the template reads it.
        location: TemplateLocation,
    },
    /// The template ran out of its per-message execution budget (fuel).
    #[error("template exceeded its execution budget in {location}")]
    OutOfFuel {
        /// Where execution stopped.
        location: TemplateLocation,
    },
    /// The rendered message is larger than [`MAX_MESSAGE_BYTES`](super::MAX_MESSAGE_BYTES).
    #[error("the rendered {} message is {size} bytes, over the limit of {limit} bytes ({template})", role_name(*.role))]
    TooLarge {
        /// Which message.
        role: Role,
        /// The template that produced it.
        template: String,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The message rendered to nothing but whitespace.
    #[error("the {} message rendered empty ({template})", role_name(*.role))]
    Empty {
        /// Which message.
        role: Role,
        /// The template that produced it.
        template: String,
    },
    /// A per-row model setting's cell (`model.*_column`) that cannot be used.
    #[error("column '{column}' ({key}): {message}")]
    Setting {
        /// The job-file key naming the column (`model.temperature_column`).
        key: &'static str,
        /// The input column.
        column: String,
        /// What is wrong with the cell.
        message: String,
    },
    /// Any other template error at render time (bad operand types, unknown filter, …).
    #[error("{message} in {location}")]
    Template {
        /// What went wrong, as minijinja says it.
        message: String,
        /// Where.
        location: TemplateLocation,
    },
}

/// A row that could not be rendered: `row 17 (line 18, id "sku-17"): undefined variable
/// 'colour' in templates/copy.j2:3`.
#[derive(thiserror::Error, Debug)]
#[error("row {} (line {}, id {:?}): {}", .row_index.saturating_add(1), .line, .id, .kind)]
pub struct RenderError {
    row_index: u64,
    line: u64,
    id: String,
    kind: RenderErrorKind,
}

impl RenderError {
    pub(crate) fn new(row: &Row, kind: RenderErrorKind) -> RenderError {
        RenderError {
            row_index: row.index,
            line: row.line,
            id: row.id.clone(),
            kind,
        }
    }

    /// The 0-based index of the row (`Row::index`).
    pub fn row_index(&self) -> u64 {
        self.row_index
    }

    /// The input file line where the row starts (`Row::line`).
    pub fn row_line(&self) -> u64 {
        self.line
    }

    /// The row's id (`Row::id`).
    pub fn row_id(&self) -> &str {
        &self.id
    }

    /// The missing variable, when the error is one (`colour`, or `specs.colour`).
    pub fn variable(&self) -> Option<&str> {
        match &self.kind {
            RenderErrorKind::UndefinedVariable { variable, .. } => Some(variable),
            _ => None,
        }
    }

    /// What went wrong, for callers that tell the cases apart.
    pub fn kind(&self) -> &RenderErrorKind {
        &self.kind
    }
}

/// The role as the job file and the APIs spell it.
pub(super) fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}
