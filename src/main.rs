//! celld: role dispatch happens before any async runtime or thread exists.

use celld::config::{Config, Role};
use celld::daemon::{init_logging, run_daemon};
use celld::runtime::helper;
use clap::Parser;

fn main() {
    let cfg = Config::parse();
    init_logging(&cfg.log_level);
    if let Some(Role::Helper { .. }) = &cfg.role {
        if let Err(e) = helper::run() {
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
