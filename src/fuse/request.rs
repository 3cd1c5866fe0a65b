//! Decoding a FUSE request into an [`Op`]: the fixed structure that opens its body, then the
//! names and data after it. The two transports deliver those two parts differently (one
//! buffer on `/dev/fuse`, a header area and a payload buffer on the ring), so decoding takes
//! them apart.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::abi::{self, fattr, op, Fields, InHeader};
use crate::fs::SetAttr;
use crate::sys::{Errno, SetTime};

/// A decoded request: who asks, and what.
#[derive(Debug)]
pub struct Request<'a> {
    /// The header, as the kernel sent it.
    pub header: InHeader,
    /// The operation and its arguments.
    pub op: Op<'a>,
}

/// One operation with its arguments; names and data borrow the request's buffer.
#[allow(missing_docs)] // each field is named as in the kernel's structure
#[derive(Debug)]
pub enum Op<'a> {
    Lookup {
        name: &'a OsStr,
    },
    Forget {
        nlookup: u64,
    },
    BatchForget {
        nodes: Vec<(u64, u64)>,
    },
    GetAttr {
        fh: Option<u64>,
    },
    /// What a SETATTR changes, and the open file it came through (ftruncate, futimens).
    SetAttr {
        fh: Option<u64>,
        set: SetAttr,
    },
    ReadLink,
    Symlink {
        name: &'a OsStr,
        target: &'a [u8],
    },
    MkNod {
        name: &'a OsStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    },
    MkDir {
        name: &'a OsStr,
        mode: u32,
        umask: u32,
    },
    Unlink {
        name: &'a OsStr,
    },
    RmDir {
        name: &'a OsStr,
    },
    Rename {
        name: &'a OsStr,
        newdir: u64,
        newname: &'a OsStr,
        flags: u32,
    },
    Link {
        oldnode: u64,
        newname: &'a OsStr,
    },
    Open {
        flags: i32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        data: &'a [u8],
    },
    StatFs,
    Release {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    SetXattr {
        name: &'a OsStr,
        value: &'a [u8],
        flags: i32,
    },
    GetXattr {
        name: &'a OsStr,
        size: u32,
    },
    ListXattr {
        size: u32,
    },
    RemoveXattr {
        name: &'a OsStr,
    },
    Flush,
    Init {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u64,
    },
    OpenDir,
    ReadDir {
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    },
    ReleaseDir {
        fh: u64,
    },
    FsyncDir,
    Access {
        mask: i32,
    },
    Create {
        name: &'a OsStr,
        mode: u32,
        umask: u32,
    },
    Interrupt,
    Destroy,
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    Lseek {
        fh: u64,
        offset: i64,
        whence: i32,
    },
    CopyFileRange {
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u64,
    },
    /// An operation this daemon does not serve: answered `ENOSYS`, which tells the kernel
    /// not to ask again where it can do without.
    Unsupported,
}

impl Op<'_> {
    /// True for the operations the kernel expects no answer to.
    pub fn unanswered(&self) -> bool {
        matches!(self, Op::Forget { .. } | Op::BatchForget { .. })
    }
}

impl<'a> Request<'a> {
    /// Decodes a request of `header` whose body starts with `fixed` (its op structure,
    /// [`abi::fixed_size`] bytes or, for INIT, whatever the kernel sent) and goes on with
    /// `rest`. `EINVAL` for a body too short or malformed.
    pub fn parse(header: InHeader, fixed: &'a [u8], rest: &'a [u8]) -> Result<Request<'a>, Errno> {
        let op =
            decode(header.opcode, Fields::new(fixed), Fields::new(rest)).ok_or(Errno::EINVAL)?;
        Ok(Request { header, op })
    }

    /// Decodes a request read whole from `/dev/fuse`: header, op structure, names and data.
    pub fn from_device(buf: &'a [u8]) -> Result<Request<'a>, Errno> {
        let header = InHeader::parse(buf).ok_or(Errno::EIO)?;
        let len = (header.len as usize).min(buf.len());
        let body = buf.get(abi::IN_HEADER..len).ok_or(Errno::EIO)?;
        let split = if header.opcode == op::INIT {
            body.len()
        } else {
            abi::fixed_size(header.opcode)
        };
        if body.len() < split {
            return Err(Errno::EINVAL);
        }
        let (fixed, rest) = body.split_at(split);
        Request::parse(header, fixed, rest)
    }
}

fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

fn time(set: bool, now: bool, secs: u64, nsecs: u32) -> Option<SetTime> {
    match (set, now) {
        (false, _) => None,
        (true, true) => Some(SetTime::Now),
        (true, false) => Some(SetTime::At(secs as i64, nsecs.into())),
    }
}

