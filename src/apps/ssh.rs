//! `cf ssh` on the app layer's side: one-time codes (what UAA's ssh-proxy
//! client gives `cf ssh-code`), the space and app switches, a key pair per
//! started process (what CC puts on the DesiredLRP), and the [`Authority`]
//! the ssh proxy asks who may reach which instance (CC's `ssh_access`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::AppsError;
use super::layer::AppLayer;
use super::store::{AppRecord, WEB};
use crate::executor::logs::cell_line;
use celld_proto as pb;
use celld_sshproxy::{self as sshproxy, Authority, Login, ProxyError, Target};

/// The container port of every instance's sshd (Diego's).
pub const SSHD_PORT: u32 = 2222;
/// How long a code from `ssh-code` stays good (UAA's code lifetime).
const CODE_TTL: Duration = Duration::from_secs(300);
const CODE_LEN: usize = 20;
/// Log source of the proxy's lines in an app's logs, as Diego's proxy tags them.
const SSH_SOURCE: &str = "SSH";

fn random_code() -> Result<String, AppsError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut code = String::with_capacity(CODE_LEN);
    while code.len() < CODE_LEN {
        let mut b = [0u8; 32];
        // SAFETY: the pointer and length describe `b`, which outlives the call.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n < 0 {
            return Err(AppsError::FailedPrecondition(format!(
                "no randomness for a code: {}",
                std::io::Error::last_os_error()
            )));
        }
        // Rejection sampling keeps every character equally likely (62 * 4 = 248).
        for &x in b.iter().take(usize::try_from(n).unwrap_or(0)) {
            if x < 248 && code.len() < CODE_LEN {
                code.push(char::from(ALPHABET[usize::from(x % 62)]));
            }
        }
    }
    Ok(code)
}

/// Compares without leaking where they differ through timing.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AppLayer {
    /// Called once the proxy listens, so `GetSshInfo` can name it.
    pub fn set_ssh_proxy(&self, endpoint: String, host_key_fingerprint: String) {
        let _ = self.ssh.info.set(pb::SshInfo { endpoint, host_key_fingerprint });
    }

    pub fn ssh_info(&self) -> pb::SshInfo {
        self.ssh.info.get().cloned().unwrap_or_default()
    }

    /// A new one-time code: good for one login within five minutes.
    pub fn ssh_code(&self) -> Result<String, AppsError> {
        let code = random_code()?;
        let now = Instant::now();
        let mut codes = self.ssh.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, issued| now.duration_since(*issued) < CODE_TTL);
        codes.insert(code.clone(), now);
        Ok(code)
    }

    /// Spends a code: true once for a code issued less than five minutes ago.
    fn take_code(&self, code: &str) -> bool {
        let mut codes = self.ssh.codes.lock().unwrap_or_else(|p| p.into_inner());
        match codes.remove(code) {
            Some(issued) => issued.elapsed() < CODE_TTL,
            None => false,
        }
    }

    pub fn set_space_ssh(&self, space: &str, allow: bool) -> Result<pb::SpaceSsh, AppsError> {
        let space = self.space(space)?.to_string();
        self.store.set_space_ssh(&space, allow)?;
        Ok(pb::SpaceSsh { space, allow_ssh: allow })
    }

    pub fn space_ssh(&self, space: &str) -> Result<pb::SpaceSsh, AppsError> {
        let space = self.space(space)?.to_string();
        let allow_ssh = self.store.space_allows_ssh(&space)?;
        Ok(pb::SpaceSsh { space, allow_ssh })
    }

    /// The sshd settings of a process about to be desired: a fresh host key
    /// and login key for each process (CC makes one per LRP), or none when
    /// ssh is off for the app or its space.
    pub(super) fn ssh_settings(&self, app: &AppRecord) -> Result<Option<pb::SshSettings>, AppsError> {
        if !app.enable_ssh || !self.store.space_allows_ssh(&app.space)? {
            return Ok(None);
        }
        let keygen = |e: ProxyError| AppsError::FailedPrecondition(e.to_string());
        let host = sshproxy::generate_key().map_err(keygen)?;
        let login = sshproxy::generate_key().map_err(keygen)?;
        Ok(Some(pb::SshSettings {
            enabled: true,
            host_key_pem: sshproxy::key_pem(&host).map_err(keygen)?,
            authorized_key: sshproxy::authorized_key(&login).map_err(keygen)?,
            host_fingerprint: sshproxy::fingerprint(host.public_key()),
            private_key_pem: sshproxy::key_pem(&login).map_err(keygen)?,
        }))
    }

    fn ssh_event(&self, app: &AppRecord, authorized: bool, index: u32) {
        let kind = if authorized { "audit.app.ssh-authorized" } else { "audit.app.ssh-unauthorized" };
        self.event(app, kind, BTreeMap::from([("index".to_string(), index.to_string())]));
    }

    /// The running instance `index` of a process and its sshd.
    async fn ssh_target(&self, process_guid: &str, index: u32) -> Result<Target, ProxyError> {
        let refuse = |m: String| ProxyError::Refused(m);
        let idx = i32::try_from(index).map_err(|_| refuse(format!("no instance {index}")))?;
        let actuals = self
            .sched()
            .actual_lr_ps(pb::ActualLrPsRequest {
                process_guid: process_guid.into(),
                index: Some(idx),
                ..Default::default()
            })
            .await
            .map_err(|s| refuse(format!("the scheduler: {}", s.message())))?
            .into_inner()
            .actual_lrps;
        let running: Vec<_> = actuals
            .into_iter()
            .filter(|a| a.index == idx && a.state() == pb::actual_lrp::State::Running)
            .filter(|a| a.presence() == pb::actual_lrp::Presence::Ordinary)
            .collect();
        let [actual] = running.as_slice() else {
            return Err(refuse(format!("process {process_guid} has no running instance {index}")));
        };
        let desired = self
            .sched()
            .get_desired_lrp(pb::DesiredLrpRequest { process_guid: process_guid.into() })
            .await
            .map_err(|s| refuse(format!("the scheduler: {}", s.message())))?
            .into_inner();
        let ssh = desired.ssh.filter(|s| s.enabled).ok_or_else(|| {
            refuse(format!("process {process_guid} was started without ssh: restart the app after enabling ssh"))
        })?;
        let ip: std::net::IpAddr = actual
            .instance_address
            .parse()
            .map_err(|_| refuse(format!("instance {index} has no container address yet")))?;
        Ok(Target {
            process_guid: process_guid.to_string(),
            index,
            log_guid: desired.log_guid,
            addr: SocketAddr::new(ip, u16::try_from(SSHD_PORT).unwrap_or(2222)),
            host_fingerprint: ssh.host_fingerprint,
            private_key_pem: ssh.private_key_pem,
        })
    }

    async fn authorize_cf(&self, app: &str, index: u32, code: &str) -> Result<Target, ProxyError> {
        let refuse = |m: String| ProxyError::Refused(m);
        // `cf:GUID/INDEX`: GUID is CC's process guid, the app's own for web
        // and the type's for another process type (`cf ssh --process`).
        let found = match self.store.app(app) {
            Ok(Some(a)) => Some((a, WEB.to_string())),
            Ok(None) => self.store.apps(None).ok().and_then(|apps| {
                apps.into_iter().find_map(|a| {
                    let t = a.all_processes().into_iter().find(|(_, p)| p.guid == app).map(|(t, _)| t)?;
                    Some((a, t))
                })
            }),
            Err(e) => return Err(refuse(e.to_string())),
        };
        let found = match found {
            Some(f) => Some(f),
            None => self.store.app_by_name(&self.cfg.default_space, app).ok().flatten().map(|a| (a, WEB.to_string())),
        };
        // The code is spent whatever happens next, as UAA's is.
        let code_ok = self.take_code(code);
        let Some((record, ptype)) = found else {
            return Err(refuse(format!("unknown app '{app}'")));
        };
        let process = record.process(&ptype).unwrap_or_else(|| record.web());
        let denied = |reason: String| {
            self.ssh_event(&record, false, index);
            refuse(reason)
        };
        if !code_ok {
            return Err(denied(
                "the one-time code is wrong, used or expired: get a new one with `cellctl ssh-code`".into(),
            ));
        }
        if !record.enable_ssh {
            return Err(denied(format!("ssh is disabled for app '{}'", record.name)));
        }
        if !self.store.space_allows_ssh(&record.space).unwrap_or(false) {
            return Err(denied(format!("ssh is disabled in space '{}'", record.space)));
        }
        if record.state != "STARTED" || process.process_guid.is_empty() {
            return Err(denied(format!("app '{}' ({ptype}) is not started", record.name)));
        }
        if index >= process.instances {
            return Err(denied(format!("app '{}' has no {ptype} instance {index}", record.name)));
        }
        match self.ssh_target(&process.process_guid, index).await {
            Ok(t) => {
                self.ssh_event(&record, true, index);
                Ok(t)
            }
            Err(e) => Err(denied(e.to_string())),
        }
    }
}

