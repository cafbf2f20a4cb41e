//! Cloud Controller's JSON conventions: timestamps, links, `metadata`,
//! `relationships`, list filters and pagination (`pagination.next.href`,
//! which the cf CLI follows until it is null).

use std::collections::HashMap;

use serde_json::{Value, json};

use super::error::CfError;

/// The query string of a request, by parameter.
pub type Query = HashMap<String, String>;

/// Unix nanoseconds as CC's `2026-12-07T01:02:03Z`.
pub fn time(ns: i64) -> String {
    let (y, mo, d, h, mi, s) = celld_base::civil::civil(ns.div_euclid(1_000_000_000));
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

pub fn link(base: &str, path: &str) -> Value {
    json!({ "href": format!("{base}{path}") })
}

pub fn post_link(base: &str, path: &str) -> Value {
    json!({ "href": format!("{base}{path}"), "method": "POST" })
}

pub fn metadata() -> Value {
    json!({ "labels": {}, "annotations": {} })
}

pub fn to_one(guid: &str) -> Value {
    json!({ "data": { "guid": guid } })
}

/// A comma-separated filter (`names=a,b`), if given; `paths=` is the one
/// empty value (a route without a path).
pub fn filter(q: &Query, key: &str) -> Option<Vec<String>> {
    q.get(key).map(|v| v.split(',').map(str::to_string).collect())
}

/// Whether `value` passes the filter `key` (no filter passes everything).
pub fn passes(q: &Query, key: &str, value: &str) -> bool {
    filter(q, key).is_none_or(|vs| vs.iter().any(|v| v == value))
}

fn number(q: &Query, key: &str, default: usize, max: usize) -> Result<usize, CfError> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(CfError::BadQuery(format!("{key} must be between 1 and {max}"))),
        },
    }
}

/// One page of `items` as CC lists them, with links that keep the filters;
/// `order_by` (`created_at`, `updated_at`, `name`, `position`, `-` for
/// descending) sorts them first, stably.
pub fn paginate(base: &str, path: &str, q: &Query, mut items: Vec<Value>) -> Result<Value, CfError> {
    if let Some(order) = q.get("order_by") {
        let (desc, field) = match order.strip_prefix('-') {
            Some(f) => (true, f),
            None => (false, order.strip_prefix('+').unwrap_or(order)),
        };
        if !["created_at", "updated_at", "name", "position"].contains(&field) {
            return Err(CfError::BadQuery(format!(
                "Order by can only be: 'created_at', 'updated_at', 'name', 'position' (got '{order}')"
            )));
        }
        let key = |v: &Value| match &v[field] {
            Value::Number(n) => format!("{:020}", n.as_u64().unwrap_or(0)),
            other => other.as_str().unwrap_or_default().to_string(),
        };
        items.sort_by(|a, b| if desc { key(b).cmp(&key(a)) } else { key(a).cmp(&key(b)) });
    }
    let per_page = number(q, "per_page", 50, 5000)?;
    let page = number(q, "page", 1, usize::MAX)?;
    let total = items.len();
    let pages = total.div_ceil(per_page).max(1);
    let href = |p: usize| {
        let mut params: Vec<(String, String)> =
            q.iter().filter(|(k, _)| *k != "page" && *k != "per_page").map(|(k, v)| (k.clone(), v.clone())).collect();
        params.sort();
        params.push(("page".into(), p.to_string()));
        params.push(("per_page".into(), per_page.to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        json!({ "href": format!("{base}{path}?{qs}") })
    };
    let resources: Vec<Value> = items.into_iter().skip((page - 1).saturating_mul(per_page)).take(per_page).collect();
    Ok(json!({
        "pagination": {
            "total_results": total,
            "total_pages": pages,
            "first": href(1),
            "last": href(pages),
            "next": if page < pages { href(page + 1) } else { Value::Null },
            "previous": if page > 1 { href(page - 1) } else { Value::Null },
        },
        "resources": resources,
    }))
}

/// A request body as JSON, with CC's message for what is not.
pub fn body(bytes: &[u8]) -> Result<Value, CfError> {
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| CfError::MessageParse(e.to_string()))?;
    if !v.is_object() {
        return Err(CfError::MessageParse("the body must be a JSON object".into()));
    }
    Ok(v)
}

/// `v[key]` as a string, if it is one; any other type is a clear 422.
pub fn opt_str<'a>(v: &'a Value, key: &str) -> Result<Option<&'a str>, CfError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(CfError::unprocessable(format!("{} must be a string", human(key)))),
    }
}

pub fn opt_u32(v: &Value, key: &str) -> Result<Option<u32>, CfError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| CfError::unprocessable(format!("{} must be a non-negative integer", human(key)))),
    }
}

/// The guid of a to-one relationship: `v.relationships.<rel>.data.guid`.
pub fn relationship<'a>(v: &'a Value, rel: &str) -> Result<&'a str, CfError> {
    v.pointer(&format!("/relationships/{rel}/data/guid"))
        .and_then(Value::as_str)
        .ok_or_else(|| CfError::unprocessable(format!("Relationships {rel} can't be blank")))
}

/// CC's way of naming a field in a message: `memory_in_mb` → "Memory in mb".
fn human(key: &str) -> String {
    let s = key.replace('_', " ");
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_cc_shaped() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(1_800_000_000_123_000_000), "2027-01-15T08:00:00Z");
    }

    #[test]
    fn pages_link_onwards_and_keep_filters() {
        let q: Query = [("names".to_string(), "a".to_string()), ("per_page".to_string(), "2".to_string())].into();
        let items = (0..5).map(|i| json!(i)).collect();
        let p = paginate("http://h", "/v3/apps", &q, items).unwrap();
        assert_eq!(p["pagination"]["total_pages"], 3);
        assert_eq!(p["resources"], json!([0, 1]));
        assert_eq!(p["pagination"]["next"]["href"], "http://h/v3/apps?names=a&page=2&per_page=2");
        let q2: Query = [("page".to_string(), "3".to_string()), ("per_page".to_string(), "2".to_string())].into();
        let p = paginate("http://h", "/v3/apps", &q2, (0..5).map(|i| json!(i)).collect()).unwrap();
        assert_eq!((p["resources"].clone(), p["pagination"]["next"].clone()), (json!([4]), Value::Null));
        let bad: Query = [("per_page".to_string(), "0".to_string())].into();
        assert!(paginate("h", "/", &bad, vec![]).is_err());
    }

    #[test]
    fn order_by_sorts_stably() {
        let items = vec![
            json!({"created_at": "b", "n": 1}),
            json!({"created_at": "a", "n": 2}),
            json!({"created_at": "b", "n": 3}),
        ];
        let q: Query = [("order_by".to_string(), "-created_at".to_string())].into();
        let p = paginate("h", "/x", &q, items.clone()).unwrap();
        let ns: Vec<u64> = p["resources"].as_array().unwrap().iter().map(|v| v["n"].as_u64().unwrap()).collect();
        assert_eq!(ns, [1, 3, 2]);
        let bad: Query = [("order_by".to_string(), "color".to_string())].into();
        assert!(paginate("h", "/x", &bad, items).is_err());
    }

    #[test]
    fn fields_are_checked() {
        let v = json!({"name": 3, "instances": -1, "relationships": {}});
        assert!(opt_str(&v, "name").unwrap_err().to_string().contains("Name must be a string"));
        assert!(opt_u32(&v, "instances").is_err());
        assert!(relationship(&v, "space").unwrap_err().to_string().contains("Relationships space"));
        assert!(body(b"[1]").is_err());
        assert!(body(b"{").is_err());
    }
}
