//! Host-wide locks on address ranges: a cell's pool and each shared subnet
//! it has a bridge for, as flocks on files in one directory, so no two cells
//! ever hand out the same addresses or remove each other's interfaces.

use std::net::Ipv4Addr;

use super::NetworkError;
use super::pool::Ipv4Net;
use super::shared;

/// Where cells lock the pools they use: one host-wide directory, since
/// addresses are host-wide whatever each cell's depot and run directory.
pub const POOL_LOCK_DIR: &str = "/run/celld-pools";

/// An exclusive lock on a network pool for as long as the cell runs (an
/// flock: the kernel drops it when the process dies, however it dies).
#[derive(Debug)]
pub struct PoolLock {
    _file: std::fs::File,
}

fn lock_file_name(pool: Ipv4Net) -> String {
    format!("{:08x}-{}.lock", u32::from(pool.addr), pool.prefix)
}

fn parse_lock_file_name(name: &str) -> Option<Ipv4Net> {
    let (hex, len) = name.strip_suffix(".lock")?.split_once('-')?;
    Ipv4Net::new(Ipv4Addr::from(u32::from_str_radix(hex, 16).ok()?), len.parse().ok()?).ok()
}

fn try_flock(f: &std::fs::File, how: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an fd this function borrows.
    if unsafe { libc::flock(f.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn held_by(path: &std::path::Path) -> String {
    let owner = std::fs::read_to_string(path).unwrap_or_default();
    let owner = owner.trim();
    if owner.is_empty() { "a cell whose depot is unknown".into() } else { format!("the cell with depot {owner}") }
}

/// Why a range of addresses could not be locked.
enum Refused {
    /// Exactly this range is held: by whom, and the lock file.
    Held(String, std::path::PathBuf),
    /// A range overlapping it is held.
    Overlaps(Ipv4Net, String, std::path::PathBuf),
    Io(String),
}

/// Takes `net` for this cell in `dir`, unless it or a range overlapping it is
/// held by another (flocks are per open file: a second lock in this very
/// process is refused too).
fn lock_range(dir: &std::path::Path, net: Ipv4Net, owner: &std::path::Path) -> Result<std::fs::File, Refused> {
    use std::io::Write;
    let io = |what: &str, e: std::io::Error| Refused::Io(format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| io(&format!("creating {}", dir.display()), e))?;
    let path = dir.join(lock_file_name(net));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io(&format!("opening {}", path.display()), e))?;
    if let Err(e) = try_flock(&file, libc::LOCK_EX) {
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(&format!("locking {}", path.display()), e));
        }
        return Err(Refused::Held(held_by(&path), path));
    }
    // Ours now; a range overlapping it counts as the same range.
    for entry in std::fs::read_dir(dir).map_err(|e| io(&format!("reading {}", dir.display()), e))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(other) = parse_lock_file_name(&name) else { continue };
        if other == net || !shared::overlap(other, net) {
            continue;
        }
        let Ok(f) = std::fs::File::open(entry.path()) else { continue };
        // Held if a shared lock cannot be had; if it can, nobody runs on it.
        if try_flock(&f, libc::LOCK_SH).is_err() {
            return Err(Refused::Overlaps(other, held_by(&entry.path()), entry.path()));
        }
    }
    let owner = std::path::absolute(owner).unwrap_or_else(|_| owner.to_path_buf());
    file.set_len(0).map_err(|e| io("writing the lock", e))?;
    file.write_all(format!("{}\n", owner.display()).as_bytes()).map_err(|e| io("writing the lock", e))?;
    Ok(file)
}

/// Whether some cell holds a lock on a range starting at `addr` (a bridge
/// named for it is that cell's).
pub(crate) fn range_held(dir: &std::path::Path, addr: Ipv4Addr) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else { return false };
    rd.flatten().any(|e| {
        parse_lock_file_name(&e.file_name().to_string_lossy()).is_some_and(|n| n.addr == addr)
            && std::fs::File::open(e.path()).is_ok_and(|f| try_flock(&f, libc::LOCK_SH).is_err())
    })
}

impl PoolLock {
    /// Takes `pool` for this cell (in `dir`, normally [`POOL_LOCK_DIR`]), or
    /// says which cell has it or a pool overlapping it: two cells on one pool
    /// would hand out the same addresses and remove each other's interfaces
    /// as unowned.
    pub fn acquire(dir: &std::path::Path, pool: Ipv4Net, owner: &std::path::Path) -> Result<Self, NetworkError> {
        let give = "give this cell a --network-pool of its own";
        match lock_range(dir, pool, owner) {
            Ok(file) => Ok(Self { _file: file }),
            Err(Refused::Io(e)) => Err(NetworkError::PoolHeld(e)),
            Err(Refused::Held(by, path)) => Err(NetworkError::PoolHeld(format!(
                "network pool {pool} is in use by {by} (lock {}); {give}",
                path.display()
            ))),
            Err(Refused::Overlaps(other, by, path)) => Err(NetworkError::PoolHeld(format!(
                "network pool {pool} overlaps {other}, in use by {by} (lock {}); {give}",
                path.display()
            ))),
        }
    }

    /// Takes a shared subnet for this cell: the same lock as a pool's, so a
    /// subnet never overlaps another cell's pool or shared subnet (nor a pool
    /// started later).
    pub fn acquire_subnet(
        dir: &std::path::Path,
        subnet: Ipv4Net,
        owner: &std::path::Path,
    ) -> Result<Self, NetworkError> {
        match lock_range(dir, subnet, owner) {
            Ok(file) => Ok(Self { _file: file }),
            Err(Refused::Io(e)) => Err(NetworkError::PoolHeld(e)),
            Err(Refused::Held(by, _)) => {
                Err(NetworkError::BadRequest(format!("the requested subnet {subnet} is in use by {by}")))
            }
            Err(Refused::Overlaps(other, by, _)) => {
                Err(NetworkError::BadRequest(format!("the requested subnet {subnet} overlaps {other}, in use by {by}")))
            }
        }
    }
}
