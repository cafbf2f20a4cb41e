//! A container's cgroup, behind one interface for cgroup v1 (including this
//! machine's hybrid layout) and v2: created with its limits when a container
//! starts, read for metrics, removed on destroy.

use std::path::{Path, PathBuf};

use libcgroups::common::{
    CgroupConfig, CgroupManager, CgroupSetup, ControllerOpt, create_cgroup_manager, get_cgroup_setup,
};
use oci_spec::runtime::LinuxResources;

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

/// How the container sees one of its cgroup directories (see `views`).
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Under the container's /sys/fs/cgroup; empty on v2, where the one
    /// directory is /sys/fs/cgroup itself.
    pub name: String,
    /// The container's directory in this hierarchy, on the host.
    pub source: PathBuf,
    /// Other names of a combined v1 hierarchy (`cpu` and `cpuacct` for `cpu,cpuacct`).
    pub links: Vec<String>,
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

    /// What the container uses. On v1 the few files Garden's metrics need are
    /// read directly (about 7 reads): libcgroups' `stats()` reads every
    /// controller's every file after re-reading mountinfo per controller,
    /// ~1 ms a container, which a cell reading 250 instances' metrics every
    /// few seconds would pay in whole percents of a core.
    pub fn usage(&self) -> Result<Usage, RuntimeError> {
        if !unified() {
            return self.usage_v1();
        }
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

    fn usage_v1(&self) -> Result<Usage, RuntimeError> {
        let dir = |controller: &str| {
            v1_hierarchies()
                .iter()
                .find(|(_, cs)| cs.iter().any(|c| c == controller))
                .map(|(mount, _)| mount.join(self.rel()))
                .ok_or_else(|| RuntimeError::Cgroup(format!("no v1 {controller} hierarchy is mounted")))
        };
        let (memory, cpuacct) = (dir("memory")?, dir("cpuacct")?);
        let cpu_stat = flat_keyed(&read_cgroup_file(&cpuacct.join("cpuacct.stat"))?);
        // pids is optional (kernels without it, hierarchies not mounted).
        let pids = dir("pids").ok();
        let pids_file = |f: &str| pids.as_ref().and_then(|d| std::fs::read_to_string(d.join(f)).ok());
        Ok(Usage {
            memory_usage: single_value(&memory.join("memory.usage_in_bytes"))?,
            memory_limit: single_value(&memory.join("memory.limit_in_bytes"))?,
            memory_stat: flat_keyed(&read_cgroup_file(&memory.join("memory.stat"))?),
            cpu_usage_ns: single_value(&cpuacct.join("cpuacct.usage"))?,
            // In USER_HZ ticks, as libcgroups (and Garden) report them.
            cpu_user_ns: cpu_stat.get("user").copied().unwrap_or(0),
            cpu_system_ns: cpu_stat.get("system").copied().unwrap_or(0),
            pids_current: pids_file("pids.current").and_then(|v| v.trim().parse().ok()).unwrap_or(0),
            // "max" (no limit) is 0, as libcgroups has it.
            pids_max: pids_file("pids.max").and_then(|v| v.trim().parse().ok()).unwrap_or(0),
        })
    }

    /// Creates the cgroup with the spec's limits and moves `pid` into it. On
    /// v1 the files are written directly, with the hierarchies' mount points
    /// read once per process: libcgroups' v1 manager reads mountinfo and
    /// /proc/self/cgroup again for each of the dozen controllers, which made
    /// up most of a container's create time.
    pub fn create(&self, pid: i32, resources: &LinuxResources) -> Result<(), RuntimeError> {
        if unified() {
            let manager = self.manager()?;
            manager.add_task(nix::unistd::Pid::from_raw(pid)).map_err(|e| RuntimeError::Cgroup(e.to_string()))?;
            let opts = ControllerOpt { resources, disable_oom_killer: false, oom_score_adj: None, freezer_state: None };
            return manager.apply(&opts).map_err(|e| RuntimeError::Cgroup(e.to_string()));
        }
        self.make_v1(resources, true)?;
        for (_, _, dir) in v1_joined(self.rel()) {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The cgroup in every v1 hierarchy it joins, with its limits
    /// (`pids.max` only if `pids_limit`).
    fn make_v1(&self, resources: &LinuxResources, pids_limit: bool) -> Result<(), RuntimeError> {
        for (mount, controllers, dir) in v1_joined(self.rel()) {
            let cpuset = controllers.iter().any(|c| c == "cpuset");
            // Each new level, parent first; a new cpuset is empty and takes no task.
            for d in dir
                .ancestors()
                .take_while(|d| d.starts_with(mount) && *d != mount)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                match std::fs::create_dir(d) {
                    Ok(()) if cpuset => inherit_cpuset(d)?,
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(RuntimeError::Cgroup(format!("create {}: {e}", d.display()))),
                }
            }
            for c in controllers.iter().filter(|c| pids_limit || c.as_str() != "pids") {
                apply_v1(c, &dir, resources)?;
            }
        }
        Ok(())
    }

    /// On v1, makes the cgroup with its limits (but `pids.max`) and moves
    /// this process into it, so that the process it clones next is born
    /// there; [`Cgroup::return_home`] must follow, whatever the outcome, then
    /// [`Cgroup::limit_pids`]. `false` (nothing done) on v2, or where this
    /// process's own cgroups are unknown: then [`Cgroup::create`] moves the
    /// clone in afterwards.
    ///
    /// Why: on v1, writing another process's pid into `cgroup.procs` waits
    /// for an RCU grace period (~10 ms here) whenever no migration happened
    /// just before, which set a create's p95 at 2.5× its p50; a process that
    /// moves itself (`0` into `tasks`, single-threaded) takes the fast path
    /// (~0.1 ms).
    pub fn enter_for_clone(&self, resources: &LinuxResources) -> Result<bool, RuntimeError> {
        if unified() || v1_home().is_none() {
            return Ok(false);
        }
        self.make_v1(resources, false)?;
        for (_, _, dir) in v1_joined(self.rel()) {
            write(&dir.join("tasks"), "0")?;
        }
        Ok(true)
    }

    /// Moves this process back to its own cgroups after
    /// [`Cgroup::enter_for_clone`].
    pub fn return_home() -> Result<(), RuntimeError> {
        let Some(home) = v1_home() else { return Ok(()) };
        v1_hierarchies()
            .iter()
            .zip(home)
            .filter(|((_, controllers), _)| membership(controllers) != Membership::None)
            .try_for_each(|(_, dir)| write(&dir.join("tasks"), "0"))
    }

    /// The pids limit, left out by [`Cgroup::enter_for_clone`] (the process
    /// that entered counted against it).
    pub fn limit_pids(&self, resources: &LinuxResources) -> Result<(), RuntimeError> {
        for (mount, controllers) in v1_hierarchies() {
            if controllers.iter().any(|c| c == "pids") {
                apply_v1("pids", &mount.join(self.rel()), resources)?;
            }
        }
        Ok(())
    }

    /// What the container is shown of its cgroups, as runc shows it: on v2
    /// its own directory; on v1 its directory in each hierarchy it is in,
    /// named as the hierarchy's mount point.
    pub fn views(&self) -> Vec<View> {
        if unified() {
            return vec![View { name: String::new(), source: Path::new(ROOT).join(self.rel()), links: Vec::new() }];
        }
        v1_views(v1_joined(self.rel()))
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
        // Every hierarchy is tried: one that stays busy must not keep the
        // others (a create cut short makes only some of them).
        let mut first_err = None;
        let mut killed = false;
        for d in hierarchy_dirs(self.rel()) {
            // A killed task leaves its cgroup a moment after it dies.
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // Processes are listed only when a cgroup is still busy:
                    // most often they are gone (a container's init was killed
                    // and waited for), and each lookup in a hierarchy waits for
                    // the lock every other container's mkdir and rmdir take.
                    // They are in every hierarchy the cgroup is in, so one list
                    // names them all.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && !killed => {
                        killed = true;
                        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                    Err(_) if tries < 200 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(e) => {
                        first_err.get_or_insert(RuntimeError::Cgroup(format!("remove {}: {e}", d.display())));
                        break;
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn read_cgroup_file(path: &Path) -> Result<String, RuntimeError> {
    std::fs::read_to_string(path).map_err(|e| RuntimeError::Cgroup(format!("read {}: {e}", path.display())))
}

fn single_value(path: &Path) -> Result<u64, RuntimeError> {
    let v = read_cgroup_file(path)?;
    v.trim().parse().map_err(|e| RuntimeError::Cgroup(format!("{}: {:?}: {e}", path.display(), v.trim())))
}

/// `key value` lines (memory.stat, cpuacct.stat); lines that are not are
/// skipped.
fn flat_keyed(text: &str) -> std::collections::HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn write(path: &Path, value: &str) -> Result<(), RuntimeError> {
    std::fs::write(path, value).map_err(|e| RuntimeError::Cgroup(format!("write {value:?} to {}: {e}", path.display())))
}

/// This process's own cgroup in each v1 hierarchy (in `v1_hierarchies`'s
/// order), read on first use, before it ever moves; `None` if one is not
/// found under its hierarchy's mount.
fn v1_home() -> Option<&'static [PathBuf]> {
    static HOME: std::sync::OnceLock<Option<Vec<PathBuf>>> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        v1_hierarchies().iter().map(|(mount, controllers)| own_dir(&own, mount, controllers)).collect()
    })
    .as_deref()
}

/// The directory under `mount` that `/proc/self/cgroup` (`own`) names for
/// the hierarchy of `controllers`.
fn own_dir(own: &str, mount: &Path, controllers: &[String]) -> Option<PathBuf> {
    let path = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, names, path) = (f.next()?, f.next()?, f.next()?);
        let names: Vec<&str> = names.split(',').collect();
        (names.len() == controllers.len() && controllers.iter().all(|c| names.contains(&c.as_str()))).then_some(path)
    })?;
    let dir = mount.join(path.trim_start_matches('/'));
    dir.join("tasks").is_file().then_some(dir)
}

