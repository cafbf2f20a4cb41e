//! Whether an exec request is a server-side scp (`scp -t` / `scp -f`) and
//! what it asks for, read with shell-like word splitting; anything that needs
//! a real shell is left to the shell.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `-t`: receive files (upload).
    Sink,
    /// `-f`: send files (download).
    Source,
}

/// A parsed `scp -t`/`scp -f` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub mode: Mode,
    pub recursive: bool,
    pub preserve: bool,
    pub want_dir: bool,
    pub paths: Vec<String>,
}

/// `Some` when `command` is a server-side scp (`-t` or `-f`): the request, or
/// the error to report. `None` for anything else, which runs in the shell.
pub fn parse_command(command: &str) -> Option<Result<Request, String>> {
    let words = split_words(command)?;
    let (prog, rest) = words.split_first()?;
    if prog != "scp" && !prog.ends_with("/scp") {
        return None;
    }
    let (mut to, mut from) = (false, false);
    let mut req = Request { mode: Mode::Sink, recursive: false, preserve: false, want_dir: false, paths: Vec::new() };
    let mut bad = None;
    let mut options = true;
    for w in rest {
        if options && w == "--" {
            options = false;
            continue;
        }
        match w.strip_prefix('-').filter(|f| options && !f.is_empty()) {
            Some(flags) => {
                for c in flags.chars() {
                    match c {
                        't' => to = true,
                        'f' => from = true,
                        'r' => req.recursive = true,
                        'p' => req.preserve = true,
                        'd' => req.want_dir = true,
                        'v' | 'q' => {}
                        other => bad = bad.or(Some(other)),
                    }
                }
            }
            None => {
                // Like getopt: the first operand ends the options.
                options = false;
                req.paths.push(w.clone());
            }
        }
    }
    if !to && !from {
        return None;
    }
    Some(match (bad, to, from) {
        (Some(c), _, _) => Err(format!("scp: unknown option -- {c}")),
        (None, true, true) => Err("scp: -t and -f cannot be used together".into()),
        (None, true, false) if req.paths.len() != 1 => Err("scp: ambiguous target".into()),
        (None, false, true) if req.paths.is_empty() => Err("usage: scp -f [-prv] file ...".into()),
        (None, to, _) => {
            req.mode = if to { Mode::Sink } else { Mode::Source };
            Ok(req)
        }
    })
}

/// Shell-like word splitting: blanks separate words, `'…'` and `"…"` quote,
/// `\` escapes. `None` when the command needs a real shell (operators,
/// substitutions, an unterminated quote).
pub fn split_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => cur.push(c),
                            '\n' => {}
                            c => {
                                cur.push('\\');
                                cur.push(c);
                            }
                        },
                        '$' | '`' => return None,
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => cur.push('\\'),
                }
            }
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '$' | '`' => return None,
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A request with no options, for the tests of both sides.
    pub(in crate::sshd::scp) fn req(mode: Mode, paths: &[&str]) -> Request {
        Request {
            mode,
            recursive: false,
            preserve: false,
            want_dir: false,
            paths: paths.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn sshd_scp_commands() {
        assert_eq!(parse_command("scp -t -- ."), Some(Ok(req(Mode::Sink, &["."]))));
        assert_eq!(parse_command("scp -v -f -- a b"), Some(Ok(req(Mode::Source, &["a", "b"]))));
        let r = parse_command("/usr/bin/scp -r -p -d -t -- 'my dir'").unwrap().unwrap();
        assert!(r.recursive && r.preserve && r.want_dir);
        assert_eq!(r.paths, vec!["my dir"]);
        let r = parse_command("scp -prf x\\ y").unwrap().unwrap();
        assert_eq!((r.mode, r.recursive, r.preserve), (Mode::Source, true, true));
        assert_eq!(r.paths, vec!["x y"]);
        assert_eq!(parse_command("scp -f -- -odd").unwrap().unwrap().paths, vec!["-odd"]);
        // Not a server-side scp, or not scp at all: the shell runs it.
        assert_eq!(parse_command("scp a b"), None);
        assert_eq!(parse_command("ls -t"), None);
        assert_eq!(parse_command("scp -t x; rm -rf /"), None);
        assert_eq!(parse_command("scp -t 'unterminated"), None);
        assert!(parse_command("scp -t a b").unwrap().is_err());
        assert!(parse_command("scp -t -f a").unwrap().is_err());
        assert!(parse_command("scp -Z -t a").unwrap().is_err());
        assert!(parse_command("scp -f").unwrap().is_err());
    }

    #[test]
    fn sshd_scp_words() {
        assert_eq!(split_words(r#"a "b c" 'd e' f\ g "h\"i""#).unwrap(), vec!["a", "b c", "d e", "f g", "h\"i"]);
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("''").unwrap(), vec![""]);
        assert_eq!(split_words("a | b"), None);
        assert_eq!(split_words("\"$HOME\""), None);
    }
}
