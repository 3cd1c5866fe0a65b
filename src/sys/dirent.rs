//! Reading directory entries with `getdents64`.

use std::ffi::OsString;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::Errno;

/// One raw directory entry as the layer's filesystem reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    /// The entry's name.
    pub name: OsString,
    /// `d_ino`.
    pub ino: u64,
    /// `d_type` (`DT_UNKNOWN` where the filesystem does not say).
    pub dtype: u8,
}

/// Reads every entry of the directory open for reading as `fd`, consuming it.
pub(super) fn read_all(fd: OwnedFd) -> Result<Vec<RawEntry>, Errno> {
    let mut dir = nix::dir::Dir::from_fd(fd.into_raw_fd())?;
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let dtype = match entry.file_type() {
            Some(t) => dtype_of(t),
            None => libc::DT_UNKNOWN,
        };
        out.push(RawEntry {
            name: std::ffi::OsStr::from_bytes(entry.file_name().to_bytes()).to_owned(),
            ino: entry.ino(),
            dtype,
        });
    }
    Ok(out)
}

fn dtype_of(t: nix::dir::Type) -> u8 {
    use nix::dir::Type;
    match t {
        Type::Fifo => libc::DT_FIFO,
        Type::CharacterDevice => libc::DT_CHR,
        Type::Directory => libc::DT_DIR,
        Type::BlockDevice => libc::DT_BLK,
        Type::File => libc::DT_REG,
        Type::Symlink => libc::DT_LNK,
        Type::Socket => libc::DT_SOCK,
    }
}
