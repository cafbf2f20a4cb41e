//! The UAA a local cell needs: one `admin` user, the password and refresh
//! grants of `POST /oauth/token` for the `cf` client, `GET /login` (the
//! prompts `cf login` asks), and `GET /oauth/authorize` for `cf ssh`'s
//! one-time codes. Tokens are JWTs signed with HMAC-SHA256 under a key kept in
//! the depot, so they survive a restart; every CF API request verifies its
//! token's signature, type and expiry.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::hmac;
use serde_json::{Value, json};

use super::error::CfError;
use celld_base::guid::new_guid;

pub const ADMIN: &str = "admin";
/// The admin user's guid: fixed, so events and roles name the same user after
/// a restart.
pub const ADMIN_GUID: &str = "f0e6b3a1-5c3d-4f5e-9a7b-2d1c0b9a8e7f";
/// UAA's default lifetimes for the `cf` client.
const ACCESS_TTL: i64 = 1200;
const REFRESH_TTL: i64 = 30 * 24 * 3600;
const SCOPES: &[&str] = &[
    "openid",
    "routing.router_groups.write",
    "scim.read",
    "cloud_controller.admin",
    "uaa.user",
    "routing.router_groups.read",
    "cloud_controller.read",
    "password.write",
    "cloud_controller.write",
    "network.admin",
    "doppler.firehose",
    "scim.write",
];

#[derive(Debug, thiserror::Error)]
pub enum UaaError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// A verified token's claims that requests use.
#[derive(Debug, Clone)]
pub struct Claims {
    pub user_name: String,
    pub user_id: String,
}

pub struct Uaa {
    key: hmac::Key,
    password: String,
    /// Where tokens say they come from (`iss`), the UAA's URL.
    issuer: String,
}

/// Reads `file`, or writes `make()` to it (mode 0600) once.
fn kept_secret(file: &Path, make: impl FnOnce() -> String) -> Result<String, UaaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| UaaError::Io { path: file.display().to_string(), source };
    match std::fs::read_to_string(file) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let value = make();
    let tmp = file.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut f, value.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, file).map_err(io)?;
    Ok(value)
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    // getrandom(2) only fails on a kernel without it.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    celld_base::guid::hex(&b)
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Uaa {
    /// The signing key and the admin password live in `dir`; a password given
    /// on the command line wins over the kept one (and is not written).
    pub fn open(dir: &Path, password: Option<&str>, issuer: String) -> Result<(Self, String), UaaError> {
        let key = kept_secret(&dir.join("token-key"), || random_hex(32))?;
        let password = match password {
            Some(p) if !p.is_empty() => p.to_string(),
            _ => kept_secret(&dir.join("admin-password"), || random_hex(10))?,
        };
        let uaa = Self { key: hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()), password: password.clone(), issuer };
        Ok((uaa, password))
    }

    fn sign(&self, claims: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"celld","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing = format!("{header}.{payload}");
        let sig = hmac::sign(&self.key, signing.as_bytes());
        format!("{signing}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// The claims of a token we signed that has not expired and is of `kind`
    /// ("access" or "refresh").
    fn verify(&self, token: &str, kind: &str) -> Option<Value> {
        let (signing, sig) = token.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        hmac::verify(&self.key, signing.as_bytes(), &sig).ok()?;
        let (_, payload) = signing.split_once('.')?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let exp = claims.get("exp")?.as_i64()?;
        let is_refresh = claims.get("celld_refresh").and_then(Value::as_bool).unwrap_or(false);
        (exp > now() && is_refresh == (kind == "refresh")).then_some(claims)
    }

    /// `Authorization: bearer TOKEN` of a CF API request.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Claims, CfError> {
        let h = header.ok_or(CfError::NotAuthenticated)?;
        let token = h
            .strip_prefix("bearer ")
            .or_else(|| h.strip_prefix("Bearer "))
            .or_else(|| h.strip_prefix("BEARER "))
            .ok_or(CfError::InvalidAuthToken)?;
        let c = self.verify(token.trim(), "access").ok_or(CfError::InvalidAuthToken)?;
        Ok(Claims {
            user_name: c["user_name"].as_str().unwrap_or_default().to_string(),
            user_id: c["user_id"].as_str().unwrap_or_default().to_string(),
        })
    }

    fn tokens(&self, client_id: &str, grant: &str) -> Value {
        let iat = now();
        let jti = new_guid().replace('-', "");
        let claims = |exp: i64, refresh: bool| {
            json!({
                "jti": if refresh { format!("{jti}-r") } else { jti.clone() },
                "sub": ADMIN_GUID, "scope": SCOPES, "client_id": client_id, "cid": client_id,
                "azp": client_id, "grant_type": grant, "user_id": ADMIN_GUID, "origin": "uaa",
                "user_name": ADMIN, "email": ADMIN, "auth_time": iat, "rev_sig": "celld",
                "iat": iat, "exp": exp, "iss": format!("{}/oauth/token", self.issuer), "zid": "uaa",
                "aud": ["cloud_controller", "scim", "password", "cf", "uaa", "openid", "doppler", "network", "routing.router_groups"],
                "celld_refresh": refresh,
            })
        };
        json!({
            "access_token": self.sign(&claims(iat + ACCESS_TTL, false)),
            "token_type": "bearer",
            "id_token": "",
            "refresh_token": self.sign(&claims(iat + REFRESH_TTL, true)),
            "expires_in": ACCESS_TTL - 1,
            "scope": SCOPES.join(" "),
            "jti": jti,
        })
    }

    /// `POST /oauth/token`: `form` is the urlencoded body, `basic` the client's
    /// Basic credentials. Answers UAA's JSON and status.
    pub fn token(&self, form: &[(String, String)], basic: Option<&str>) -> (u16, Value) {
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let unauthorized = |d: &str| (401, json!({"error": "unauthorized", "error_description": d}));
        let client = match client_of(basic).or_else(|| get("client_id").map(|c| (c.to_string(), String::new()))) {
            Some((id, secret)) if (id == "cf" || id == "ssh-proxy") && secret.is_empty() => id,
            _ => return unauthorized("Bad credentials"),
        };
        match get("grant_type") {
            Some("password") => {
                let user = get("username").unwrap_or_default();
                let pass = get("password").unwrap_or_default();
                // Compared as MACs, in constant time: the answer must not tell
                // how much of a guess was right.
                let want = hmac::sign(&self.key, self.password.as_bytes());
                let ok = user == ADMIN && hmac::verify(&self.key, pass.as_bytes(), want.as_ref()).is_ok();
                if !ok {
                    return unauthorized("Bad credentials");
                }
                (200, self.tokens(&client, "password"))
            }
            Some("refresh_token") => match get("refresh_token").and_then(|t| self.verify(t, "refresh")) {
                Some(_) => (200, self.tokens(&client, "refresh_token")),
                None => (
                    401,
                    json!({"error": "invalid_token", "error_description": "Invalid refresh token (expired or unknown)"}),
                ),
            },
            Some(g) => (
                400,
                json!({"error": "unsupported_grant_type", "error_description": format!("Unsupported grant type: {g}")}),
            ),
            None => (400, json!({"error": "invalid_request", "error_description": "A grant type is required"})),
        }
    }

    /// `GET /login`: what `cf login` prompts for.
    pub fn login_info(&self) -> Value {
        json!({
            "app": {"version": "77.0.0"},
            "showLinks": false,
            "links": {"uaa": self.issuer, "passwd": "/forgot_password", "login": self.issuer, "register": "/create_account"},
            "zone_name": "uaa",
            "entityID": "celld",
            "commit_id": "celld",
            "idpDefinitions": {},
            "prompts": {"username": ["text", "Email"], "password": ["password", "Password"]},
            "timestamp": "2026-01-01T00:00:00+0000",
        })
    }
}

