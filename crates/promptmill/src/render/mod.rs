//! The `render` stage: turns a [`Row`] into the chat [`Message`]s of its request.
//!
//! Templates are minijinja, compiled once by [`Renderer::new`] and shared by all workers.
//! Rendering is strict and contained:
//!
//! - **Strict undefined.** Reading a column the row does not have is an error naming the
//!   row, the variable and the template line; `{% if x is defined %}` still works.
//! - **Row values are data.** A cell holding `{{ 7*7 }}` is printed as is, never evaluated.
//! - **Plain text.** No auto-escaping, whatever the template's file extension.
//! - **No filesystem or environment access** from templates, with one exception:
//!   `{% include %}`, `{% import %}` and `{% extends %}` in a template *file* may load
//!   files from that file's own directory, by plain file name (`"header.j2"`); names with
//!   a path separator or a leading dot are refused. Inline templates cannot include
//!   anything. Included files are read once, on first use, and then kept.
//! - **Bounded work.** Each message gets [`FUEL_PER_MESSAGE`] fuel (instructions plus
//!   bytes produced, see minijinja's `fuel` feature), so a runaway loop fails fast, and
//!   its output may not exceed [`MAX_MESSAGE_BYTES`]. Recursion (a macro calling itself,
//!   a template including itself) hits minijinja's recursion limit and fails cleanly.

mod context;
mod error;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};

use crate::types::{Message, Role, Row};

pub use context::{ANSWER, FEEDBACK};
pub use error::{RenderError, RenderErrorKind, TemplateError, TemplateLocation};

/// Fuel given to the rendering of one message: about 2 million instructions, or about
/// 128 MB of data produced. Far above any real prompt, low enough to stop a runaway
/// loop in well under a second.
pub const FUEL_PER_MESSAGE: u64 = 2_000_000;

/// Largest rendered message, in bytes (4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Where a template's text comes from.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub enum TemplateSource {
    /// The template text itself, as written in the job file.
    Inline(String),
    /// A template file; the path is already resolved (absolute or cwd-relative) by the caller.
    File(PathBuf),
}

/// One message of a `[[prompt.messages]]` list.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageSpec {
    /// Who speaks the message.
    pub role: Role,
    /// Its template.
    pub source: TemplateSource,
}

/// What the job file says about the prompt: `system` and `user`, or a `messages` list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptSpec {
    /// The system message, if any (only without `messages`).
    pub system: Option<TemplateSource>,
    /// The user message, if any (only without `messages`).
    pub user: Option<TemplateSource>,
    /// An explicit list of messages, in order (excludes `system` and `user`).
    pub messages: Vec<MessageSpec>,
    /// The job file's section the templates come from, for messages (`prompt` when None).
    pub section: Option<&'static str>,
}

/// The compiled templates of a prompt; renders rows into messages. `Send + Sync`: build
/// it once and share it between workers.
pub struct Renderer {
    messages: Vec<CompiledMessage>,
}

/// One message's template, in an environment of its own so that its includes resolve
/// against its own directory.
struct CompiledMessage {
    role: Role,
    env: Environment<'static>,
    /// The name the template is registered under, which minijinja errors carry: the path
    /// as given, or `inline prompt.user` and the like.
    name: String,
    /// The directory of a template file: included files live there.
    dir: Option<PathBuf>,
    /// Top-level names the template reads, less globals (`range`…) and the reserved names.
    variables: BTreeSet<String>,
    /// The template places `check_feedback` itself.
    reads_feedback: bool,
    /// The template reads `answer` (a judge's template).
    reads_answer: bool,
}

impl Renderer {
    /// Loads and compiles every template of `spec`, once.
    pub fn new(spec: &PromptSpec) -> Result<Renderer, TemplateError> {
        let mut sources: Vec<(Role, &TemplateSource, String)> = Vec::new();
        let section = spec.section.unwrap_or("prompt");
        if spec.messages.is_empty() {
            if let Some(system) = &spec.system {
                sources.push((Role::System, system, format!("{section}.system")));
            }
            if let Some(user) = &spec.user {
                sources.push((Role::User, user, format!("{section}.user")));
            }
        } else {
            if spec.system.is_some() || spec.user.is_some() {
                return Err(TemplateError::Conflicting);
            }
            for (i, message) in spec.messages.iter().enumerate() {
                sources.push((
                    message.role,
                    &message.source,
                    format!("{section}.messages[{i}]"),
                ));
            }
        }
        if sources.is_empty() {
            return Err(TemplateError::NoMessages);
        }
        let messages = sources
            .into_iter()
            .map(|(role, source, field)| CompiledMessage::new(role, source, &field))
            .collect::<Result<_, _>>()?;
        Ok(Renderer { messages })
    }

