//! An app's environment with its secrets masked. Cloud Controller hides the
//! system environment (VCAP_SERVICES) and the user's variables as a whole from
//! anyone who may not read secrets, with `[PRIVATE DATA HIDDEN]`. The
//! dashboard has no login, so it shows the shape (service names, variable
//! names, credential keys) and masks, with the same marker, every credential
//! value, DATABASE_URL, and the value of every user variable whose name looks
//! secret.

use serde_json::{Value, json};

use celld_proto as pb;

pub const HIDDEN: &str = "[PRIVATE DATA HIDDEN]";

/// Words that make a variable's name look secret (matched in its upper case).
const SECRET_WORDS: &[&str] =
    &["PASSWORD", "PASSWD", "PASS", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "AUTH", "PRIVATE", "CERT", "SALT"];

pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| upper.contains(w))
}

/// Every leaf of `v` becomes the marker; the keys stay.
fn hide_leaves(v: &mut Value) {
    match v {
        Value::Object(m) => m.values_mut().for_each(hide_leaves),
        Value::Array(a) => a.iter_mut().for_each(hide_leaves),
        Value::Null => {}
        leaf => *leaf = json!(HIDDEN),
    }
}

/// VCAP_SERVICES with every service's `credentials` masked.
fn mask_services(raw: &str) -> Value {
    let Ok(mut v) = serde_json::from_str::<Value>(raw) else { return json!(HIDDEN) };
    if let Value::Object(by_label) = &mut v {
        for list in by_label.values_mut() {
            if let Value::Array(services) = list {
                for s in services {
                    if let Some(c) = s.get_mut("credentials") {
                        hide_leaves(c);
                    }
                }
            }
        }
    }
    v
}

pub fn masked(env: &pb::AppEnv) -> Value {
    let user: serde_json::Map<String, Value> =
        env.user.iter().map(|(k, v)| (k.clone(), json!(if looks_secret(k) { HIDDEN } else { v.as_str() }))).collect();
    let mut system = serde_json::Map::new();
    system.insert("VCAP_SERVICES".into(), mask_services(&env.vcap_services));
    if !env.database_url.is_empty() {
        system.insert("DATABASE_URL".into(), json!(HIDDEN));
    }
    let application = serde_json::from_str::<Value>(&env.vcap_application).unwrap_or(Value::Null);
    json!({
        "environment_variables": user,
        "system_env_json": system,
        "application_env_json": { "VCAP_APPLICATION": application },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_secret_looking_values_are_hidden() {
        let env = pb::AppEnv {
            user: [("GREETING", "hi"), ("DB_PASSWORD", "hunter2"), ("api_token", "t0k")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            vcap_services: json!({"user-provided": [{"name": "db", "credentials": {"uri": "postgres://u:p@h/d", "nested": {"p": 1}}}]})
                .to_string(),
            vcap_application: json!({"application_name": "hello"}).to_string(),
            database_url: "postgres://u:p@h/d".into(),
        };
        let m = masked(&env);
        let text = m.to_string();
        for secret in ["hunter2", "t0k", "u:p@h"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(m["environment_variables"]["GREETING"], "hi");
        assert_eq!(m["environment_variables"]["DB_PASSWORD"], HIDDEN);
        let svc = &m["system_env_json"]["VCAP_SERVICES"]["user-provided"][0];
        assert_eq!(svc["name"], "db");
        assert_eq!(svc["credentials"]["nested"]["p"], HIDDEN);
        assert_eq!(m["system_env_json"]["DATABASE_URL"], HIDDEN);
        assert_eq!(m["application_env_json"]["VCAP_APPLICATION"]["application_name"], "hello");
    }

    #[test]
    fn unreadable_services_are_hidden_whole() {
        assert_eq!(mask_services("not json"), json!(HIDDEN));
        assert!(looks_secret("aws_secret_access_key"));
        assert!(!looks_secret("GREETING"));
    }
}
