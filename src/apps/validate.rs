//! The rules for names people type: spaces, apps, route hosts (and the
//! default host `cf push` makes of an app name) and environment variable
//! names. Plain functions, so tests and the fuzzer call them directly.

use super::AppsError;

pub fn validate_space(s: &str) -> Result<(), AppsError> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(AppsError::InvalidArgument(format!(
            "space name {s:?} is not valid: use 1-64 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

pub fn validate_app_name(n: &str) -> Result<(), AppsError> {
    if n.is_empty() || n.len() > 255 || n.chars().any(|c| c.is_control() || c == '/') || n.trim() != n {
        return Err(AppsError::InvalidArgument(format!(
            "app name {n:?} is not valid: use 1-255 printable characters, no '/' and no leading or trailing spaces"
        )));
    }
    Ok(())
}

/// The default route's host: the app name, lowercased, with anything a DNS
/// label can't hold turned into '-' (as cf push does).
pub fn host_label(name: &str) -> Result<String, AppsError> {
    let mut s: String =
        name.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        return Err(AppsError::InvalidArgument(format!(
            "app name {name:?} makes no valid host name: pass --hostname or --no-route"
        )));
    }
    Ok(s.chars().take(63).collect::<String>().trim_end_matches('-').to_string())
}

pub fn validate_host_label(h: &str) -> Result<(), AppsError> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if !ok {
        return Err(AppsError::InvalidArgument(format!(
            "host {h:?} is not valid: use 1-63 letters, digits or '-', not starting or ending with '-'"
        )));
    }
    Ok(())
}

pub fn validate_env_name(name: &str) -> Result<(), AppsError> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(AppsError::InvalidArgument(format!("environment variable name {name:?} is not valid")));
    }
    if name.starts_with("VCAP_") || name.starts_with("CF_INSTANCE_") || name == "PORT" {
        return Err(AppsError::InvalidArgument(format!(
            "environment variable {name} is set by the platform: names starting with VCAP_ or CF_INSTANCE_, and PORT, cannot be set"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_labels_follow_cf_push() {
        assert_eq!(host_label("hello").unwrap(), "hello");
        assert_eq!(host_label("My App_2").unwrap(), "my-app-2");
        assert_eq!(host_label("--x--").unwrap(), "x");
        assert!(host_label("___").is_err());
        assert_eq!(host_label(&"a".repeat(80)).unwrap().len(), 63);
        assert!(validate_host_label("ok-1").is_ok());
        assert!(validate_host_label("-bad").is_err());
        assert!(validate_host_label("Bad").is_err());
        assert!(validate_host_label("a.b").is_err());
    }

    #[test]
    fn names_and_env() {
        assert!(validate_app_name("hello world").is_ok());
        assert!(validate_app_name("").is_err());
        assert!(validate_app_name("a/b").is_err());
        assert!(validate_app_name(" x").is_err());
        assert!(validate_space("dev").is_ok());
        assert!(validate_space("my space").is_err());
        assert!(validate_env_name("GREETING").is_ok());
        assert!(validate_env_name("VCAP_SERVICES").is_err());
        assert!(validate_env_name("PORT").is_err());
        assert!(validate_env_name("A=B").is_err());
    }
}
