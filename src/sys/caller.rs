//! What the process behind a request may do, read from `/proc/<pid>`: the credentials a FUSE
//! request does not carry (supplementary groups, capabilities, user namespace).

use std::os::unix::fs::MetadataExt;

/// `CAP_FSETID`: keep setuid and setgid bits where they would otherwise be cleared.
const CAP_FSETID: u32 = 4;

/// True when the process `pid`, whose fsgid is `fsgid`, is in group `gid` or holds
/// `CAP_FSETID` over an object owned by `uid`:`gid` (the kernel's `in_group_or_capable`).
/// Where `/proc/<pid>` cannot be read (the process is gone), false: the caller keeps no
/// privilege it cannot be shown to have.
pub fn in_group_or_capable(pid: u32, fsgid: u32, uid: u32, gid: u32) -> bool {
    if fsgid == gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let in_groups = status_field(&status, "Groups:").is_some_and(|groups| {
        groups
            .split_whitespace()
            .any(|g| g.parse::<u32>() == Ok(gid))
    });
    in_groups || (has_effective_cap(&status, CAP_FSETID) && ids_mapped_for(pid, uid, gid))
}

/// True when the credentials of process `pid` can be read here (0: a process of a pid
/// namespace the connection cannot see).
pub fn readable(pid: u32) -> bool {
    pid != 0 && std::fs::metadata(format!("/proc/{pid}/status")).is_ok()
}

/// True when the process `pid` holds `CAP_FSETID` in the initial user namespace (the
/// kernel's `capable(CAP_FSETID)`, which decides whether a write clears setuid): a process
/// of a user namespace never does, whatever it holds there. Where `/proc/<pid>` cannot be
/// read, false.
pub fn holds_fsetid(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    has_effective_cap(&status, CAP_FSETID) && in_initial_user_namespace(pid)
}

/// True when `pid` is in the initial user namespace: its uid map is the whole identity map.
fn in_initial_user_namespace(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/uid_map")).is_ok_and(|map| {
        let f: Vec<&str> = map.split_whitespace().collect();
        f == ["0", "0", "4294967295"]
    })
}

/// True when `status` (the text of a `/proc/<pid>/status`) lists capability `cap` as
/// effective.
pub fn has_effective_cap(status: &str, cap: u32) -> bool {
    status_field(status, "CapEff:")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// The value of field `name` (with its colon) of a `/proc/<pid>/status` text.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

/// True when the user namespace of `pid` is this process's own or maps both `uid` and `gid`:
/// a capability held in a namespace counts only over objects whose ids it maps.
fn ids_mapped_for(pid: u32, uid: u32, gid: u32) -> bool {
    let ns = |p: &str| std::fs::metadata(format!("/proc/{p}/ns/user")).map(|m| m.ino());
    match (ns(&pid.to_string()), ns("self")) {
        (Ok(theirs), Ok(ours)) if theirs == ours => true,
        (Ok(_), Ok(_)) => maps(pid, "uid_map", uid) && maps(pid, "gid_map", gid),
        _ => false,
    }
}

/// True when id map `file` of `pid` (read from this namespace: inside, outside, count) has
/// `id` among its outside ids.
fn maps(pid: u32, file: &str, id: u32) -> bool {
    let Ok(map) = std::fs::read_to_string(format!("/proc/{pid}/{file}")) else {
        return false;
    };
    map.lines().any(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        matches!(f[..], [_, outside, count] if (outside..outside + count).contains(&u64::from(id)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_in_its_own_group_and_a_gone_one_in_none() {
        let me = std::process::id();
        let gid = crate::sys::process::egid();
        assert!(in_group_or_capable(me, gid, 0, gid));
        // Root in its own namespace holds CAP_FSETID over anything; others are in no group
        // 4_000_000 and cannot be asked about once gone.
        let root = crate::sys::process::euid() == 0;
        assert_eq!(in_group_or_capable(me, gid, 1, 4_000_000), root);
        assert!(!in_group_or_capable(u32::MAX - 1, gid, 1, 4_000_000));
        assert_eq!(holds_fsetid(me), root && in_initial_user_namespace(me));
        assert!(!holds_fsetid(u32::MAX - 1));
        assert!(readable(me) && !readable(0) && !readable(u32::MAX - 1));
    }
}