/// Decodes the arguments of `opcode` from its op structure `f` and what follows it, `r`.
fn decode<'a>(opcode: u32, mut f: Fields<'a>, mut r: Fields<'a>) -> Option<Op<'a>> {
    Some(match opcode {
        op::LOOKUP => Op::Lookup {
            name: os(r.name()?),
        },
        op::FORGET => Op::Forget { nlookup: f.u64()? },
        op::BATCH_FORGET => {
            let count = f.u32()? as usize;
            let mut nodes = Vec::with_capacity(count.min(r.remaining() / 16));
            for _ in 0..count {
                nodes.push((r.u64()?, r.u64()?));
            }
            Op::BatchForget { nodes }
        }
        op::GETATTR => {
            let flags = f.u32()?;
            f.skip(4)?;
            let fh = f.u64()?;
            Op::GetAttr {
                fh: (flags & abi::GETATTR_FH != 0).then_some(fh),
            }
        }
        op::SETATTR => {
            let (fh, set) = setattr(f)?;
            Op::SetAttr { fh, set }
        }
        op::READLINK => Op::ReadLink,
        op::SYMLINK => {
            let name = os(r.name()?);
            Op::Symlink {
                name,
                target: r.name()?,
            }
        }
        op::MKNOD => {
            let (mode, rdev, umask) = (f.u32()?, f.u32()?, f.u32()?);
            Op::MkNod {
                name: os(r.name()?),
                mode,
                rdev,
                umask,
            }
        }
        op::MKDIR => {
            let (mode, umask) = (f.u32()?, f.u32()?);
            Op::MkDir {
                name: os(r.name()?),
                mode,
                umask,
            }
        }
        op::UNLINK => Op::Unlink {
            name: os(r.name()?),
        },
        op::RMDIR => Op::RmDir {
            name: os(r.name()?),
        },
        op::RENAME | op::RENAME2 => {
            let newdir = f.u64()?;
            let flags = if opcode == op::RENAME2 { f.u32()? } else { 0 };
            let name = os(r.name()?);
            Op::Rename {
                name,
                newdir,
                newname: os(r.name()?),
                flags,
            }
        }
        op::LINK => Op::Link {
            oldnode: f.u64()?,
            newname: os(r.name()?),
        },
        op::OPEN => Op::Open {
            flags: f.u32()? as i32,
        },
        op::READ | op::READDIR | op::READDIRPLUS => {
            let (fh, offset, size) = (f.u64()?, f.u64()?, f.u32()?);
            match opcode {
                op::READ => Op::Read { fh, offset, size },
                _ => Op::ReadDir {
                    fh,
                    offset,
                    size,
                    plus: opcode == op::READDIRPLUS,
                },
            }
        }
        op::WRITE => {
            let (fh, offset, size) = (f.u64()?, f.u64()?, f.u32()? as usize);
            Op::Write {
                fh,
                offset,
                data: r.take(size)?,
            }
        }
        op::STATFS => Op::StatFs,
        op::RELEASE => Op::Release { fh: f.u64()? },
        op::RELEASEDIR => Op::ReleaseDir { fh: f.u64()? },
        op::FSYNC => {
            let fh = f.u64()?;
            Op::Fsync {
                fh,
                datasync: f.u32()? & 1 != 0,
            }
        }
        op::FSYNCDIR => Op::FsyncDir,
        op::SETXATTR => {
            let (size, flags) = (f.u32()? as usize, f.u32()? as i32);
            let name = os(r.name()?);
            Op::SetXattr {
                name,
                value: r.take(size)?,
                flags,
            }
        }
        op::GETXATTR => {
            let size = f.u32()?;
            Op::GetXattr {
                name: os(r.name()?),
                size,
            }
        }
        op::LISTXATTR => Op::ListXattr { size: f.u32()? },
        op::REMOVEXATTR => Op::RemoveXattr {
            name: os(r.name()?),
        },
        op::FLUSH => Op::Flush,
        op::INIT => {
            let (major, minor, max_readahead, low) = (f.u32()?, f.u32()?, f.u32()?, f.u32()?);
            // flags2 exists from 7.36; older kernels send a shorter structure.
            let high = if u64::from(low) & abi::init::INIT_EXT != 0 {
                f.u32().unwrap_or(0)
            } else {
                0
            };
            Op::Init {
                major,
                minor,
                max_readahead,
                flags: u64::from(low) | u64::from(high) << 32,
            }
        }
        op::OPENDIR => Op::OpenDir,
        op::ACCESS => Op::Access {
            mask: f.u32()? as i32,
        },
        op::CREATE => {
            let (_flags, mode, umask) = (f.u32()?, f.u32()?, f.u32()?);
            Op::Create {
                name: os(r.name()?),
                mode,
                umask,
            }
        }
        op::INTERRUPT => Op::Interrupt,
        op::DESTROY => Op::Destroy,
        op::FALLOCATE => {
            let (fh, offset, length) = (f.u64()?, f.u64()?, f.u64()?);
            Op::Fallocate {
                fh,
                offset,
                length,
                mode: f.u32()? as i32,
            }
        }
        op::LSEEK => {
            let (fh, offset) = (f.u64()?, f.u64()? as i64);
            Op::Lseek {
                fh,
                offset,
                whence: f.u32()? as i32,
            }
        }
        op::COPY_FILE_RANGE => {
            let (fh_in, off_in, _nodeid_out) = (f.u64()?, f.u64()?, f.u64()?);
            let (fh_out, off_out, len, flags) = (f.u64()?, f.u64()?, f.u64()?, f.u64()?);
            Op::CopyFileRange {
                fh_in,
                off_in,
                fh_out,
                off_out,
                len,
                flags,
            }
        }
        _ => Op::Unsupported,
    })
}

