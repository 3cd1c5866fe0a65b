//! `overlayfuse features`: which kernel features this machine offers and which of them a
//! mount will use, each with the reason when it will not, so a user can tell before mounting
//! (and a bug report can say) what the daemon will run on.

use crate::sys::{fusedev, mount, process};

/// One feature: its name, whether it will be used, and a note (why not, or how to get it).
struct Feature {
    name: &'static str,
    used: bool,
    note: String,
}

/// The kernel's release as (major, minor).
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn at_least(version: Option<(u32, u32)>, want: (u32, u32)) -> bool {
    version.is_some_and(|v| v >= want)
}

fn features() -> Vec<Feature> {
    let version = kernel_version();
    let admin = process::admin_in_initial_namespace();
    let fuse = std::path::Path::new("/dev/fuse").exists();
    let ring = fusedev::ring_enabled();
    let io_uring_allowed = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map_or(true, |v| v.trim() == "0");
    vec![
        Feature {
            name: "FUSE device",
            used: fuse,
            note: if fuse {
                "/dev/fuse".into()
            } else {
                "no /dev/fuse: modprobe fuse".into()
            },
        },
        Feature {
            name: "passthrough (-o passthrough=auto)",
            used: admin && at_least(version, (6, 9)),
            note: match (admin, at_least(version, (6, 9))) {
                (_, false) => "needs Linux 6.9".into(),
                (false, _) => "needs CAP_SYS_ADMIN in the initial user namespace (root)".into(),
                _ => {
                    "reads, writes and mmap of upper files (and of read-only mounts) in the kernel"
                        .into()
                }
            },
        },
        Feature {
            name: "FUSE over io_uring (-o uring=auto)",
            used: ring == Some(true) && io_uring_allowed,
            note: match ring {
                None => "not in this kernel (Linux 6.14+ with CONFIG_FUSE_IO_URING)".into(),
                Some(false) => {
                    "offered once root runs: echo 1 > /sys/module/fuse/parameters/enable_uring"
                        .into()
                }
                Some(true) if !io_uring_allowed => {
                    "io_uring is disabled (/proc/sys/kernel/io_uring_disabled)".into()
                }
                Some(true) => format!("one queue per CPU ({} queues)", process::possible_cpus()),
            },
        },
        Feature {
            name: "*xattrat calls",
            used: crate::sys::have_xattrat(),
            note: if crate::sys::have_xattrat() {
                "directory xattrs read and written in one call".into()
            } else {
                "Linux 6.13 has them; xattrs of directories go through O_PATH descriptors".into()
            },
        },
        Feature {
            name: "mount_setattr (idmapped mounts, access-time rules per layer)",
            used: mount::have_mount_setattr(),
            note: if mount::have_mount_setattr() {
                "lower layers read without touching access times".into()
            } else {
                "Linux 5.12 has it; layers are read through their own mounts".into()
            },
        },
        Feature {
            name: "FUSE_NOTIFY_PRUNE (-o max_inodes)",
            used: at_least(version, (6, 18)),
            note: if at_least(version, (6, 18)) {
                "the kernel is asked to drop the oldest unused inodes".into()
            } else {
                "needs Linux 6.18; inodes are dropped only under memory pressure".into()
            },
        },
    ]
}

/// Prints the feature list, one line each: `yes`/`no`, the feature, and its note.
pub fn run() {
    if let Some((major, minor)) = kernel_version() {
        println!("kernel: Linux {major}.{minor}");
    }
    for f in features() {
        println!(
            "{:<3}  {}: {}",
            if f.used { "yes" } else { "no" },
            f.name,
            f.note
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_then_minor() {
        assert!(at_least(Some((6, 18)), (6, 14)));
        assert!(at_least(Some((7, 0)), (6, 14)));
        assert!(!at_least(Some((6, 9)), (6, 13)));
        assert!(!at_least(None, (5, 12)));
    }
}
