//! The few btrfs ioctls the quota backend needs (linux/btrfs.h): creating and
//! deleting subvolumes and limiting their qgroups without spawning `btrfs`,
//! which would cost milliseconds per create.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

const MAGIC: u8 = 0x94;
const PATH_NAME_MAX: usize = 4087;
/// The first inode number in every subvolume: its root directory.
const FIRST_FREE_OBJECTID: u64 = 256;
const QUOTA_CTL_ENABLE: u64 = 1;
pub const LIMIT_MAX_RFER: u64 = 1;
pub const LIMIT_MAX_EXCL: u64 = 2;

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_MAX + 1],
}

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

#[repr(C)]
#[derive(Default)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_fs_info_args`: 1024 bytes, of which only the fsid matters here.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 1024 - 32],
}

nix::ioctl_none!(fs_sync, MAGIC, 8);
nix::ioctl_write_ptr!(subvol_create, MAGIC, 14, VolArgs);
nix::ioctl_write_ptr!(snap_destroy, MAGIC, 15, VolArgs);
nix::ioctl_readwrite!(ino_lookup, MAGIC, 18, InoLookupArgs);
nix::ioctl_read!(fs_info, MAGIC, 31, FsInfoArgs);
nix::ioctl_readwrite!(quota_ctl, MAGIC, 40, QuotaCtlArgs);
nix::ioctl_write_ptr!(qgroup_create, MAGIC, 42, QgroupCreateArgs);
// Declared _IOR in the kernel's header although it is written to the kernel.
nix::ioctl_read!(qgroup_limit, MAGIC, 43, QgroupLimitArgs);

fn vol_args(name: &OsStr) -> Result<Box<VolArgs>, nix::Error> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > PATH_NAME_MAX || bytes.contains(&0) || bytes.contains(&b'/') {
        return Err(nix::Error::EINVAL);
    }
    let mut args = Box::new(VolArgs { fd: 0, name: [0; PATH_NAME_MAX + 1] });
    args.name[..bytes.len()].copy_from_slice(bytes);
    Ok(args)
}

/// Creates subvolume `name` in the directory `parent`.
pub fn create_subvolume(parent: &impl AsRawFd, name: &OsStr) -> Result<(), nix::Error> {
    let args = vol_args(name)?;
    unsafe { subvol_create(parent.as_raw_fd(), &*args) }.map(drop)
}

/// Deletes subvolume `name` of the directory `parent`, content and all (the
/// kernel frees its extents in the background).
pub fn delete_subvolume(parent: &impl AsRawFd, name: &OsStr) -> Result<(), nix::Error> {
    let args = vol_args(name)?;
    unsafe { snap_destroy(parent.as_raw_fd(), &*args) }.map(drop)
}

/// The id of the subvolume `dir` (an open directory) is in.
pub fn subvolume_id(dir: &impl AsRawFd) -> Result<u64, nix::Error> {
    let mut args = Box::new(InoLookupArgs { treeid: 0, objectid: FIRST_FREE_OBJECTID, name: [0; 4080] });
    unsafe { ino_lookup(dir.as_raw_fd(), &mut *args) }?;
    Ok(args.treeid)
}

/// The filesystem's uuid as sysfs names it (`/sys/fs/btrfs/<uuid>`).
pub fn fsid(fd: &impl AsRawFd) -> Result<String, nix::Error> {
    let mut args = Box::new(FsInfoArgs { max_id: 0, num_devices: 0, fsid: [0; 16], rest: [0; 1024 - 32] });
    unsafe { fs_info(fd.as_raw_fd(), &mut *args) }?;
    let h: String = args.fsid.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

/// Commits the filesystem and wakes its transaction thread, which pokes the
/// cleaner that frees deleted subvolumes (a plain syncfs with nothing dirty
/// commits nothing and wakes nobody).
pub fn sync(fd: &impl AsRawFd) -> Result<(), nix::Error> {
    unsafe { fs_sync(fd.as_raw_fd()) }.map(drop)
}

pub fn enable_quota(fd: &impl AsRawFd) -> Result<(), nix::Error> {
    let mut args = QuotaCtlArgs { cmd: QUOTA_CTL_ENABLE, status: 0 };
    unsafe { quota_ctl(fd.as_raw_fd(), &mut args) }.map(drop)
}

/// Removes qgroup `0/id`; the kernel refuses (EBUSY) while its subvolume's
/// extents are still being freed, and removes it itself once they are.
pub fn destroy_qgroup(fd: &impl AsRawFd, id: u64) -> Result<(), nix::Error> {
    let args = QgroupCreateArgs { create: 0, qgroupid: id };
    unsafe { qgroup_create(fd.as_raw_fd(), &args) }.map(drop)
}

/// Limits qgroup `0/id` to `bytes`, referenced or exclusive (`flag`).
pub fn limit_qgroup(fd: &impl AsRawFd, id: u64, flag: u64, bytes: u64) -> Result<(), nix::Error> {
    let mut lim = QgroupLimit { flags: flag, ..Default::default() };
    if flag == LIMIT_MAX_RFER {
        lim.max_rfer = bytes;
    } else {
        lim.max_excl = bytes;
    }
    let mut args = QgroupLimitArgs { qgroupid: id, lim };
    unsafe { qgroup_limit(fd.as_raw_fd(), &mut args) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<InoLookupArgs>(), 4096);
        assert_eq!(std::mem::size_of::<FsInfoArgs>(), 1024);
        assert_eq!(std::mem::size_of::<QgroupLimitArgs>(), 48);
    }

    #[test]
    fn names_with_slashes_or_nothing_are_refused() {
        for bad in ["", "a/b", "x\0y"] {
            assert!(vol_args(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        assert!(vol_args(OsStr::new("handle-1")).is_ok());
    }
}
