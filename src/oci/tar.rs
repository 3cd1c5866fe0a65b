//! A tar writer for layer tarballs: POSIX ustar headers, with a PAX extended header
//! (`x`) before an entry whenever ustar cannot hold it (long names or link targets, ids or
//! sizes past its fields, xattrs as `SCHILY.xattr.*`). Every field is set from what it is
//! given and nothing else (no user or group names, no access or change times), so the same
//! entries give the same bytes.

use std::io::{self, Write};

/// Block size of the format.
const BLOCK: usize = 512;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of this many bytes (its data follows).
    File(u64),
    /// A directory.
    Dir,
    /// A symbolic link to this target.
    Symlink(Vec<u8>),
    /// A hard link to this earlier entry's path.
    HardLink(Vec<u8>),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A FIFO.
    Fifo,
}

/// One entry's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Path inside the archive, relative, no leading `/` (a directory without its `/`).
    pub path: Vec<u8>,
    /// Its type.
    pub kind: Kind,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Its nanoseconds (written as a PAX `mtime` where not 0).
    pub mtime_nsec: u32,
    /// Extended attributes, name and value, in the order to write them.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Writes entries to `out`, then the two zero blocks that end an archive.
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// A writer of one archive to `out`.
    pub fn new(out: W) -> Writer<W> {
        Writer { out }
    }

    /// Writes `h`, then (for a regular file) its data from `data`, which must give exactly
    /// the size the header says.
    pub fn append(&mut self, h: &Header, data: Option<&mut dyn io::Read>) -> io::Result<()> {
        let mut name = h.path.clone();
        if h.kind == Kind::Dir {
            name.push(b'/');
        }
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        let (prefix, short) = split_name(&name).unwrap_or_else(|| {
            pax.push(("path", name.clone()));
            (Vec::new(), truncated(&name, 100))
        });
        let link = match &h.kind {
            Kind::Symlink(t) | Kind::HardLink(t) => t.clone(),
            _ => Vec::new(),
        };
        if link.len() > 100 {
            pax.push(("linkpath", link.clone()));
        }
        let size = match h.kind {
            Kind::File(n) => n,
            _ => 0,
        };
        if size > OCTAL_11 {
            pax.push(("size", size.to_string().into_bytes()));
        }
        if u64::from(h.uid) > OCTAL_7 {
            pax.push(("uid", h.uid.to_string().into_bytes()));
        }
        if u64::from(h.gid) > OCTAL_7 {
            pax.push(("gid", h.gid.to_string().into_bytes()));
        }
        let mtime = u64::try_from(h.mtime).unwrap_or(0);
        if h.mtime_nsec != 0 {
            pax.push(("mtime", pax_time(h.mtime, h.mtime_nsec).into_bytes()));
        } else if h.mtime < 0 || mtime > OCTAL_11 {
            pax.push(("mtime", h.mtime.to_string().into_bytes()));
        }
        let mut records = Vec::new();
        for (key, value) in &pax {
            records.extend(pax_record(key.as_bytes(), value));
        }
        for (name, value) in &h.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name);
            records.extend(pax_record(&key, value));
        }
        if !records.is_empty() {
            let mut pax_name = b"PaxHeaders/".to_vec();
            pax_name.extend(truncated(&short, 100 - pax_name.len()));
            let block = ustar_block(&UstarFields {
                prefix: &[],
                name: &pax_name,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: records.len() as u64,
                mtime: mtime.min(OCTAL_11),
                typeflag: b'x',
                link: &[],
                dev: (0, 0),
            });
            self.out.write_all(&block)?;
            self.out.write_all(&records)?;
            self.pad(records.len() as u64)?;
        }
        let (typeflag, dev) = match &h.kind {
            Kind::File(_) => (b'0', (0, 0)),
            Kind::HardLink(_) => (b'1', (0, 0)),
            Kind::Symlink(_) => (b'2', (0, 0)),
            Kind::Char(ma, mi) => (b'3', (*ma, *mi)),
            Kind::Block(ma, mi) => (b'4', (*ma, *mi)),
            Kind::Dir => (b'5', (0, 0)),
            Kind::Fifo => (b'6', (0, 0)),
        };
        let block = ustar_block(&UstarFields {
            prefix: &prefix,
            name: &short,
            mode: h.mode & 0o7777,
            uid: u64::from(h.uid).min(OCTAL_7),
            gid: u64::from(h.gid).min(OCTAL_7),
            size: size.min(OCTAL_11),
            mtime: mtime.min(OCTAL_11),
            typeflag,
            link: &truncated(&link, 100),
            dev,
        });
        self.out.write_all(&block)?;
        if let (Kind::File(n), Some(data)) = (&h.kind, data) {
            let copied = io::copy(&mut io::Read::take(data, *n), &mut self.out)?;
            if copied != *n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was archived",
                ));
            }
            self.pad(*n)?;
        }
        Ok(())
    }

    /// Ends the archive and gives the output back.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rest = (BLOCK - (len % BLOCK as u64) as usize) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..rest])
    }
}

