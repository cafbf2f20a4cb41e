//! The local terminal: whether to ask for a pty (cf's rule), its size, raw
//! mode restored on every way out, and the signals that end a pty session.

use super::session::WindowSize;

/// cf's pseudo-tty flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtyRequest {
    /// No flag: a pty for an interactive shell on a terminal.
    Auto,
    /// `-T`.
    No,
    /// `-t`: a pty if stdin is a terminal.
    Yes,
    /// `--force-pseudo-tty` (`-tt`).
    Force,
}

/// Whether to ask for a pty (cf's rule).
pub fn want_pty(req: TtyRequest, has_command: bool, stdin_is_terminal: bool) -> bool {
    match req {
        TtyRequest::Force => true,
        TtyRequest::No => false,
        TtyRequest::Yes => stdin_is_terminal,
        TtyRequest::Auto => !has_command && stdin_is_terminal,
    }
}

// --------------------------------------------------------------- terminal

/// The terminal's size (stdout's, else stdin's), if there is one.
pub fn terminal_size() -> Option<WindowSize> {
    [libc::STDOUT_FILENO, libc::STDIN_FILENO].into_iter().find_map(|fd| {
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusive `ws`.
        let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 && ws.ws_row > 0;
        ok.then_some(WindowSize { cols: u32::from(ws.ws_col), rows: u32::from(ws.ws_row) })
    })
}

/// The local terminal (stdin) in raw mode; restored when dropped, which also
/// happens when a panic unwinds. (Also `cellctl garden run -t`'s.)
pub struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    pub fn enter() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else { return Self(None) };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return Self(None);
        }
        Self(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSADRAIN, &t);
        }
    }
}

/// Resolves with the number of the first of SIGHUP, SIGINT, SIGQUIT or
/// SIGTERM (for a pty session, whose terminal must be restored first).
pub(super) async fn terminating_signal() -> i32 {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    async fn recv(s: &mut Option<Signal>) {
        if let Some(s) = s
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending().await
    }
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut quit = signal(SignalKind::quit()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        () = recv(&mut hup) => libc::SIGHUP,
        () = recv(&mut int) => libc::SIGINT,
        () = recv(&mut quit) => libc::SIGQUIT,
        () = recv(&mut term) => libc::SIGTERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_decision_follows_cf() {
        use TtyRequest::*;
        // (request, has -c, stdin is a terminal) -> pty
        let table = [
            (Auto, false, true, true),
            (Auto, false, false, false),
            (Auto, true, true, false),
            (Auto, true, false, false),
            (No, false, true, false),
            (No, true, true, false),
            (Yes, true, true, true),
            (Yes, false, false, false),
            (Yes, true, false, false),
            (Force, true, false, true),
            (Force, false, false, true),
        ];
        for (req, cmd, tty, want) in table {
            assert_eq!(want_pty(req, cmd, tty), want, "{req:?} command={cmd} tty={tty}");
        }
    }
}
