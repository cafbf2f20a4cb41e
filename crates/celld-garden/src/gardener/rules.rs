//! What a Garden container or process spec may hold, checked before anything
//! is made (handles, environment entries, sizes), and what a process spec
//! becomes for init (Garden's default environment, rlimits).

use garden_api::types::*;

use super::error::GardenError;

pub const DEFAULT_PATH: &str = "PATH=/usr/local/bin:/usr/bin:/bin";
pub const DEFAULT_ROOT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Handles name directories and cgroups: no slashes, no dot names, no control
/// characters, and short enough for a file name.
pub fn validate_handle(h: &str) -> Result<(), GardenError> {
    if h.len() > 200 || h == "." || h == ".." || h.starts_with('.') || h.chars().any(|c| c == '/' || c.is_control()) {
        return Err(GardenError::BadRequest(format!(
            "invalid handle {h:?}: at most 200 bytes, no '/', no control characters, not starting with '.'"
        )));
    }
    Ok(())
}

/// Linux's limit on one argument or environment string (32 pages).
const MAX_ARG_STRLEN: usize = 128 * 1024;
/// Arguments and environment of one process, together: below what init's
/// protocol carries in one request (1 MiB) and what execve takes (2 MiB).
const MAX_PROCESS_STRINGS: usize = 768 * 1024;

/// The start of a long string, for an error message.
fn excerpt(s: &str) -> String {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() { format!("{:?}…", &s[..end]) } else { format!("{s:?}") }
}

/// Environment entries are `NAME=VALUE` with a non-empty name and no NUL.
pub fn validate_env(what: &str, env: &[String]) -> Result<(), GardenError> {
    for e in env {
        let bad = |why: &str| GardenError::BadRequest(format!("{what} environment entry {}: {why}", excerpt(e)));
        if e.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        if e.split_once('=').is_none_or(|(name, _)| name.is_empty()) {
            return Err(bad("is not NAME=VALUE"));
        }
        if e.len() > MAX_ARG_STRLEN {
            return Err(bad(&format!("is {} bytes; Linux allows at most {MAX_ARG_STRLEN} per variable", e.len())));
        }
    }
    Ok(())
}

/// What Garden would accept but the kernel or init would refuse later:
/// checked before anything of a process is made.
pub(super) fn validate_process(container_env: &[String], spec: &ProcessSpec) -> Result<(), GardenError> {
    if spec.path.is_empty() {
        return Err(GardenError::BadRequest("process spec has no path".into()));
    }
    // Only a pea (a process with its own image) gets a mount namespace of its own.
    if !spec.bind_mounts.is_empty() && spec.image.uri.is_empty() {
        return Err(GardenError::BadRequest(
            "a process with bind mounts needs its own image (Image): bind mounts are only for peas; \
             put them on the container's spec instead"
                .into(),
        ));
    }
    for (field, v) in [("path", &spec.path), ("dir", &spec.dir), ("user", &spec.user)] {
        if v.contains('\0') {
            return Err(GardenError::BadRequest(format!("process {field} {} contains a NUL byte", excerpt(v))));
        }
    }
    for a in &spec.args {
        if a.contains('\0') {
            return Err(GardenError::BadRequest(format!("process argument {} contains a NUL byte", excerpt(a))));
        }
        if a.len() > MAX_ARG_STRLEN {
            return Err(GardenError::BadRequest(format!(
                "process argument {} is {} bytes; Linux allows at most {MAX_ARG_STRLEN} per argument",
                excerpt(a),
                a.len()
            )));
        }
    }
    validate_env("process", &spec.env)?;
    let total: usize = container_env.iter().chain(&spec.env).chain(&spec.args).map(|s| s.len() + 1).sum();
    if total > MAX_PROCESS_STRINGS {
        return Err(GardenError::BadRequest(format!(
            "the process's arguments and environment (the container's included) are {total} bytes; \
             at most {MAX_PROCESS_STRINGS} are accepted: pass large data as a file (stream it in) instead"
        )));
    }
    Ok(())
}

/// Everything in a container spec that could otherwise fail half-way through
/// a create: checked before anything is made.
pub(super) fn validate_container(spec: &ContainerSpec) -> Result<(), GardenError> {
    validate_handle(&spec.handle)?;
    validate_env("container", &spec.env)?;
    let total: usize = spec.env.iter().map(|s| s.len() + 1).sum();
    if total > MAX_PROCESS_STRINGS {
        return Err(GardenError::BadRequest(format!(
            "the container's environment is {total} bytes; at most {MAX_PROCESS_STRINGS} are accepted \
             (every process gets it): pass large data as a file (stream it in) instead"
        )));
    }
    for (k, v) in &spec.properties {
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(GardenError::BadRequest(format!(
                "property {}: names must be non-empty and names and values free of NUL bytes",
                excerpt(k)
            )));
        }
    }
    Ok(())
}

