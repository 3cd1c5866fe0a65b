//! What an upper layer changes in the lowers below it: the changes `podman diff` and
//! `docker diff` list for a container, read from the layers themselves (no mount).
//!
//! Every marker format is read, as the mount reads it: whiteout devices, `.wh.` files and
//! xattr whiteouts; opaque directories by xattr (`trusted.`, `user.`, fuse-overlayfs's) or by
//! `.wh..wh..opq`. Whether a name exists below is decided by the merge rule of the lowers
//! (their own whiteouts and opaque directories count), not by looking into each one.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::layer::{Layer, LayerDir, Probe};
use super::marker::{self, NameRole};
use super::node::ChainDir;
use super::resolve::{resolve_child, Resolved};
use crate::sys::{Dir, Errno, FileKind, Stat, Xattr};

/// How a path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// It exists below and was changed (or replaced, or something below it was added or
    /// deleted): `C`.
    Changed,
    /// It is new: `A`.
    Added,
    /// It was deleted: `D`.
    Deleted,
    /// It was deleted, then made anew as a directory that hides what was below (an opaque
    /// one): `D`, its entries `A`.
    Remade,
}

impl ChangeKind {
    /// The letter `podman diff` prints.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Changed => 'C',
            ChangeKind::Added => 'A',
            ChangeKind::Deleted | ChangeKind::Remade => 'D',
        }
    }
}

/// One change: a path of the merged tree (absolute, from its root) and how it changed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// The path, `/` first.
    pub path: PathBuf,
    /// How it changed.
    pub kind: ChangeKind,
}

/// The changes `upper` makes to `lowers` (topmost first, each opened as position `i` of the
/// slice), sorted by path, as `podman diff` reports them:
///
/// - a name whited out, or a directory made opaque, over something that exists below:
///   `D` (an opaque directory's own entries then count as added);
/// - an object that exists below: `C`, except a directory whose mode, size and mtime are
///   those of the one below (it was only copied up on the way to a change further down);
/// - anything else: `A`;
/// - a directory holding an `A` or `D` is itself `C` if it is not listed already.
///
/// With `dirs` [`DirRule::Exact`], a directory also counts as changed when its owner or its
/// xattrs differ from the one below (what a layer must carry; `podman diff` does not list
/// such a directory).
pub fn changes(upper: &Layer, lowers: &[Layer], dirs: DirRule) -> Result<Vec<Change>, Errno> {
    let mut root_chain = Vec::with_capacity(lowers.len());
    for layer in lowers {
        root_chain.push(ChainDir {
            layer: layer.index,
            xwhiteouts: Layer::marks(&layer.root)?.xwhiteouts,
        });
    }
    let walk = Walk { lowers, dirs };
    let mut out = Vec::new();
    let root_marks = Layer::marks(&upper.root)?;
    walk.dir(
        &upper.root,
        root_marks.xwhiteouts,
        Path::new(""),
        &root_chain,
        true,
        &mut out,
    )?;
    out.sort();
    Ok(out)
}

/// When a directory both below and in the upper counts as changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirRule {
    /// Its mode, size or mtime differ (`podman diff`'s rule).
    Podman,
    /// Those, or its owner, or its xattrs (not the overlay's own).
    Exact,
}

struct Walk<'a> {
    lowers: &'a [Layer],
    dirs: DirRule,
}

