//! `cf push` of examples/hello through the CF API in the cf CLI v8's order
//! (apply_manifest → resource_matches → package → upload → build →
//! current_droplet → restart → stats until an instance runs), beside
//! `cellctl push` of the same app, on one `celld --local`. Requests are
//! answered as the CLI would poll them (first poll at once).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::ssh::{CF_API, cellctl_at};
use super::{ms, percentiles};

const PUSHES: usize = 5;
const WARMUP: usize = 1;

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(u16, Value, Option<String>)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some((ct, bytes)) = body {
            req = req.header("content-type", ct).body(bytes);
        }
        let resp = req.send().await.with_context(|| format!("CF API {path}"))?;
        let status = resp.status().as_u16();
        let location = resp.headers().get("location").and_then(|h| h.to_str().ok()).map(str::to_string);
        let bytes = resp.bytes().await?;
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        ensure!(status < 400, "CF API {path}: {status} {v}");
        Ok((status, v, location))
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Value) -> Result<Value> {
        Ok(self.call(method, path, Some(("application/json", body.to_string().into_bytes()))).await?.1)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.call(reqwest::Method::GET, path, None).await?.1)
    }

    /// Polls like the CLI: at once, then every 3 s, until `done`.
    async fn poll(&self, path: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.get(path).await?;
            if done(&v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("{path} did not finish: {v}");
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
}

/// The app's files as a zip and the CLI's resource list for them.
fn zip_dir(dir: &Path) -> Result<(Vec<u8>, Value)> {
    use sha1::Digest;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut resources = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().filter(|e| e.path().is_file()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let body = std::fs::read(e.path())?;
        let mode = e.metadata()?.permissions().mode() & 0o777;
        w.start_file(name.as_str(), zip::write::SimpleFileOptions::default().unix_permissions(mode))?;
        w.write_all(&body)?;
        let sha: String = sha1::Sha1::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
        resources.push(
            json!({"path": name, "mode": format!("{mode:o}"), "checksum": {"value": sha}, "size_in_bytes": body.len()}),
        );
    }
    Ok((w.finish()?.into_inner(), Value::Array(resources)))
}

fn multipart(resources: &Value, bits: Option<&[u8]>) -> (String, Vec<u8>) {
    let boundary = "celld-bench-7d1f";
    let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"resources\"\r\n\r\n{resources}\r\n")
        .into_bytes();
    if let Some(zip) = bits {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"bits\"; filename=\"app.zip\"\r\nContent-Type: application/zip\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(zip);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// One push as the CLI sequences it.
async fn v3_push(api: &Api, space: &str, name: &str, hello: &Path) -> Result<()> {
    use reqwest::Method;
    let manifest = format!("applications:\n- name: {name}\n  memory: 64M\n  default-route: true\n");
    let (_, _, job) = api
        .call(
            Method::POST,
            &format!("/v3/spaces/{space}/actions/apply_manifest"),
            Some(("application/x-yaml", manifest.into_bytes())),
        )
        .await?;
    let job = job.context("apply_manifest answered without a job")?;
    let job = &job[job.find("/v3/").context("job location")?..];
    let j = api.poll(job, |j| j["state"] != "PROCESSING").await?;
    ensure!(j["state"] == "COMPLETE", "apply_manifest: {j}");
    let apps = api.get(&format!("/v3/apps?names={name}&space_guids={space}")).await?;
    let app = apps["resources"][0]["guid"].as_str().context("the app")?.to_string();
    let (zip, resources) = zip_dir(hello)?;
    let matched = api.json(Method::POST, "/v3/resource_matches", json!({ "resources": resources })).await?;
    let all_matched = matched["resources"].as_array().map(Vec::len) == resources.as_array().map(Vec::len);
    let pkg = api
        .json(Method::POST, "/v3/packages", json!({"type": "bits", "relationships": {"app": {"data": {"guid": app}}}}))
        .await?;
    let pkg = pkg["guid"].as_str().context("package guid")?.to_string();
    let (ct, body) = if all_matched { multipart(&resources, None) } else { multipart(&json!([]), Some(&zip)) };
    api.call(Method::POST, &format!("/v3/packages/{pkg}/upload"), Some((&ct, body))).await?;
    api.poll(&format!("/v3/packages/{pkg}"), |p| p["state"] == "READY").await?;
    let build = api.json(Method::POST, "/v3/builds", json!({"package": {"guid": pkg}})).await?;
    let build = api
        .poll(&format!("/v3/builds/{}", build["guid"].as_str().unwrap_or_default()), |b| b["state"] != "STAGING")
        .await?;
    ensure!(build["state"] == "STAGED", "build: {build}");
    let droplet = build["droplet"]["guid"].clone();
    api.json(
        Method::PATCH,
        &format!("/v3/apps/{app}/relationships/current_droplet"),
        json!({"data": {"guid": droplet}}),
    )
    .await?;
    api.call(Method::POST, &format!("/v3/apps/{app}/actions/restart"), None).await?;
    api.poll(&format!("/v3/processes/{app}/stats"), |s| {
        s["resources"].as_array().is_some_and(|r| r.iter().any(|i| i["state"] == "RUNNING"))
    })
    .await?;
    Ok(())
}

/// Runs in a `celld --local` started by the caller (ssh::local_args).
pub async fn run(dir: &Path, hello: &Path) -> Result<()> {
    let depot = dir.join("depot");
    let password = std::fs::read_to_string(depot.join("cf-api/admin-password"))
        .context("the CF API's admin password in the depot")?;
    let http = reqwest::Client::builder().build()?;
    let base = format!("http://{CF_API}");
    let form = [("grant_type", "password"), ("username", "admin"), ("password", password.trim())];
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let tokens: Value = http
        .post(format!("{base}/oauth/token"))
        .basic_auth("cf", Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?
        .json()
        .await?;
    let token = tokens["access_token"].as_str().context("no access token")?.to_string();
    let api = Api { http, base, token };
    let orgs = api.get("/v3/organizations?names=local").await?;
    let org = orgs["resources"][0]["guid"].as_str().context("org local")?;
    let spaces = api.get(&format!("/v3/spaces?names=dev&organization_guids={org}")).await?;
    let space = spaces["resources"][0]["guid"].as_str().context("space dev")?.to_string();

    let mut ours = Vec::new();
    for i in 0..WARMUP + PUSHES {
        let t0 = Instant::now();
        v3_push(&api, &space, "hello-v3", hello).await.context("the v3 push")?;
        if i >= WARMUP {
            ours.push(t0.elapsed());
        }
    }
    let mut theirs = Vec::new();
    let home = dir.join("push-home");
    for i in 0..WARMUP + PUSHES {
        let t0 = Instant::now();
        cellctl_at(&home, &["push", &hello.to_string_lossy(), "--name", "hello-cellctl", "-m", "64M"])
            .context("cellctl push")?;
        if i >= WARMUP {
            theirs.push(t0.elapsed());
        }
    }
    let (p50, p95) = percentiles(&mut ours);
    let (b50, b95) = percentiles(&mut theirs);
    println!("push: examples/hello, {PUSHES} re-pushes each (after {WARMUP} warm-up), polled as the cf CLI polls");
    println!("{:<34}{:>8}{:>9}", "", "p50 ms", "p95 ms");
    println!("{:<34}{:>8.0}{:>9.0}", "CF v3 API (cf push's sequence)", ms(p50), ms(p95));
    println!("{:<34}{:>8.0}{:>9.0}", "cellctl push", ms(b50), ms(b95));
    println!("cf push / cellctl push p50: {:.2}x (target <= 1.2, and under 2 s)", ms(p50) / ms(b50));
    println!();
    Ok(())
}
