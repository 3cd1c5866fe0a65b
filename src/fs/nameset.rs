//! A compact, immutable set of a directory's entry names with their `d_type`: the names
//! sorted in one byte buffer, found by bisection (a few bytes per name beyond its length).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// The entries of one directory.
#[derive(Debug)]
pub struct NameSet {
    bytes: Box<[u8]>,
    /// End of name `i` in `bytes` (its start is the end of name `i - 1`).
    ends: Box<[u32]>,
    dtypes: Box<[u8]>,
}

impl NameSet {
    /// The set of `entries` (name, `d_type`); `None` if their names exceed 4 GiB together.
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a OsStr, u8)>) -> Option<NameSet> {
        let mut entries: Vec<(&[u8], u8)> = entries
            .into_iter()
            .map(|(n, t)| (n.as_bytes(), t))
            .collect();
        entries.sort_unstable();
        let mut bytes = Vec::with_capacity(entries.iter().map(|(n, _)| n.len()).sum());
        let mut ends = Vec::with_capacity(entries.len());
        let mut dtypes = Vec::with_capacity(entries.len());
        for (name, dtype) in entries {
            bytes.extend_from_slice(name);
            ends.push(u32::try_from(bytes.len()).ok()?);
            dtypes.push(dtype);
        }
        Some(NameSet {
            bytes: bytes.into(),
            ends: ends.into(),
            dtypes: dtypes.into(),
        })
    }

    /// How many names it holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    fn name(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.bytes[start..self.ends[i] as usize]
    }

    /// The `d_type` of `name`, if the directory holds it.
    pub fn get(&self, name: &OsStr) -> Option<u8> {
        let want = name.as_bytes();
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.name(mid).cmp(want) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.dtypes[mid]),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_name_and_nothing_else() {
        let names = ["b", "a", ".wh.a", "", "ab", "zz", "\u{e9}t\u{e9}"];
        let set = NameSet::new(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (OsStr::new(n), i as u8)),
        )
        .unwrap();
        assert_eq!(set.len(), names.len());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(set.get(OsStr::new(n)), Some(i as u8), "{n}");
        }
        for absent in ["c", "aa", "abc", ".wh.b", "z"] {
            assert_eq!(set.get(OsStr::new(absent)), None, "{absent}");
        }
        assert_eq!(NameSet::new([]).unwrap().get(OsStr::new("x")), None);
    }
}