impl Walk<'_> {
    /// The changes inside upper directory `dir` (at `rel`, merged below with `chain`, empty
    /// where nothing is below). `listed` says whether `dir` itself is already a change.
    fn dir(
        &self,
        dir: &Dir,
        xwhiteouts: bool,
        rel: &Path,
        chain: &[ChainDir],
        listed: bool,
        out: &mut Vec<Change>,
    ) -> Result<(), Errno> {
        let names: BTreeSet<OsString> = dir
            .entries(true)?
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n != "." && n != "..")
            .collect();
        let mut added_or_deleted = false;
        for name in &names {
            let deleted = match Layer::probe(dir, xwhiteouts, name)? {
                Probe::Object(st) => {
                    let below = self.below(rel, chain, name)?;
                    added_or_deleted |= self.object(dir, name, &rel.join(name), &st, below, out)?;
                    continue;
                }
                Probe::Whiteout => name.as_os_str(),
                // A `.wh.NAME` file beside NAME itself records "deleted, then made anew":
                // NAME tells that story. Other marker files are no objects.
                Probe::Absent => match marker::name_role(name) {
                    NameRole::Whiteout(target) if !names.contains(target) => target,
                    _ => continue,
                },
            };
            if self.below(rel, chain, deleted)?.is_some() {
                push(out, &rel.join(deleted), ChangeKind::Deleted);
                added_or_deleted = true;
            }
        }
        if added_or_deleted && !listed && !rel.as_os_str().is_empty() {
            push(out, rel, ChangeKind::Changed);
        }
        Ok(())
    }

    /// The change of upper object `name` of `dir` (at `path`, status `st`, `below` what the
    /// lowers hold there) and of what it holds; true when it is an `A` or a `D`.
    fn object(
        &self,
        dir: &Dir,
        name: &OsStr,
        path: &Path,
        st: &Stat,
        below: Option<Resolved>,
        out: &mut Vec<Change>,
    ) -> Result<bool, Errno> {
        if st.kind() != Some(FileKind::Directory) {
            let kind = match below {
                Some(_) => ChangeKind::Changed,
                None => ChangeKind::Added,
            };
            push(out, path, kind);
            return Ok(kind != ChangeKind::Changed);
        }
        let child = dir.child_dir(name)?;
        let marks = Layer::marks(&child)?;
        let (kind, chain) = match below {
            None => (Some(ChangeKind::Added), Vec::new()),
            Some(b) if b.kind != FileKind::Directory => (Some(ChangeKind::Changed), Vec::new()),
            // Deleted and made anew: what it holds is all new.
            Some(_) if marks.opaque || Layer::has_aufs_whiteout(dir, name)? => {
                (Some(ChangeKind::Remade), Vec::new())
            }
            Some(b) => {
                let mut same =
                    b.top.mode == st.mode && b.top.size == st.size && b.top.mtime == st.mtime;
                if same && self.dirs == DirRule::Exact {
                    let lower = self.lowers[b.chain[0].layer].dir(path)?;
                    same = b.top.uid == st.uid
                        && b.top.gid == st.gid
                        && visible_xattrs(&lower)? == visible_xattrs(&child)?;
                }
                (
                    if same {
                        None
                    } else {
                        Some(ChangeKind::Changed)
                    },
                    b.chain,
                )
            }
        };
        if let Some(kind) = kind {
            push(out, path, kind);
        }
        self.dir(&child, marks.xwhiteouts, path, &chain, kind.is_some(), out)?;
        Ok(matches!(
            kind,
            Some(ChangeKind::Added | ChangeKind::Deleted)
        ))
    }

    /// What the lowers hold at `name` in the directory at `rel` (merged there as `chain`).
    fn below(
        &self,
        rel: &Path,
        chain: &[ChainDir],
        name: &OsStr,
    ) -> Result<Option<Resolved>, Errno> {
        if chain.is_empty() {
            return Ok(None);
        }
        let open = |i: usize| -> Result<Arc<LayerDir>, Errno> { self.lowers[i].dir(rel) };
        resolve_child(self.lowers, &open, chain, name)
    }
}

/// The xattrs of directory `dir` that are not the overlay's own, sorted, with their values.
fn visible_xattrs(dir: &Dir) -> Result<Vec<Xattr>, Errno> {
    let mut out = dir.xattrs(None, |name| !marker::is_private_xattr(name))?;
    out.sort();
    Ok(out)
}

fn absolute(rel: &Path) -> PathBuf {
    Path::new("/").join(rel)
}

fn push(out: &mut Vec<Change>, rel: &Path, kind: ChangeKind) {
    out.push(Change {
        path: absolute(rel),
        kind,
    });
}

/// The changes as `podman diff --format json` prints them: `{"changed":[...],"added":[...],
/// "deleted":[...]}`, each list sorted, empty lists left out.
pub fn to_json(changes: &[Change]) -> String {
    let mut parts = Vec::new();
    for (key, kind) in [
        ("changed", ChangeKind::Changed),
        ("added", ChangeKind::Added),
        ("deleted", ChangeKind::Deleted),
    ] {
        let paths: Vec<String> = changes
            .iter()
            .filter(|c| {
                c.kind == kind || kind == ChangeKind::Deleted && c.kind == ChangeKind::Remade
            })
            .map(|c| json_string(c.path.as_os_str().as_bytes()))
            .collect();
        if !paths.is_empty() {
            parts.push(format!("\"{key}\":[{}]", paths.join(",")));
        }
    }
    format!("{{{}}}", parts.join(","))
}

/// `bytes` as a JSON string: UTF-8 kept, invalid bytes as U+FFFD, controls escaped.
fn json_string(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lists_each_kind_and_escapes() {
        let changes = vec![
            Change {
                path: "/a\"b".into(),
                kind: ChangeKind::Added,
            },
            Change {
                path: "/etc".into(),
                kind: ChangeKind::Changed,
            },
        ];
        assert_eq!(
            to_json(&changes),
            r#"{"changed":["/etc"],"added":["/a\"b"]}"#
        );
        assert_eq!(to_json(&[]), "{}");
    }
}