/// The v1 hierarchies' mount points and their controllers, from mountinfo.
fn v1_hierarchies() -> &'static [(PathBuf, Vec<String>)] {
    static HIERARCHIES: std::sync::OnceLock<Vec<(PathBuf, Vec<String>)>> = std::sync::OnceLock::new();
    HIERARCHIES.get_or_init(|| parse_v1_mounts(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()))
}

fn parse_v1_mounts(mountinfo: &str) -> Vec<(PathBuf, Vec<String>)> {
    let mut out: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for line in mountinfo.lines() {
        // "... mount-point options [optional...] - fstype source super-options"
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let Some(point) = left.split_whitespace().nth(4) else { continue };
        let controllers: Vec<String> = r
            .nth(1)
            .unwrap_or_default()
            .split(',')
            .filter(|o| {
                !matches!(*o, "rw" | "ro" | "xattr" | "noprefix" | "clone_children" | "cpuset_v2_mode" | "none")
                    && !o.contains('=')
            })
            .map(str::to_string)
            .collect();
        if !controllers.is_empty() && !out.iter().any(|(p, _)| p == Path::new(point)) {
            out.push((PathBuf::from(point), controllers));
        }
    }
    out
}

/// How a container belongs to a v1 hierarchy. Every cgroup it has costs a
/// mkdir and an rmdir under the kernel's one cgroup mutex (which every
/// create and destroy on the host queue for) and kernel memory for as long
/// as it lives, so it has one of its own only where a limit or a metric needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Membership {
    /// A directory of its own: memory, cpu, cpuacct, pids and devices.
    Own,
    /// The directory of the daemon's containers (its own directory's parent),
    /// shared by all of them: cpuset, which no container limit sets but which
    /// runtimes such as the JVM look for to know they run in a container.
    Shared,
    /// Not joined and not shown (blkio, freezer, net_cls, perf_event, ...):
    /// nothing sets or reads them; the container stays where the daemon is.
    None,
}

