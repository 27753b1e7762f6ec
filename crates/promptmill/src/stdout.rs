//! Machine output (`--json`) on stdout.

/// Writes `text` to stdout. A reader that went away (`| head`) is not an error: the output
/// files are written already, so the command ends as it would have, quietly, instead of
/// panicking as `println!` does on a closed pipe.
pub fn print(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