/// `struct fuse_setattr_in`: the open file named, if any, and the changes.
fn setattr(mut f: Fields<'_>) -> Option<(Option<u64>, SetAttr)> {
    let valid = f.u32()?;
    f.skip(4)?;
    let (fh, size, _lock_owner) = (f.u64()?, f.u64()?, f.u64()?);
    let (atime, mtime, _ctime) = (f.u64()?, f.u64()?, f.u64()?);
    let (atimensec, mtimensec, _ctimensec) = (f.u32()?, f.u32()?, f.u32()?);
    let mode = f.u32()?;
    f.skip(4)?;
    let (uid, gid) = (f.u32()?, f.u32()?);
    let has = |bit: u32| valid & bit != 0;
    let fh = has(fattr::FH).then_some(fh);
    Some((
        fh,
        SetAttr {
            mode: has(fattr::MODE).then_some(mode),
            uid: has(fattr::UID).then_some(uid),
            gid: has(fattr::GID).then_some(gid),
            size: has(fattr::SIZE).then_some(size),
            atime: time(has(fattr::ATIME), has(fattr::ATIME_NOW), atime, atimensec),
            mtime: time(has(fattr::MTIME), has(fattr::MTIME_NOW), mtime, mtimensec),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::abi::PutFields;

    fn request(opcode: u32, fixed: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let len = abi::IN_HEADER + fixed.len() + rest.len();
        b.put_u32(len as u32);
        b.put_u32(opcode);
        b.put_u64(9);
        b.put_u64(1);
        b.put_zeros(16);
        b.extend_from_slice(fixed);
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn a_rename2_reads_both_names_and_its_flags() {
        let mut fixed = Vec::new();
        fixed.put_u64(5);
        fixed.put_u32(libc::RENAME_NOREPLACE);
        fixed.put_u32(0);
        let buf = request(op::RENAME2, &fixed, b"a\0b\0");
        let r = Request::from_device(&buf).unwrap();
        assert_eq!(r.header.unique, 9);
        match r.op {
            Op::Rename {
                name,
                newdir,
                newname,
                flags,
            } => {
                assert_eq!((name, newdir, newname), (os(b"a"), 5, os(b"b")));
                assert_eq!(flags, libc::RENAME_NOREPLACE);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_write_takes_exactly_its_size_and_a_short_one_is_refused() {
        let mut fixed = Vec::new();
        fixed.put_u64(3);
        fixed.put_u64(4096);
        fixed.put_u32(5);
        fixed.put_zeros(20);
        let buf = request(op::WRITE, &fixed, b"hello");
        match Request::from_device(&buf).unwrap().op {
            Op::Write { fh, offset, data } => {
                assert_eq!((fh, offset, data), (3, 4096, &b"hello"[..]))
            }
            other => panic!("{other:?}"),
        }
        let short = request(op::WRITE, &fixed, b"hell");
        assert_eq!(Request::from_device(&short).unwrap_err(), Errno::EINVAL);
        let truncated = request(op::WRITE, &fixed[..30], b"");
        assert_eq!(Request::from_device(&truncated).unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn setattr_keeps_only_the_fields_marked_valid() {
        let mut fixed = Vec::new();
        fixed.put_u32(fattr::SIZE | fattr::MTIME | fattr::MTIME_NOW | fattr::FH);
        fixed.put_u32(0);
        for v in [7u64, 100, 0, 11, 22, 0] {
            fixed.put_u64(v);
        }
        for v in [0u32, 0, 0, 0o644, 0, 1000, 1000, 0] {
            fixed.put_u32(v);
        }
        assert_eq!(fixed.len(), 88);
        let buf = request(op::SETATTR, &fixed, b"");
        match Request::from_device(&buf).unwrap().op {
            Op::SetAttr { fh, set } => {
                assert_eq!(fh, Some(7));
                assert_eq!(
                    set,
                    SetAttr {
                        size: Some(100),
                        mtime: Some(SetTime::Now),
                        ..SetAttr::default()
                    }
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_name_without_its_nul_is_refused_and_unknown_ops_are_unsupported() {
        let buf = request(op::LOOKUP, b"", b"name");
        assert_eq!(Request::from_device(&buf).unwrap_err(), Errno::EINVAL);
        let buf = request(4000, b"", b"");
        assert!(matches!(
            Request::from_device(&buf).unwrap().op,
            Op::Unsupported
        ));
    }
}
