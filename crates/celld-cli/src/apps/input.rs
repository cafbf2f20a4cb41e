//! What the app commands check or ask of the person typing: memory and disk
//! sizes, and a confirmation before deleting.

use std::io::{IsTerminal, Write};

use crate::api::Fail;
use crate::render;

pub(super) fn size(what: &str, s: &Option<String>) -> Result<Option<u32>, Fail> {
    s.as_deref().map(|s| render::parse_size_mb(what, s)).transpose().map_err(Fail::Usage)
}

/// Asks on the terminal; refuses (with a hint) when nobody can answer.
pub(super) fn confirm(what: &str, force: bool) -> Result<bool, Fail> {
    if force {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Fail::Usage(format!(
            "not deleting {what} without confirmation (stdin is not a terminal): pass -f"
        )));
    }
    print!("Really delete the {what}? [yN]: ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| Fail::Usage(format!("reading the answer: {e}")))?;
    let yes = matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes");
    if !yes {
        println!("Delete cancelled");
    }
    Ok(yes)
}