    /// Renders the messages of one row, in order.
    pub fn render(&self, row: &Row) -> Result<Vec<Message>, RenderError> {
        self.render_with(row, None)
    }

    /// Renders the messages of one row with `check_feedback` set to `feedback` (a
    /// rejected row sent again).
    pub fn render_with(
        &self,
        row: &Row,
        feedback: Option<&str>,
    ) -> Result<Vec<Message>, RenderError> {
        self.render_in(context::row_context(row, feedback, None), row)
    }

    /// Renders the judge's messages for one row, with `answer` set to the row's answer.
    pub fn render_judge(&self, row: &Row, answer: &str) -> Result<Vec<Message>, RenderError> {
        self.render_in(context::row_context(row, None, Some(answer)), row)
    }

    fn render_in(
        &self,
        ctx: minijinja::value::Value,
        row: &Row,
    ) -> Result<Vec<Message>, RenderError> {
        self.messages
            .iter()
            .map(|message| {
                let content = message
                    .render(ctx.clone(), row)
                    .map_err(|kind| RenderError::new(row, kind))?;
                Ok(Message::new(message.role, content))
            })
            .collect()
    }

    /// Whether some template places `check_feedback` itself (otherwise a rejected row's
    /// feedback is appended to its last user message).
    pub fn reads_feedback(&self) -> bool {
        self.messages.iter().any(|m| m.reads_feedback)
    }

    /// Whether some template reads `answer` (a judge that does not sees nothing to judge).
    pub fn reads_answer(&self) -> bool {
        self.messages.iter().any(|m| m.reads_answer)
    }

    /// Top-level variables the templates read (for checking against the input columns up
    /// front). Leaves out `row`, `row_number`, `row_id` and globals such as `range`, and
    /// cannot see into included files. It includes names only read under
    /// `{% if x is defined %}`, so a name missing from the columns is a warning, not
    /// necessarily an error.
    pub fn variables(&self) -> BTreeSet<String> {
        self.messages
            .iter()
            .flat_map(|message| message.variables.iter().cloned())
            .collect()
    }
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for message in &self.messages {
            list.entry(&(message.role, &message.name));
        }
        list.finish()
    }
}

