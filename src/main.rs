//! celld: role dispatch happens before any async runtime or thread exists.

use celld::config::{Config, Role};
use celld::daemon::{init_logging, run_daemon};
use celld::runtime::helper;
use clap::{CommandFactory, FromArgMatches};

// glibc's malloc took a fifth of the scheduler's CPU under load, much of it
// on contended arena locks; mimalloc's per-thread heaps avoid both.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let matches = Config::command().get_matches();
    let mut cfg = Config::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The rep's own JSON config stands in for the Diego flags (and may set
    // the log level), so it is read before logging starts.
    let ignored = match cfg.rep_config.clone() {
        Some(path) => match celld::diego::repconfig::apply(&path, &mut cfg, &|field| {
            // Flags given on the command line (or in the environment) win.
            matches!(
                matches.value_source(field),
                Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
            )
        }) {
            Ok(ignored) => ignored,
            Err(e) => {
                eprintln!("celld: {e}");
                std::process::exit(1);
            }
        },
        None => Vec::new(),
    };
    init_logging(&cfg.log_level);
    if !ignored.is_empty() {
        tracing::info!(keys = ?ignored, "--rep-config: keys celld does not use (ignored)");
    }
    if let Some(Role::Helper { depot }) = &cfg.role {
        if let Err(e) = helper::run(depot) {
            eprintln!("celld helper: {e}");
            std::process::exit(1);
        }
        return;
    }
    // Every connection is a file descriptor: the default soft limit (1024)
    // was exhausted by idle Garden connections once.
    let nofile = celld::garden::listener::raise_nofile_limit();
    if let Some(Role::Scheduler(args)) = &cfg.role {
        if let Err(e) = celld::scheduler::main(&cfg.depot, args.clone()) {
            eprintln!("celld scheduler: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run_daemon(cfg, nofile) {
        eprintln!("celld: {e:#}");
        std::process::exit(1);
    }
}