/// The app layer decides for the proxy: `cf:` logins against its apps and
/// codes, `diego:` logins against the operator's credentials.
pub struct SshAuthority {
    pub apps: std::sync::Arc<AppLayer>,
    /// `diego:` logins' password; `None` refuses them all.
    pub diego_credentials: Option<String>,
}

#[async_trait::async_trait]
impl Authority for SshAuthority {
    async fn authorize(&self, login: &Login, password: &str, _remote: SocketAddr) -> Result<Target, ProxyError> {
        match login {
            Login::Cf { app, index } => self.apps.authorize_cf(app, *index, password).await,
            Login::Diego { process_guid, index } => match &self.diego_credentials {
                Some(c) if same_secret(c, password) => self.apps.ssh_target(process_guid, *index).await,
                Some(_) => Err(ProxyError::Refused("wrong diego credentials".into())),
                None => Err(ProxyError::Refused("diego logins are off: no --ssh-diego-credentials".into())),
            },
        }
    }

    fn session_started(&self, t: &Target, remote: SocketAddr) {
        if !t.log_guid.is_empty() {
            let index = i32::try_from(t.index).unwrap_or(i32::MAX);
            cell_line(
                &self.apps.logs,
                &t.log_guid,
                SSH_SOURCE,
                index,
                &format!("Successful remote access by {remote}"),
            );
        }
    }

    fn session_ended(&self, t: &Target, remote: SocketAddr) {
        if !t.log_guid.is_empty() {
            let index = i32::try_from(t.index).unwrap_or(i32::MAX);
            cell_line(&self.apps.logs, &t.log_guid, SSH_SOURCE, index, &format!("Remote access ended for {remote}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_long_random_and_alphanumeric() {
        let a = random_code().unwrap();
        let b = random_code().unwrap();
        assert_eq!(a.len(), CODE_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn secrets_compare() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "x"));
    }
}