fn membership(controllers: &[String]) -> Membership {
    const OWN: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "devices"];
    if controllers.iter().any(|c| OWN.contains(&c.as_str())) {
        Membership::Own
    } else if controllers.iter().any(|c| c == "cpuset") {
        Membership::Shared
    } else {
        Membership::None
    }
}

/// The v1 hierarchies a cgroup at `rel` joins: mount, controllers and its
/// directory there.
fn v1_joined(rel: &Path) -> impl Iterator<Item = (&'static Path, &'static [String], PathBuf)> + '_ {
    joined(v1_hierarchies(), rel)
}

fn joined<'h, 'r>(
    hierarchies: &'h [(PathBuf, Vec<String>)],
    rel: &'r Path,
) -> impl Iterator<Item = (&'h Path, &'h [String], PathBuf)> + use<'h, 'r> {
    hierarchies.iter().filter_map(move |(mount, controllers)| {
        let dir = match membership(controllers) {
            Membership::Own => mount.join(rel),
            Membership::Shared => mount.join(rel.parent().unwrap_or(rel)),
            Membership::None => return None,
        };
        Some((mount.as_path(), controllers.as_slice(), dir))
    })
}

fn v1_views<'a>(joined: impl Iterator<Item = (&'a Path, &'a [String], PathBuf)>) -> Vec<View> {
    let mut out = Vec::new();
    for (mount, controllers, source) in joined {
        let Some(name) = mount.file_name().and_then(|n| n.to_str()) else { continue };
        let links = controllers.iter().filter(|c| c.as_str() != name).cloned().collect::<Vec<_>>();
        let links = if controllers.len() > 1 { links } else { Vec::new() };
        out.push(View { name: name.to_string(), source, links });
    }
    out
}