/// The largest value of an 11-digit octal field (sizes, times).
const OCTAL_11: u64 = 0o77777777777;
/// The largest value of a 7-digit octal field (ids).
const OCTAL_7: u64 = 0o7777777;

/// `name` as ustar's prefix (up to 155 bytes) and name (up to 100), split at a `/`; `None`
/// where it does not fit.
fn split_name(name: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if name.len() <= 100 {
        return Some((Vec::new(), name.to_vec()));
    }
    // A directory's trailing `/` belongs to the name part.
    let body = name.strip_suffix(b"/").unwrap_or(name);
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'/' && i <= 155 && name.len() - i - 1 <= 100 && i > 0 {
            return Some((name[..i].to_vec(), name[i + 1..].to_vec()));
        }
    }
    None
}

fn truncated(b: &[u8], n: usize) -> Vec<u8> {
    b[..b.len().min(n)].to_vec()
}

/// `secs` + `nsec` nanoseconds as a PAX decimal time: a time before the epoch is written
/// as the negative number it is (-6 s + 0.9999999 s is `-5.0000001`).
fn pax_time(secs: i64, nsec: u32) -> String {
    let frac = |n: u32| {
        let s = format!("{n:09}");
        s.trim_end_matches('0').to_owned()
    };
    if secs >= 0 || nsec == 0 {
        return format!("{secs}.{}", frac(nsec));
    }
    format!("-{}.{}", -(secs + 1), frac(1_000_000_000 - nsec))
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting the whole record, its own digits included.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = len.to_string().into_bytes();
    r.push(b' ');
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

struct UstarFields<'a> {
    prefix: &'a [u8],
    name: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &'a [u8],
    dev: (u32, u32),
}

fn ustar_block(f: &UstarFields<'_>) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let put = |b: &mut [u8; BLOCK], at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    let octal = |b: &mut [u8; BLOCK], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}", w = width - 1);
        b[at..at + width - 1].copy_from_slice(s.as_bytes());
    };
    put(&mut b, 0, f.name);
    octal(&mut b, 100, 8, u64::from(f.mode));
    octal(&mut b, 108, 8, f.uid);
    octal(&mut b, 116, 8, f.gid);
    octal(&mut b, 124, 12, f.size);
    octal(&mut b, 136, 12, f.mtime);
    b[156] = f.typeflag;
    put(&mut b, 157, f.link);
    put(&mut b, 257, b"ustar\x0000");
    octal(&mut b, 329, 8, u64::from(f.dev.0));
    octal(&mut b, 337, 8, u64::from(f.dev.1));
    put(&mut b, 345, f.prefix);
    // The checksum: the header's bytes summed with its own field as spaces.
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record(b"path", b"a"), b"9 path=a\n".to_vec());
        let long = vec![b'x'; 95];
        let r = pax_record(b"path", &long);
        assert_eq!(r.len(), 105);
        assert!(r.starts_with(b"105 path="));
    }

    #[test]
    fn pax_times_before_the_epoch_are_negative_numbers() {
        assert_eq!(pax_time(5, 500_000_000), "5.5");
        assert_eq!(pax_time(-6, 999_999_900), "-5.0000001");
        assert_eq!(pax_time(-1, 500_000_000), "-0.5");
    }

    #[test]
    fn long_names_split_at_a_slash_or_go_to_pax() {
        let name = [vec![b'd'; 120], b"/".to_vec(), vec![b'f'; 50]].concat();
        let (prefix, short) = split_name(&name).unwrap();
        assert_eq!(prefix.len(), 120);
        assert_eq!(short.len(), 50);
        assert!(split_name(&[b'f'; 101]).is_none());
    }

    #[test]
    fn an_archive_is_headers_data_and_two_zero_blocks() {
        let mut w = Writer::new(Vec::new());
        let h = Header {
            path: b"a".to_vec(),
            kind: Kind::File(3),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
        };
        w.append(&h, Some(&mut &b"abc"[..])).unwrap();
        let out = w.finish().unwrap();
        // PAX header, its records, the file's header, its data, the end.
        assert_eq!(out.len(), 512 * 6);
        assert_eq!(out[156], b'x');
        assert!(out[512..1024].starts_with(b"25 SCHILY.xattr.user.k=v\n"));
        assert_eq!(out[1024 + 156], b'0');
        assert_eq!(&out[1536..1539], b"abc");
    }
}
