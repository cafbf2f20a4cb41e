//! What an action (a POST that changes an app) must show, besides the
//! daemon's `--dashboard-actions`: the page's token in `X-Dashboard-Token`
//! (another site cannot read the page to learn it), and, when the browser
//! says where the request comes from, that it is this very origin
//! (`Sec-Fetch-Site: same-origin`, an `Origin` naming the Host asked for).

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};

use super::DashboardError;

pub const TOKEN_HEADER: &str = "x-dashboard-token";

/// 32 random bytes as hex.
pub fn new_token() -> Result<String, DashboardError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| DashboardError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Equal without telling, by its time, how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header(h: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub fn check(h: &HeaderMap, actions: bool, token: &str) -> Result<(), DashboardError> {
    if !actions {
        return Err(DashboardError::Forbidden(
            "the dashboard is read-only: start celld with --dashboard-actions to start, stop, restart or scale apps from it"
                .into(),
        ));
    }
    if let Some(site) = header(h, "sec-fetch-site") {
        if site != "same-origin" {
            return Err(DashboardError::Forbidden(format!(
                "cross-site request refused (Sec-Fetch-Site: {site}): actions come only from the dashboard's own page"
            )));
        }
    }
    if let Some(origin) = header(h, ORIGIN) {
        let host = header(h, HOST).unwrap_or("");
        let expected = [format!("http://{host}"), format!("https://{host}")];
        if host.is_empty() || !expected.iter().any(|e| e.eq_ignore_ascii_case(origin)) {
            return Err(DashboardError::Forbidden(format!(
                "cross-origin request refused (Origin: {origin}, Host: {host}): actions come only from the dashboard's own page"
            )));
        }
    }
    match header(h, TOKEN_HEADER) {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(DashboardError::Forbidden(
            "wrong X-Dashboard-Token: reload the dashboard (the token changes when celld restarts)".into(),
        )),
        None => Err(DashboardError::Forbidden(
            "missing X-Dashboard-Token: actions need the token embedded in the dashboard's page".into(),
        )),
    }
}

/// Whether a request's Host may be answered: an IP address, `localhost` or a
/// name under it, or the dashboard's own system host. Any other name could be
/// a site of someone else's that now resolves to this address (DNS
/// rebinding), reading the dashboard as its own origin.
pub fn host_allowed(host: &str, system_host: Option<&str>) -> bool {
    let name = celld_router::normalize_host(host);
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    !name.is_empty()
        && (bare.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || system_host.is_some_and(|s| celld_router::normalize_host(s) == name))
}

pub fn check_host(h: &HeaderMap, system_host: Option<&str>) -> Result<(), DashboardError> {
    let host = header(h, HOST).unwrap_or("");
    if host_allowed(host, system_host) {
        return Ok(());
    }
    Err(DashboardError::Forbidden(format!(
        "the dashboard answers only by IP address, localhost or its own host name, not {host:?}: open it as http://<address of the cell>:<port>/"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn actions_need_the_flag_the_token_and_the_same_origin() {
        let ok = headers(&[
            ("host", "celld.apps.localhost:8080"),
            (TOKEN_HEADER, "t"),
            ("origin", "http://celld.apps.localhost:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(check(&ok, true, "t").is_ok());
        assert!(check(&ok, false, "t").is_err_and(|e| e.to_string().contains("--dashboard-actions")));
        assert!(check(&ok, true, "u").is_err_and(|e| e.to_string().contains("wrong X-Dashboard-Token")));
        let curl = headers(&[("host", "127.0.0.1:1"), (TOKEN_HEADER, "t")]);
        assert!(check(&curl, true, "t").is_ok());
        let no_token = headers(&[("host", "127.0.0.1:1")]);
        assert!(check(&no_token, true, "t").is_err_and(|e| e.to_string().contains("missing X-Dashboard-Token")));
        let foreign = headers(&[("host", "127.0.0.1:1"), (TOKEN_HEADER, "t"), ("origin", "http://evil.example")]);
        assert!(check(&foreign, true, "t").is_err_and(|e| e.to_string().contains("cross-origin")));
        let cross = headers(&[("host", "127.0.0.1:1"), (TOKEN_HEADER, "t"), ("sec-fetch-site", "cross-site")]);
        assert!(check(&cross, true, "t").is_err_and(|e| e.to_string().contains("cross-site")));
    }

    #[test]
    fn only_addresses_localhost_and_the_system_host_are_answered() {
        for ok in ["127.0.0.1:8081", "[::1]:8081", "10.0.0.5", "localhost:1", "celld.apps.localhost:8080"] {
            assert!(host_allowed(ok, None), "{ok}");
        }
        assert!(host_allowed("Celld.Example.COM:80", Some("celld.example.com")));
        for bad in ["evil.example", "evil.example:8081", "", "127.0.0.1.evil.example"] {
            assert!(!host_allowed(bad, Some("celld.example.com")), "{bad}");
        }
        assert!(
            check_host(&headers(&[("host", "rebind.example:8081")]), None)
                .is_err_and(|e| e.to_string().contains("IP address"))
        );
    }

    #[test]
    fn tokens_are_long_and_new_each_time() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
