//! Compact forms of what every node stores, so a node costs little memory: its name (inline
//! when short, as almost every name is) and its layer chain (inline when it is one layer, as
//! every non-directory's is).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::node::{Chain, ChainDir};

/// Longest name held inline.
const INLINE: usize = 22;

/// A file name: inline up to [`INLINE`] bytes, else on the heap.
#[derive(Clone, Debug)]
pub enum Name {
    /// The first `len` bytes of `bytes`.
    Inline { len: u8, bytes: [u8; INLINE] },
    /// A longer name.
    Heap(Box<[u8]>),
}

impl Name {
    /// Holds a copy of `name`.
    pub fn new(name: &OsStr) -> Name {
        let b = name.as_bytes();
        if b.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..b.len()].copy_from_slice(b);
            Name::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            Name::Heap(b.into())
        }
    }

    /// The name.
    pub fn as_os_str(&self) -> &OsStr {
        match self {
            Name::Inline { len, bytes } => OsStr::from_bytes(&bytes[..usize::from(*len)]),
            Name::Heap(b) => OsStr::from_bytes(b),
        }
    }
}

/// A layer chain: inline when it is one layer, else on the heap.
#[derive(Debug)]
pub enum StoredChain {
    /// A chain of one layer.
    One(ChainDir),
    /// A longer (or empty) chain.
    Many(Box<[ChainDir]>),
}

impl StoredChain {
    /// Stores `chain`.
    pub fn new(chain: Chain) -> StoredChain {
        match chain[..] {
            [one] => StoredChain::One(one),
            _ => StoredChain::Many(chain.into_boxed_slice()),
        }
    }

    /// The chain, topmost layer first.
    pub fn as_slice(&self) -> &[ChainDir] {
        match self {
            StoredChain::One(one) => std::slice::from_ref(one),
            StoredChain::Many(many) => many,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_inline_and_on_the_heap() {
        for len in [0, 1, INLINE, INLINE + 1, 255] {
            let s = "n".repeat(len);
            let name = Name::new(OsStr::new(&s));
            assert_eq!(name.as_os_str(), OsStr::new(&s));
            assert_eq!(matches!(name, Name::Inline { .. }), len <= INLINE);
        }
    }

    #[test]
    fn chains_round_trip() {
        let dir = |layer| ChainDir {
            layer,
            xwhiteouts: layer == 2,
        };
        for chain in [vec![], vec![dir(1)], vec![dir(0), dir(2), dir(3)]] {
            assert_eq!(StoredChain::new(chain.clone()).as_slice(), &chain[..]);
        }
    }

    #[test]
    fn a_node_name_and_chain_take_no_more_room_than_a_vec() {
        assert!(std::mem::size_of::<Name>() <= 24);
        assert!(std::mem::size_of::<StoredChain>() <= 24);
    }
}
