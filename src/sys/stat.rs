//! File status as plain data: what the overlay core needs of `struct stat` and `struct statfs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The type of a filesystem object, from its mode or its `d_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl FileKind {
    /// The kind encoded in the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Some(FileKind::Regular),
            libc::S_IFDIR => Some(FileKind::Directory),
            libc::S_IFLNK => Some(FileKind::Symlink),
            libc::S_IFIFO => Some(FileKind::Fifo),
            libc::S_IFSOCK => Some(FileKind::Socket),
            libc::S_IFCHR => Some(FileKind::CharDevice),
            libc::S_IFBLK => Some(FileKind::BlockDevice),
            _ => None,
        }
    }

    /// The kind a `d_type` value names; `None` for `DT_UNKNOWN`.
    pub fn from_dtype(dtype: u8) -> Option<FileKind> {
        match dtype {
            libc::DT_REG => Some(FileKind::Regular),
            libc::DT_DIR => Some(FileKind::Directory),
            libc::DT_LNK => Some(FileKind::Symlink),
            libc::DT_FIFO => Some(FileKind::Fifo),
            libc::DT_SOCK => Some(FileKind::Socket),
            libc::DT_CHR => Some(FileKind::CharDevice),
            libc::DT_BLK => Some(FileKind::BlockDevice),
            _ => None,
        }
    }
}

/// The fields of `struct stat` the overlay uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Device of the filesystem holding the object.
    pub dev: u64,
    /// Inode number on that device.
    pub ino: u64,
    /// Type and permission bits.
    pub mode: u32,
    /// Hard link count.
    pub nlink: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number, for device nodes.
    pub rdev: u64,
    /// Size in bytes.
    pub size: u64,
    /// Preferred I/O block size.
    pub blksize: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

impl Stat {
    /// The object's type, `None` for a mode no filesystem should produce.
    pub fn kind(&self) -> Option<FileKind> {
        FileKind::from_mode(self.mode)
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == Some(FileKind::Directory)
    }

    pub(super) fn from_libc(st: &libc::stat) -> Stat {
        Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: st.st_size.max(0) as u64,
            blksize: st.st_blksize.max(0) as u64,
            blocks: st.st_blocks.max(0) as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// The fields of `struct statvfs` reported through `statfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStat {
    /// Total blocks, in `frsize` units.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namemax: u32,
    /// Fragment size.
    pub frsize: u32,
}