/// `Basic base64(id:secret)` → (id, secret).
fn client_of(basic: Option<&str>) -> Option<(String, String)> {
    let b = basic?.strip_prefix("Basic ").or_else(|| basic?.strip_prefix("basic "))?;
    let raw = String::from_utf8(STANDARD.decode(b.trim()).ok()?).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let dec = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((dec(id)?, dec(secret)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uaa() -> Uaa {
        Uaa { key: hmac::Key::new(hmac::HMAC_SHA256, b"k"), password: "pw".into(), issuer: "http://x".into() }
    }

    fn form(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const CF: Option<&str> = Some("Basic Y2Y6");

    #[test]
    fn password_grant_then_refresh() {
        let u = uaa();
        let (s, t) = u.token(&form(&[("grant_type", "password"), ("username", "admin"), ("password", "pw")]), CF);
        assert_eq!(s, 200);
        let access = t["access_token"].as_str().unwrap();
        let c = u.authenticate(Some(&format!("bearer {access}"))).unwrap();
        assert_eq!(c.user_name, "admin");
        // A refresh token is no access token, and the reverse.
        let refresh = t["refresh_token"].as_str().unwrap();
        assert!(u.authenticate(Some(&format!("bearer {refresh}"))).is_err());
        let (s, _) = u.token(&form(&[("grant_type", "refresh_token"), ("refresh_token", access)]), CF);
        assert_eq!(s, 401);
        let (s, t2) = u.token(&form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)]), CF);
        assert_eq!(s, 200);
        assert!(t2["access_token"].is_string());
    }

    #[test]
    fn bad_password_client_and_forged_tokens_are_refused() {
        let u = uaa();
        let (s, b) = u.token(&form(&[("grant_type", "password"), ("username", "admin"), ("password", "x")]), CF);
        assert_eq!((s, b["error"].as_str()), (401, Some("unauthorized")));
        let (s, _) = u
            .token(&form(&[("grant_type", "password"), ("username", "admin"), ("password", "pw")]), Some("Basic eDp5"));
        assert_eq!(s, 401);
        let (_, t) = u.token(&form(&[("grant_type", "password"), ("username", "admin"), ("password", "pw")]), CF);
        let access = t["access_token"].as_str().unwrap();
        let other = Uaa { key: hmac::Key::new(hmac::HMAC_SHA256, b"other"), ..uaa() };
        assert!(matches!(other.authenticate(Some(&format!("bearer {access}"))), Err(CfError::InvalidAuthToken)));
        assert!(matches!(u.authenticate(None), Err(CfError::NotAuthenticated)));
        assert!(matches!(u.authenticate(Some("bearer a.b.c")), Err(CfError::InvalidAuthToken)));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let u = uaa();
        let t = u.sign(&json!({"exp": now() - 1, "user_name": "admin", "celld_refresh": false}));
        assert!(matches!(u.authenticate(Some(&format!("bearer {t}"))), Err(CfError::InvalidAuthToken)));
    }
}