impl CompiledMessage {
    fn new(role: Role, source: &TemplateSource, field: &str) -> Result<Self, TemplateError> {
        let (name, text, dir) = match source {
            TemplateSource::Inline(text) => (format!("inline {field}"), text.clone(), None),
            TemplateSource::File(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
                    template: name.clone(),
                    source,
                })?;
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (name, text, Some(dir))
            }
        };
        if text.trim().is_empty() {
            return Err(TemplateError::Empty { template: name });
        }

        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Prompts are plain text: never HTML- or JSON-escape, whatever the file is called.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(FUEL_PER_MESSAGE));
        // Debug mode makes undefined values remember where they came from, so a strict
        // error points at the missing variable; it costs a little only where a template
        // meets an undefined value (`is defined` on a missing column).
        env.set_debug(true);
        // No `stat` per lookup on the hot path: templates do not change during a job.
        env.set_auto_reload(false);
        if let Some(dir) = &dir {
            env.set_loader(sibling_loader(dir.clone()));
        }
        env.add_template_owned(name.clone(), text)
            .map_err(|err| TemplateError::Syntax {
                template: name.clone(),
                line: err.line(),
                message: describe(&err),
            })?;

        let read = undeclared(&env, &name);
        let reads_feedback = read.contains(FEEDBACK);
        let reads_answer = read.contains(ANSWER);
        let variables = top_level_variables(&env, read);
        Ok(CompiledMessage {
            role,
            env,
            name,
            dir,
            variables,
            reads_feedback,
            reads_answer,
        })
    }

    fn render(&self, ctx: Value, row: &Row) -> Result<String, RenderErrorKind> {
        let text = self
            .env
            .get_template(&self.name)
            .and_then(|template| template.render(ctx))
            .map_err(|err| self.classify(&err, row))?;
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(RenderErrorKind::TooLarge {
                role: self.role,
                template: self.name.clone(),
                size: text.len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        if text.trim().is_empty() {
            return Err(RenderErrorKind::Empty {
                role: self.role,
                template: self.name.clone(),
            });
        }
        Ok(text)
    }

    /// Turns a minijinja error into what the user needs to fix it.
    fn classify(&self, err: &minijinja::Error, row: &Row) -> RenderErrorKind {
        // An error inside an include comes wrapped; the innermost one says where it is.
        let err = innermost(err);
        let location = TemplateLocation {
            template: self.display_name(err.name()),
            line: err.line(),
        };
        if err.kind() == ErrorKind::OutOfFuel {
            return RenderErrorKind::OutOfFuel { location };
        }
        match self.undefined_variable(err, row) {
            Some(variable) => RenderErrorKind::UndefinedVariable { variable, location },
            None => RenderErrorKind::Template {
                message: describe(err),
                location,
            },
        }
    }

    /// Names the variable behind a strict-undefined error, if it can be told.
    ///
    /// minijinja's message does not name it, but in debug mode the error's span points at
    /// the expression that produced the undefined value. So: a top-level variable of the
    /// failing template that the row lacks and that appears in that span; else an
    /// attribute path into a column (`specs.colour`); else the only such variable on the
    /// error's line.
    fn undefined_variable(&self, err: &minijinja::Error, row: &Row) -> Option<String> {
        if err.kind() != ErrorKind::UndefinedError {
            return None;
        }
        let missing: Vec<String> = match err.name() {
            Some(name) if name != self.name => {
                top_level_variables(&self.env, undeclared(&self.env, name))
            }
            _ => self.variables.clone(),
        }
        .into_iter()
        .filter(|var| !row.fields.contains_key(var.as_str()))
        .collect();
        let source = err.template_source();
        let span = source
            .zip(err.range())
            .and_then(|(source, range)| source.get(range))
            .map(str::trim);
        if let Some(span) = span {
            if let Some(var) = missing.iter().find(|var| contains_word(span, var)) {
                return Some(var.clone());
            }
            if let Some((root, _)) = span.split_once('.') {
                if is_dotted_path(span) && (root == "row" || row.fields.contains_key(root)) {
                    return Some(span.to_string());
                }
            }
        }
        let line = source
            .zip(err.line())
            .and_then(|(source, line)| source.lines().nth(line.checked_sub(1)?));
        let mut on_line = missing
            .iter()
            .filter(|var| line.is_none_or(|line| contains_word(line, var)));
        match (on_line.next(), on_line.next()) {
            (Some(only), None) => Some(only.clone()),
            _ => None,
        }
    }

    /// How to show the template an error happened in: this message's template, or an
    /// included file shown beside it.
    fn display_name(&self, name: Option<&str>) -> String {
        match (name, &self.dir) {
            (Some(name), Some(dir)) if name != self.name => dir.join(name).display().to_string(),
            (Some(name), _) => name.to_string(),
            (None, _) => self.name.clone(),
        }
    }
}

/// The variables template `name` reads that it does not set itself (none for a template
/// that cannot be loaded).
fn undeclared(env: &Environment<'_>, name: &str) -> HashSet<String> {
    env.get_template(name)
        .map(|t| t.undeclared_variables(false))
        .unwrap_or_default()
}

/// The top-level names a template reads from the context (`read`: its undeclared
/// variables) less globals (`range`, `namespace`…) and the names the renderer provides.
fn top_level_variables(env: &Environment<'_>, read: HashSet<String>) -> BTreeSet<String> {
    read.into_iter()
        .filter(|var| {
            !context::RESERVED.contains(&var.as_str())
                && !env.globals().any(|(global, _)| global == var.as_str())
        })
        .collect()
}

/// A loader for `{% include %}` and friends that reads plain file names from `dir` only.
fn sibling_loader(
    dir: PathBuf,
) -> impl Fn(&str) -> Result<Option<minijinja::TemplateSource>, minijinja::Error> + Send + Sync + 'static
{
    let load = minijinja::path_loader(dir);
    move |name: &str| {
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "cannot load {name:?}: only files in the same directory, by plain name, can be included"
                ),
            ));
        }
        load(name)
    }
}

/// The innermost minijinja error of a chain (errors in includes are wrapped).
fn innermost(err: &minijinja::Error) -> &minijinja::Error {
    let mut current = err;
    while let Some(inner) = std::error::Error::source(current)
        .and_then(|source| source.downcast_ref::<minijinja::Error>())
    {
        current = inner;
    }
    current
}

/// `kind: detail`, without minijinja's own ` (in name:line)` suffix.
fn describe(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

/// `name` or `name.attr.attr`.
fn is_dotted_path(text: &str) -> bool {
    text.split('.').all(is_identifier)
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `word` occurs in `text` as a whole identifier.
fn contains_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|token| token == word)
}

#[cfg(test)]
mod tests;
