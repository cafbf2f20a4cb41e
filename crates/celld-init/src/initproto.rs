//! The protocol between the daemon and a container's init, over the unix socket
//! that init holds for its whole life (so the daemon can restart and reconnect).
//!
//! A frame is `[tag: u8][len: u32 BE][payload]`. The first frame on a connection is
//! a JSON [`Request`]; init answers with a JSON [`Reply`]. After a successful
//! `Spawn`/`Attach` the connection carries stream frames; after `StreamIn` and
//! `StreamOut` it carries raw tar bytes.

use serde::{Deserialize, Serialize};

pub const TAG_REQUEST: u8 = 1;
pub const TAG_REPLY: u8 = 2;
pub const TAG_STDIN: u8 = 10;
pub const TAG_STDIN_EOF: u8 = 11;
pub const TAG_SIGNAL: u8 = 12;
pub const TAG_RESIZE: u8 = 13;
pub const TAG_STDOUT: u8 = 20;
pub const TAG_STDERR: u8 = 21;
pub const TAG_EXIT: u8 = 22;

/// Frames larger than this are a protocol error (stream data is sent in chunks).
pub const MAX_FRAME: usize = 1 << 20;
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Request {
    Spawn(SpawnRequest),
    Attach {
        id: String,
    },
    StreamIn {
        user: String,
        destination: String,
    },
    StreamOut {
        user: String,
        source: String,
    },
    /// Ids of processes init knows (running or recently exited).
    List,
    /// Sends a signal to every process except init (used by Stop).
    SignalAll {
        signal: i32,
    },
    /// First step of a pea (a process with its own rootfs, started from the
    /// host): init checks or makes its id (as for `Spawn`), makes its stdio
    /// and answers with the id and the numbers of the process's ends in
    /// `fds` (then the end the pea waits on before it execs), which the host
    /// opens through /proc. They are held for this connection only.
    PreparePea {
        id: String,
        tty: Option<(u16, u16)>,
    },
    /// Second step, on the same connection: the pea (a child of init once its
    /// starter exits) runs as `pid`; init takes it into its table and the
    /// connection streams it, as after `Spawn`.
    AdoptPea {
        pid: i32,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SpawnRequest {
    pub id: String,
    pub path: String,
    pub args: Vec<String>,
    /// The container's environment, then the process's; init keeps one
    /// entry per name (the last value) and fills HOME from the user if unset.
    pub env: Vec<String>,
    pub dir: String,
    pub user: String,
    /// `Some((columns, rows))` runs the process on a pseudo-terminal.
    pub tty: Option<(u16, u16)>,
    /// (resource as in `setrlimit(2)`, value) pairs.
    pub rlimits: Vec<(i32, u64)>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ErrorKind {
    ExecutableNotFound,
    ProcessNotFound,
    UserNotFound,
    AlreadyExists,
    Invalid,
    Failed,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub error: Option<(ErrorKind, String)>,
    pub ids: Vec<String>,
    /// For Attach of a process that already exited.
    pub exit_status: Option<i32>,
    /// For PreparePea: the pea's stdin, stdout and stderr in init (one fd,
    /// the terminal, for all three with a tty), then its `go` pipe.
    #[serde(default)]
    pub fds: Vec<i32>,
}

impl Reply {
    pub fn ok() -> Self {
        Self::default()
    }
    pub fn err(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Self { error: Some((kind, msg.into())), ..Self::default() }
    }
}

pub fn encode(tag: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

pub fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    encode(tag, payload, &mut v);
    v
}

pub fn json_frame<T: Serialize>(tag: u8, v: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    frame(tag, &serde_json::to_vec(v).unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
#[error("init protocol: frame of {0} bytes exceeds the limit")]
pub struct FrameTooLarge(pub usize);

/// Splits one complete frame off the front of `buf`, if there is one.
pub fn decode(buf: &mut Vec<u8>) -> Result<Option<(u8, Vec<u8>)>, FrameTooLarge> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameTooLarge(len));
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let tag = buf[0];
    let payload = buf[HEADER_LEN..HEADER_LEN + len].to_vec();
    buf.drain(..HEADER_LEN + len);
    Ok(Some((tag, payload)))
}

pub fn exit_payload(code: i32) -> [u8; 4] {
    code.to_be_bytes()
}

pub fn parse_exit(p: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

pub fn resize_payload(cols: u16, rows: u16) -> [u8; 4] {
    let [a, b] = cols.to_be_bytes();
    let [c, d] = rows.to_be_bytes();
    [a, b, c, d]
}

pub fn parse_resize(p: &[u8]) -> Option<(u16, u16)> {
    let b = p.get(..4)?;
    Some((u16::from_be_bytes([b[0], b[1]]), u16::from_be_bytes([b[2], b[3]])))
}

/// Async helpers for the daemon side.
#[cfg(feature = "client")]
pub mod client {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, tag: u8, payload: &[u8]) -> std::io::Result<()> {
        w.write_all(&frame(tag, payload)).await
    }

    /// Reads one frame; `Ok(None)` on a clean EOF between frames.
    pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        let mut hdr = [0u8; HEADER_LEN];
        match r.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
        if len > MAX_FRAME {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, FrameTooLarge(len)));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await?;
        Ok(Some((hdr[0], payload)))
    }

    pub async fn read_reply<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Reply> {
        match read_frame(r).await? {
            Some((TAG_REPLY, p)) => {
                serde_json::from_slice(&p).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            }
            Some((tag, _)) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("init protocol: expected a reply, got frame {tag}"),
            )),
            None => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "init closed the connection")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split() {
        let mut buf = frame(TAG_STDOUT, b"hello");
        buf.extend(frame(TAG_EXIT, &exit_payload(-3)));
        buf.extend_from_slice(&[TAG_STDIN, 0, 0]); // partial header
        assert_eq!(decode(&mut buf).unwrap(), Some((TAG_STDOUT, b"hello".to_vec())));
        let (tag, p) = decode(&mut buf).unwrap().unwrap();
        assert_eq!((tag, parse_exit(&p)), (TAG_EXIT, Some(-3)));
        assert_eq!(decode(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn oversized_frame_is_an_error() {
        let mut buf = vec![TAG_STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(decode(&mut buf).is_err());
    }

    #[test]
    fn resize_round_trip() {
        assert_eq!(parse_resize(&resize_payload(123, 45)), Some((123, 45)));
        assert_eq!(parse_resize(&[1]), None);
    }
}
