//! User-namespace id maps for rootless runs: the caller becomes root inside, and its
//! subordinate ranges from `/etc/subuid` and `/etc/subgid` become ids 1 and up, written by
//! the setuid helpers newuidmap/newgidmap. Without ranges (or helpers) only the caller's own
//! ids are mapped, which the kernel lets anyone do.

use std::path::Path;
use std::process::Command;

use crate::error::Error;

/// One line of an id map: `count` ids from `inside` in the namespace are `outside` on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First id inside.
    pub inside: u32,
    /// First id outside.
    pub outside: u32,
    /// How many.
    pub count: u32,
}

/// The maps of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMaps {
    /// User ids.
    pub uids: Vec<Range>,
    /// Group ids.
    pub gids: Vec<Range>,
    /// Written through newuidmap/newgidmap (else directly, with `setgroups` denied).
    pub helpers: bool,
}

/// Ranges of `/etc/subuid`-style `text` for the user `name` (or its numeric `id`), placed
/// after id 0.
fn subordinate(text: &str, name: Option<&str>, id: u32) -> Vec<Range> {
    let mut next = 1u32;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.trim().splitn(3, ':');
        let (Some(who), Some(start), Some(count)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if Some(who) != name && who != id.to_string() {
            continue;
        }
        let (Ok(start), Ok(count)) = (start.parse::<u32>(), count.parse::<u32>()) else {
            continue;
        };
        if count == 0 {
            continue;
        }
        out.push(Range {
            inside: next,
            outside: start,
            count,
        });
        next = next.saturating_add(count);
    }
    out
}

/// Plans the maps for user `uid` (named `name`) and group `gid`, given the texts of
/// `/etc/subuid` and `/etc/subgid` and whether the helpers are installed.
pub fn plan(
    uid: u32,
    gid: u32,
    name: Option<&str>,
    subuid: &str,
    subgid: &str,
    helpers: bool,
) -> IdMaps {
    let own = |id| Range {
        inside: 0,
        outside: id,
        count: 1,
    };
    let uids = subordinate(subuid, name, uid);
    let gids = subordinate(subgid, name, uid);
    if helpers && !uids.is_empty() && !gids.is_empty() {
        IdMaps {
            uids: std::iter::once(own(uid)).chain(uids).collect(),
            gids: std::iter::once(own(gid)).chain(gids).collect(),
            helpers: true,
        }
    } else {
        IdMaps {
            uids: vec![own(uid)],
            gids: vec![own(gid)],
            helpers: false,
        }
    }
}

/// The maps for the calling user, from this machine's files.
pub fn for_caller() -> IdMaps {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid().as_raw();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name);
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let helpers = ["newuidmap", "newgidmap"].iter().all(|h| {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(h).exists())
    });
    plan(
        uid.as_raw(),
        gid,
        name.as_deref(),
        &read("/etc/subuid"),
        &read("/etc/subgid"),
        helpers,
    )
}

fn map_text(ranges: &[Range]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect()
}

fn helper(program: &str, pid: i32, ranges: &[Range]) -> Result<(), Error> {
    let mut cmd = Command::new(program);
    cmd.arg(pid.to_string());
    for r in ranges {
        cmd.args([
            r.inside.to_string(),
            r.outside.to_string(),
            r.count.to_string(),
        ]);
    }
    let out = cmd
        .output()
        .map_err(|e| Error::setup(format!("cannot run {program}: {e}: install uidmap")))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        return Err(Error::setup(format!(
            "{program} failed: {}: check /etc/subuid and /etc/subgid",
            text.trim()
        )));
    }
    Ok(())
}

fn write_proc(pid: i32, file: &str, text: &str) -> Result<(), Error> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::write(&path, text).map_err(|e| Error::setup(format!("cannot write {path}: {e}")))
}

impl IdMaps {
    /// Writes the maps of process `pid`, which has just made its user namespace.
    pub fn apply(&self, pid: i32) -> Result<(), Error> {
        if self.helpers {
            helper("newuidmap", pid, &self.uids)?;
            helper("newgidmap", pid, &self.gids)
        } else {
            write_proc(pid, "uid_map", &map_text(&self.uids))?;
            write_proc(pid, "setgroups", "deny")?;
            write_proc(pid, "gid_map", &map_text(&self.gids))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_follow_id_zero() {
        let subuid = "other:1:5\nme:100000:65536\n1000:300000:10\nbad line\n";
        let maps = plan(1000, 1000, Some("me"), subuid, "me:200000:65536\n", true);
        assert!(maps.helpers);
        assert_eq!(
            maps.uids,
            vec![
                Range {
                    inside: 0,
                    outside: 1000,
                    count: 1
                },
                Range {
                    inside: 1,
                    outside: 100000,
                    count: 65536
                },
                Range {
                    inside: 65537,
                    outside: 300000,
                    count: 10
                },
            ]
        );
        assert_eq!(
            maps.gids[1],
            Range {
                inside: 1,
                outside: 200000,
                count: 65536
            }
        );
        assert_eq!(map_text(&maps.gids), "0 1000 1\n1 200000 65536\n");
    }

    #[test]
    fn without_ranges_or_helpers_only_the_caller() {
        let single = plan(1000, 50, Some("me"), "", "", true);
        assert!(!single.helpers);
        assert_eq!(
            single.uids,
            vec![Range {
                inside: 0,
                outside: 1000,
                count: 1
            }]
        );
        assert_eq!(
            single.gids,
            vec![Range {
                inside: 0,
                outside: 50,
                count: 1
            }]
        );
        let no_helpers = plan(1000, 50, Some("me"), "me:1:2\n", "me:1:2\n", false);
        assert!(!no_helpers.helpers);
    }
}
