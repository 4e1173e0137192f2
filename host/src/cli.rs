//! Writing a command's output to the terminal or a pipe, shared by the two binaries.
//!
//! Rust ignores SIGPIPE, so `println!` panics when the reader has gone (`status --json | head
//! -1`). Here a closed pipe ends the process quietly with status 0, as a command-line tool is
//! expected to; anything already stored (an agent's outbox) is durable and stays.

use std::io::Write;

fn write_or_exit(mut out: impl Write, text: &str) {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(_) => std::process::exit(1),
    }
}

/// Writes `text` to standard output.
pub fn print(text: &str) {
    write_or_exit(std::io::stdout().lock(), text);
}

/// Writes `text` and a newline to standard output.
pub fn println(text: &str) {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    print(&line);
}

/// Writes `text` and a newline to standard error.
pub fn eprintln(text: &str) {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    write_or_exit(std::io::stderr().lock(), &line);
}