pub(super) fn rlimit_pairs(r: &ResourceLimits) -> Vec<(i32, u64)> {
    let pairs: [(libc::__rlimit_resource_t, Option<u64>); 15] = [
        (libc::RLIMIT_AS, r.r#as),
        (libc::RLIMIT_CORE, r.core),
        (libc::RLIMIT_CPU, r.cpu),
        (libc::RLIMIT_DATA, r.data),
        (libc::RLIMIT_FSIZE, r.fsize),
        (libc::RLIMIT_LOCKS, r.locks),
        (libc::RLIMIT_MEMLOCK, r.memlock),
        (libc::RLIMIT_MSGQUEUE, r.msgqueue),
        (libc::RLIMIT_NICE, r.nice),
        (libc::RLIMIT_NOFILE, r.nofile),
        (libc::RLIMIT_NPROC, r.nproc),
        (libc::RLIMIT_RSS, r.rss),
        (libc::RLIMIT_RTPRIO, r.rtprio),
        (libc::RLIMIT_SIGPENDING, r.sigpending),
        (libc::RLIMIT_STACK, r.stack),
    ];
    pairs.into_iter().filter_map(|(res, v)| v.map(|v| (res as i32, v))).collect()
}

/// Garden's process environment: the container's, then the process's, with a
/// default PATH (root's if the user is root) and USER when they are missing.
pub fn process_env(container_env: &[String], spec: &ProcessSpec) -> Vec<String> {
    let mut env: Vec<String> = container_env.iter().chain(spec.env.iter()).cloned().collect();
    let is_root = spec.user.is_empty() || spec.user == "root" || spec.user == "0" || spec.user.starts_with("0:");
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(if is_root { DEFAULT_ROOT_PATH } else { DEFAULT_PATH }.to_string());
    }
    if !env.iter().any(|e| e.starts_with("USER=")) {
        env.push(format!("USER={}", if spec.user.is_empty() { "root" } else { &spec.user }));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_mounts_without_an_image_are_refused() {
        let mut spec = ProcessSpec { path: "/bin/true".into(), ..ProcessSpec::default() };
        spec.bind_mounts.push(BindMount { src_path: "/tmp".into(), dst_path: "/mnt".into(), ..BindMount::default() });
        let e = validate_process(&[], &spec).unwrap_err();
        assert!(e.to_string().contains("only for peas"), "{e}");
        spec.image.uri = "preloaded:tiny".into();
        assert!(validate_process(&[], &spec).is_ok());
    }

    #[test]
    fn handles_are_validated() {
        assert!(validate_handle("app-1_guid.x").is_ok());
        for bad in ["../x", "a/b", ".hidden", "tab\there", &"x".repeat(201)] {
            assert!(validate_handle(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_environments_are_refused_before_anything_is_made() {
        for bad in ["NOEQUALS", "=value", "A=b\0c"] {
            let e = validate_env("container", &[bad.to_string()]).unwrap_err().to_string();
            assert!(e.starts_with("container environment entry"), "{e}");
        }
        assert!(validate_env("process", &["A=".into(), "B=c=d".into()]).is_ok());
        let huge = format!("BIG={}", "x".repeat(200 * 1024));
        assert!(validate_env("process", &[huge]).unwrap_err().to_string().contains("at most 131072"));
        let many: Vec<String> = (0..40).map(|i| format!("V{i}={}", "x".repeat(100 * 1024))).collect();
        let spec = ProcessSpec { path: "sh".into(), env: many, ..Default::default() };
        assert!(validate_process(&[], &spec).unwrap_err().to_string().contains("stream it in"));
        let nul = ProcessSpec { path: "sh".into(), args: vec!["a\0b".into()], ..Default::default() };
        assert!(validate_process(&[], &nul).unwrap_err().to_string().contains("NUL"));
        let wide = ContainerSpec { handle: "\u{20ac}".repeat(60), ..Default::default() };
        assert!(validate_container(&wide).is_ok());
        let too_wide = ContainerSpec { handle: "\u{20ac}".repeat(67), ..Default::default() };
        assert!(validate_container(&too_wide).is_err());
    }

    #[test]
    fn env_defaults_follow_garden() {
        let spec = ProcessSpec { user: "vcap".into(), env: vec!["A=1".into()], ..Default::default() };
        let env = process_env(&["C=2".into()], &spec);
        assert_eq!(env, vec!["C=2", "A=1", DEFAULT_PATH, "USER=vcap"]);
        let root = process_env(&[], &ProcessSpec::default());
        assert_eq!(root, vec![DEFAULT_ROOT_PATH, "USER=root"]);
        let custom =
            process_env(&[], &ProcessSpec { env: vec!["PATH=/x".into(), "USER=me".into()], ..Default::default() });
        assert_eq!(custom, vec!["PATH=/x", "USER=me"]);
    }

    #[test]
    fn rlimits_map_to_resources() {
        let r = ResourceLimits { nofile: Some(1024), nproc: Some(7), ..Default::default() };
        let pairs = rlimit_pairs(&r);
        assert!(pairs.contains(&(libc::RLIMIT_NOFILE as i32, 1024)));
        assert!(pairs.contains(&(libc::RLIMIT_NPROC as i32, 7)));
        assert_eq!(pairs.len(), 2);
    }
}
