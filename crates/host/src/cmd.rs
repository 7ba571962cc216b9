//! Running the node's tools (`ipset`, `iptables-restore`, ...): one process, its input
//! written on a thread so a large payload never deadlocks against its output.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// Runs `program args...` with `input` on its standard input (when given) and returns
/// its standard output.
///
/// # Errors
/// When it cannot be started, or exits unsuccessfully (the error carries its stderr).
pub(crate) fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let described = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.to_owned(),
            source,
        })?;
    let writer = match (input, child.stdin.take()) {
        (Some(text), Some(mut stdin)) => {
            let text = text.to_owned();
            Some(std::thread::spawn(move || stdin.write_all(text.as_bytes())))
        }
        _ => None,
    };
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        program: program.to_owned(),
        source,
    })?;
    let write_result = writer.map(|w| w.join());
    if !out.status.success() {
        return Err(Error::Command {
            program: described(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    if let Some(Ok(Err(source))) = write_result {
        return Err(Error::Spawn {
            program: described(),
            source,
        });
    }
    String::from_utf8(out.stdout).map_err(|e| Error::Parse {
        what: "tool output",
        line: 0,
        text: format!("{}: not UTF-8: {e}", described()),
    })
}
