//! Progress bars for work that takes time (uploads, downloads, image pulls):
//! drawn on stderr when it is a terminal, hidden otherwise so piped output
//! stays plain.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A byte bar of `len` bytes labelled `what`; 0 means the size is unknown
/// (bytes and rate only).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (pb, template) = if len == 0 {
        (ProgressBar::no_length(), "{msg} {bytes} {bytes_per_sec}")
    } else {
        (ProgressBar::new(len), "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
    };
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// The bar of a staging's progress events (a Docker image's pull) under its
/// log lines; nothing on a pipe, where the log's own lines tell the story.
#[derive(Default)]
pub struct StagingBar(Option<ProgressBar>);

impl StagingBar {
    pub fn update(&mut self, p: &celld_proto::StagingProgress) {
        let bar = self.0.get_or_insert_with(|| bar(p.total_bytes, &p.what));
        // Layers are counted as their downloads start: the end can move.
        bar.set_length(p.total_bytes);
        bar.set_position(p.done_bytes);
    }

    /// Prints a log line above the bar.
    pub fn println(&self, line: &str) {
        match &self.0 {
            Some(b) => b.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    pub fn clear(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for StagingBar {
    fn drop(&mut self) {
        self.clear();
    }
}
