//! [`Cgroup`]: the container's cgroup and its limits, on cgroup v1 (one hierarchy per
//! controller, as on this project's v1-hybrid machines) and v2 (one unified hierarchy).
//!
//! The cgroup is made below the supervisor's own cgroup in each hierarchy, so limits nest
//! under whatever already limits the caller. A limit that cannot be applied is an error.

use std::path::{Path, PathBuf};

use crate::config::run::{Limits, CPU_PERIOD_US};
use crate::error::Error;

const ROOT: &str = "/sys/fs/cgroup";

/// One cgroup directory per hierarchy the limits need.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

/// The files to write, per controller, for one version of cgroups. Pure, so unit-tested.
fn settings(limits: &Limits, v2: bool) -> Vec<(&'static str, &'static str, String)> {
    let mut out = Vec::new();
    if let Some(bytes) = limits.memory {
        if v2 {
            out.push(("memory", "memory.max", bytes.to_string()));
            out.push(("memory", "memory.swap.max", "0".to_owned()));
        } else {
            out.push(("memory", "memory.limit_in_bytes", bytes.to_string()));
            out.push(("memory", "memory.memsw.limit_in_bytes", bytes.to_string()));
        }
    }
    if let Some(n) = limits.pids {
        out.push(("pids", "pids.max", n.to_string()));
    }
    if let Some(cpus) = limits.cpus {
        let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
        if v2 {
            out.push(("cpu", "cpu.max", format!("{quota} {CPU_PERIOD_US}")));
        } else {
            out.push(("cpu", "cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
            out.push(("cpu", "cpu.cfs_quota_us", quota.to_string()));
        }
    }
    out
}

/// This process's cgroup in the hierarchy of `controller` (v1), or in the unified one
/// (`None`), read from the text of `/proc/self/cgroup`.
fn own_path(proc_cgroup: &str, controller: Option<&str>) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = match controller {
            Some(c) => controllers.split(',').any(|x| x == c),
            None => controllers.is_empty(),
        };
        wanted.then(|| path.to_owned())
    })
}

fn write(path: &Path, value: &str, what: &str) -> Result<(), Error> {
    std::fs::write(path, value).map_err(|e| {
        Error::setup(format!(
            "cannot apply {what}: writing {value} to '{}' failed: {e}",
            path.display()
        ))
    })
}

fn what(controller: &str) -> &'static str {
    match controller {
        "memory" => "--memory",
        "pids" => "--pids",
        _ => "--cpus",
    }
}

impl Cgroup {
    /// Makes a cgroup named `name` with `limits`.
    pub fn create(limits: &Limits, name: &str) -> Result<Cgroup, Error> {
        let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| Error::setup(format!("cannot read /proc/self/cgroup: {e}")))?;
        let v2 = Path::new(ROOT).join("cgroup.controllers").exists();
        let mut cg = Cgroup { dirs: Vec::new() };
        let result = if v2 {
            cg.create_v2(limits, name, &proc_cgroup)
        } else {
            cg.create_v1(limits, name, &proc_cgroup)
        };
        if let Err(e) = result {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn make(&mut self, dir: PathBuf, controller: &str) -> Result<(), Error> {
        std::fs::create_dir(&dir).map_err(|e| {
            Error::setup(format!(
                "cannot apply {}: cannot make cgroup '{}': {e}: run as root, or in a cgroup \
                 delegated to this user",
                what(controller),
                dir.display()
            ))
        })?;
        self.dirs.push(dir);
        Ok(())
    }

    fn create_v1(&mut self, limits: &Limits, name: &str, proc_cgroup: &str) -> Result<(), Error> {
        for (controller, file, value) in settings(limits, false) {
            let hierarchy = Path::new(ROOT).join(controller);
            let own = own_path(proc_cgroup, Some(controller)).filter(|_| hierarchy.is_dir());
            let Some(own) = own else {
                return Err(Error::setup(format!(
                    "cannot apply {}: the {controller} cgroup controller is not mounted at '{}'",
                    what(controller),
                    hierarchy.display()
                )));
            };
            let dir = hierarchy.join(own.trim_start_matches('/')).join(name);
            if !self.dirs.contains(&dir) {
                self.make(dir.clone(), controller)?;
            }
            let path = dir.join(file);
            if file == "memory.memsw.limit_in_bytes" && !path.exists() {
                // No swap accounting in this kernel: memory.limit_in_bytes is the limit.
                continue;
            }
            write(&path, &value, what(controller))?;
        }
        Ok(())
    }

    fn create_v2(&mut self, limits: &Limits, name: &str, proc_cgroup: &str) -> Result<(), Error> {
        let own = own_path(proc_cgroup, None).unwrap_or_else(|| "/".to_owned());
        let parent = Path::new(ROOT).join(own.trim_start_matches('/'));
        let settings = settings(limits, true);
        let mut enable: Vec<&str> = settings.iter().map(|(c, _, _)| *c).collect();
        enable.dedup();
        let request: Vec<String> = enable.iter().map(|c| format!("+{c}")).collect();
        let control = parent.join("cgroup.subtree_control");
        std::fs::write(&control, request.join(" ")).map_err(|e| {
            Error::setup(format!(
                "cannot apply the limits: enabling {} in '{}' failed: {e}: a cgroup v2 holding \
                 processes cannot hand out controllers; run as root or in a delegated cgroup",
                enable.join(", "),
                control.display()
            ))
        })?;
        let dir = parent.join(name);
        self.make(dir.clone(), enable[0])?;
        for (controller, file, value) in settings {
            let path = dir.join(file);
            if file == "memory.swap.max" && !path.exists() {
                continue;
            }
            write(&path, &value, what(controller))?;
        }
        Ok(())
    }

    /// Moves process `pid` (a host pid) into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), Error> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string(), "the limits")?;
        }
        Ok(())
    }

    /// Removes the cgroup directories, waiting a little for exiting processes to leave.
    pub fn remove(&self) {
        for dir in self.dirs.iter().rev() {
            let mut tries = 0;
            while let Err(e) = std::fs::remove_dir(dir) {
                tries += 1;
                if e.kind() == std::io::ErrorKind::NotFound {
                    break;
                }
                if tries >= 200 {
                    eprintln!(
                        "overlayfuse run: cannot remove cgroup '{}': {e}",
                        dir.display()
                    );
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_files() {
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(10),
            cpus: Some(0.5),
        };
        let v1 = settings(&limits, false);
        assert!(v1.contains(&("memory", "memory.memsw.limit_in_bytes", "67108864".into())));
        assert!(v1.contains(&("cpu", "cpu.cfs_quota_us", "50000".into())));
        assert!(v1.contains(&("pids", "pids.max", "10".into())));
        let v2 = settings(&limits, true);
        assert!(v2.contains(&("cpu", "cpu.max", "50000 100000".into())));
        assert!(v2.contains(&("memory", "memory.swap.max", "0".into())));
        assert!(settings(&Limits::default(), false).is_empty());
    }

    #[test]
    fn own_cgroup_paths() {
        let text = "9:name=systemd:/\n4:memory:/a/b\n2:cpu,cpuacct:/c\n0::/user.slice/x\n";
        assert_eq!(own_path(text, Some("memory")).as_deref(), Some("/a/b"));
        assert_eq!(own_path(text, Some("cpu")).as_deref(), Some("/c"));
        assert_eq!(own_path(text, Some("pids")), None);
        assert_eq!(own_path(text, None).as_deref(), Some("/user.slice/x"));
    }
}
