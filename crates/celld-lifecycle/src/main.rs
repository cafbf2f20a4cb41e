//! The in-container lifecycle binary, bind-mounted at /tmp/lifecycle where
//! `builder`, `launcher` and `sshd` are this same file: the role is the
//! basename of argv[0], or the first argument (`celld-lifecycle builder …`,
//! for tests and humans). Built static (`make lifecycle`) because staging
//! rootfses may have no libc.

use std::io::Write;

use celld_lifecycle::{builder, launcher, sshd};

fn main() {
    let args: Vec<String> = match std::env::args_os().map(|a| a.into_string()).collect::<Result<_, _>>() {
        Ok(args) => args,
        Err(bad) => {
            eprintln!("celld-lifecycle: arguments must be UTF-8: {bad:?}");
            std::process::exit(1);
        }
    };
    let program = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string()).unwrap_or_default();
    let rest = args.get(1..).unwrap_or_default();
    let code = match (program.as_str(), rest.split_first()) {
        ("builder", _) => builder::main(rest),
        (_, Some((role, rest))) if role == "builder" => builder::main(rest),
        ("launcher", _) => launcher::main(rest),
        (_, Some((role, rest))) if role == "launcher" => launcher::main(rest),
        ("sshd", _) => sshd::main(rest),
        (_, Some((role, rest))) if role == "sshd" => sshd::main(rest),
        (_, Some((role, _))) if role == "healthcheck" => {
            eprintln!("celld-lifecycle: {role} is not implemented yet");
            1
        }
        _ if program == "healthcheck" => {
            eprintln!("celld-lifecycle: {program} is not implemented yet");
            1
        }
        _ => {
            eprintln!("usage: builder [flags]  (or: celld-lifecycle builder [flags]; -h for the flags)");
            1
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
