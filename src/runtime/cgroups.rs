//! A container's cgroup, behind one interface for cgroup v1 (including this
//! machine's hybrid layout) and v2. libcontainer creates it and applies the
//! limits; this side reads stats and removes it.

use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupConfig, CgroupManager, CgroupSetup, create_cgroup_manager, get_cgroup_setup};

use super::RuntimeError;

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone)]
pub struct Cgroup {
    /// Relative to each hierarchy's root, e.g. `/celld-1a2b/handle`.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub memory_stat: std::collections::HashMap<String, u64>,
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub pids_current: u64,
    pub pids_max: u64,
}

fn unified() -> bool {
    matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified))
}

impl Cgroup {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn rel(&self) -> &Path {
        self.path.strip_prefix("/").unwrap_or(&self.path)
    }

    /// The directory that holds memory accounting: the memory controller's on v1.
    fn memory_dir(&self) -> PathBuf {
        if unified() { Path::new(ROOT).join(self.rel()) } else { Path::new(ROOT).join("memory").join(self.rel()) }
    }

    pub fn exists(&self) -> bool {
        self.memory_dir().exists()
    }

    fn manager(&self) -> Result<libcgroups::common::AnyCgroupManager, RuntimeError> {
        create_cgroup_manager(CgroupConfig {
            cgroup_path: self.path.clone(),
            systemd_cgroup: false,
            container_name: String::new(),
        })
        .map_err(|e| RuntimeError::Cgroup(e.to_string()))
    }

    pub fn usage(&self) -> Result<Usage, RuntimeError> {
        let s = self.manager()?.stats().map_err(|e| RuntimeError::Cgroup(e.to_string()))?;
        Ok(Usage {
            memory_usage: s.memory.memory.usage,
            memory_limit: s.memory.memory.limit,
            memory_stat: s.memory.stats,
            cpu_usage_ns: s.cpu.usage.usage_total,
            cpu_user_ns: s.cpu.usage.usage_user,
            cpu_system_ns: s.cpu.usage.usage_kernel,
            pids_current: s.pids.current,
            pids_max: s.pids.limit,
        })
    }

    /// How many times the kernel's OOM killer fired in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = if unified() { "memory.events" } else { "memory.oom_control" };
        std::fs::read_to_string(self.memory_dir().join(file))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())))
            .unwrap_or(0)
    }

    pub fn pids(&self) -> Vec<i32> {
        self.manager()
            .and_then(|m| m.get_all_pids().map_err(|e| RuntimeError::Cgroup(e.to_string())))
            .map(|v| v.into_iter().map(|p| p.as_raw()).collect())
            .unwrap_or_default()
    }

    /// Kills whatever is left and removes the cgroup from every hierarchy. Done
    /// by hand: libcgroups' manager parses mountinfo once per v1 controller
    /// first, which costs more than the removal itself.
    pub fn remove(&self) -> Result<(), RuntimeError> {
        let dirs: Vec<PathBuf> = hierarchy_dirs(self.rel()).into_iter().filter(|d| d.is_dir()).collect();
        for d in &dirs {
            for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for d in dirs {
            // A killed task leaves its cgroup a moment after it dies.
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) if tries < 200 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(e) => return Err(RuntimeError::Cgroup(format!("remove {}: {e}", d.display()))),
                }
            }
        }
        Ok(())
    }
}

/// `rel` in every hierarchy: the one directory on v2, one per controller on v1.
fn hierarchy_dirs(rel: &Path) -> Vec<PathBuf> {
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    if unified() {
        vec![Path::new(ROOT).join(rel)]
    } else {
        std::fs::read_dir(ROOT)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join(rel)).collect())
            .unwrap_or_default()
    }
}

/// Memory that counts toward the limit: usage without reclaimable page cache,
/// as Garden reports it.
pub fn usage_toward_limit(u: &Usage) -> u64 {
    let stat = |k: &str| u.memory_stat.get(k).copied().unwrap_or(0);
    if u.memory_stat.contains_key("anon") {
        (stat("anon") + stat("file")).saturating_sub(stat("inactive_file"))
    } else {
        u.memory_usage.saturating_sub(stat("total_inactive_file"))
    }
}

/// The names of the cgroups directly under `parent` in any hierarchy.
pub fn children(parent: &Path) -> std::collections::BTreeSet<String> {
    hierarchy_dirs(parent)
        .into_iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Removes the parent cgroup (e.g. `/celld-1a2b`) when it has no children left.
pub fn remove_parent_if_empty(parent: &Path) {
    for d in hierarchy_dirs(parent) {
        let _ = std::fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toward_limit_excludes_inactive_file() {
        let mut u = Usage { memory_usage: 1000, ..Default::default() };
        u.memory_stat.insert("total_inactive_file".into(), 300);
        assert_eq!(usage_toward_limit(&u), 700);
        let mut v2 = Usage::default();
        v2.memory_stat.insert("anon".into(), 500);
        v2.memory_stat.insert("file".into(), 200);
        v2.memory_stat.insert("inactive_file".into(), 100);
        assert_eq!(usage_toward_limit(&v2), 600);
    }
}
