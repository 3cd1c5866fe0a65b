//! Counting the requests a mount served, per operation: the daemon logs the counts when the
//! mount ends, which tells how many round trips a workload cost (and which ones).

use super::abi::op;

/// Operation codes are below this (FUSE 7.45 has 54); larger ones count in the last slot.
const SLOTS: usize = 64;

/// How many requests of each operation one or more serving threads answered.
#[derive(Clone, Debug)]
pub struct Tally([u64; SLOTS]);

impl Default for Tally {
    fn default() -> Tally {
        Tally([0; SLOTS])
    }
}

fn name(opcode: usize) -> &'static str {
    match opcode as u32 {
        op::LOOKUP => "lookup",
        op::FORGET => "forget",
        op::GETATTR => "getattr",
        op::SETATTR => "setattr",
        op::READLINK => "readlink",
        op::SYMLINK => "symlink",
        op::MKNOD => "mknod",
        op::MKDIR => "mkdir",
        op::UNLINK => "unlink",
        op::RMDIR => "rmdir",
        op::RENAME => "rename",
        op::LINK => "link",
        op::OPEN => "open",
        op::READ => "read",
        op::WRITE => "write",
        op::STATFS => "statfs",
        op::RELEASE => "release",
        op::FSYNC => "fsync",
        op::SETXATTR => "setxattr",
        op::GETXATTR => "getxattr",
        op::LISTXATTR => "listxattr",
        op::REMOVEXATTR => "removexattr",
        op::FLUSH => "flush",
        op::INIT => "init",
        op::OPENDIR => "opendir",
        op::READDIR => "readdir",
        op::RELEASEDIR => "releasedir",
        op::FSYNCDIR => "fsyncdir",
        op::ACCESS => "access",
        op::CREATE => "create",
        op::INTERRUPT => "interrupt",
        op::DESTROY => "destroy",
        op::BATCH_FORGET => "batch_forget",
        op::FALLOCATE => "fallocate",
        op::READDIRPLUS => "readdirplus",
        op::RENAME2 => "rename2",
        op::LSEEK => "lseek",
        op::COPY_FILE_RANGE => "copy_file_range",
        _ => "other",
    }
}

impl Tally {
    /// Counts one request of `opcode`.
    pub fn count(&mut self, opcode: u32) {
        self.0[(opcode as usize).min(SLOTS - 1)] += 1;
    }

    /// All requests counted.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Adds another thread's counts.
    pub fn add(&mut self, other: &Tally) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    /// The counts, most frequent first: `lookup 120, getattr 7`.
    pub fn describe(&self) -> String {
        let mut kinds: Vec<(usize, u64)> = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (i, n))
            .collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        kinds
            .iter()
            .map(|&(i, n)| format!("{} {n}", name(i)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_read_most_frequent_first() {
        let mut a = Tally::default();
        a.count(op::GETATTR);
        a.count(op::LOOKUP);
        a.count(op::LOOKUP);
        let mut b = Tally::default();
        b.count(op::LOOKUP);
        b.count(9999);
        a.add(&b);
        assert_eq!(a.total(), 5);
        assert_eq!(a.describe(), "lookup 3, getattr 1, other 1");
    }
}
