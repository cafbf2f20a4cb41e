//! One staging's state, which every phase works on: the configuration, the
//! temporary droplet `contents/` with its `deps/` and `profile.d/`, the
//! environment added for scripts, and the lines the builder printed itself.
//! The phases add their methods to [`Builder`] in their own files.

use std::path::PathBuf;

use super::flags::Config;
use crate::deps_index;

/// A staging in progress.
pub(super) struct Builder<'a> {
    pub(super) cfg: &'a Config,
    /// The temporary droplet contents (empty until made).
    pub(super) contents: PathBuf,
    pub(super) deps: PathBuf,
    pub(super) profile: PathBuf,
    /// Added to the inherited environment of every script.
    pub(super) extra_env: Vec<(String, String)>,
    /// Every line the builder printed itself.
    pub(super) log: Vec<String>,
}

impl<'a> Builder<'a> {
    pub(super) fn new(cfg: &'a Config) -> Self {
        let mut extra_env = Vec::new();
        if let Some(url) =
            std::env::var("VCAP_SERVICES").ok().filter(|s| !s.is_empty()).and_then(|s| crate::database_url(&s))
        {
            extra_env.push(("DATABASE_URL".to_string(), url));
        }
        Self {
            cfg,
            contents: PathBuf::new(),
            deps: PathBuf::new(),
            profile: PathBuf::new(),
            extra_env,
            log: Vec::new(),
        }
    }

    /// A line on stderr (the reference lifecycle's `printError`).
    pub(super) fn warn(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("{line}");
        self.log.push(line);
    }

    /// A line on stdout.
    pub(super) fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("{line}");
        self.log.push(line);
    }

    pub(super) fn deps_idx(&self, i: usize) -> String {
        deps_index(i, self.cfg.deps_count())
    }
}