/// A new v1 cpuset takes its cpus and memory nodes from its parent.
fn inherit_cpuset(dir: &Path) -> Result<(), RuntimeError> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let parent = dir.parent().map(|p| p.join(f)).unwrap_or_default();
        let value =
            std::fs::read_to_string(&parent).map_err(|e| RuntimeError::Cgroup(format!("{}: {e}", parent.display())))?;
        write(&dir.join(f), value.trim())?;
    }
    Ok(())
}

/// Writes one v1 controller's share of the spec's limits.
fn apply_v1(controller: &str, dir: &Path, r: &LinuxResources) -> Result<(), RuntimeError> {
    match controller {
        "memory" => {
            let memory = r.memory().as_ref();
            if let Some(limit) = memory.and_then(|m| m.limit()) {
                write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
            }
            // Without swap accounting (swapaccount=0) there is no swap to limit.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if let Some(swap) = memory.and_then(|m| m.swap()).filter(|_| memsw.exists()) {
                write(&memsw, &swap.to_string())?;
            }
        }
        "cpu" => {
            if let Some(shares) = r.cpu().as_ref().and_then(|c| c.shares()) {
                write(&dir.join("cpu.shares"), &shares.to_string())?;
            }
        }
        "pids" => {
            if let Some(p) = r.pids().as_ref().filter(|p| p.limit() > 0) {
                write(&dir.join("pids.max"), &p.limit().to_string())?;
            }
        }
        "devices" => {
            for d in r.devices().iter().flatten() {
                write(&dir.join(if d.allow() { "devices.allow" } else { "devices.deny" }), &d.to_string())?;
            }
            // Making nodes is allowed (CAP_MKNOD); using them is what the rules decide.
            for rule in ["c *:* m", "b *:* m"] {
                write(&dir.join("devices.allow"), rule)?;
            }
        }
        _ => {}
    }
    Ok(())
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
    fn flat_keyed_files_parse_and_skip_junk() {
        let m = flat_keyed("user 12\nsystem 3\nbroken\nbad x\n");
        assert_eq!(m.get("user"), Some(&12));
        assert_eq!(m.get("system"), Some(&3));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn own_cgroups_are_found_by_their_hierarchys_controllers() {
        let mount = std::env::temp_dir().join(format!("celld-own-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(mount.join("daemon/x")).unwrap();
        std::fs::write(mount.join("daemon/x/tasks"), "").unwrap();
        let own = "4:memory:/elsewhere\n2:cpuacct,cpu:/daemon/x\n1:cpu:/not-this\n";
        let cpu = ["cpu".to_string(), "cpuacct".to_string()];
        assert_eq!(own_dir(own, &mount, &cpu), Some(mount.join("daemon/x")));
        // Named in /proc/self/cgroup but not under the mount (another view).
        assert_eq!(own_dir(own, &mount, &["memory".to_string()]), None);
        assert_eq!(own_dir(own, &mount, &["pids".to_string()]), None);
        std::fs::remove_dir_all(&mount).unwrap();
    }

    #[test]
    fn v1_hierarchies_come_from_mountinfo() {
        let mi = "25 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw shared:2 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd";
        let h = parse_v1_mounts(mi);
        assert_eq!(
            h,
            vec![
                (PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"), vec!["cpu".to_string(), "cpuacct".to_string()]),
                (PathBuf::from("/sys/fs/cgroup/memory"), vec!["memory".to_string()]),
            ]
        );
    }

    #[test]
    fn v1_views_are_named_by_mount_point_and_joined_only_where_needed() {
        let h = vec![
            (PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"), vec!["cpu".to_string(), "cpuacct".to_string()]),
            (PathBuf::from("/sys/fs/cgroup/blkio"), vec!["blkio".to_string()]),
            (PathBuf::from("/sys/fs/cgroup/memory"), vec!["memory".to_string()]),
            (PathBuf::from("/sys/fs/cgroup/cpuset"), vec!["cpuset".to_string()]),
            (PathBuf::from("/sys/fs/cgroup/freezer"), vec!["freezer".to_string()]),
        ];
        let v = v1_views(joined(&h, Path::new("celld-1/h")));
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["cpu,cpuacct", "memory", "cpuset"]);
        assert_eq!(v[0].source, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/celld-1/h"));
        assert_eq!(v[0].links, vec!["cpu".to_string(), "cpuacct".to_string()]);
        assert!(v[1].links.is_empty());
        // cpuset: the daemon's directory, shared by its containers.
        assert_eq!(v[2].source, PathBuf::from("/sys/fs/cgroup/cpuset/celld-1"));
        // The shared skeleton is shaped from the root's views: the same names.
        let root: Vec<String> = v1_views(joined(&h, Path::new(""))).into_iter().map(|v| v.name).collect();
        assert_eq!(root, names);
    }

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
