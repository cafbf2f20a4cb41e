//! Property tests of every parser that takes outside input (issue 17): Garden
//! JSON bodies, stream-in tars, app packages (zip/tar), buildpack release
//! YAML, Procfiles, launch metadata, net-out rules, celld.v1 requests and ssh
//! logins. The same parsers have libFuzzer targets in fuzz/ (`make fuzz`);
//! these run in `make test`, in-process and fast (case counts are small).
//! No root needed: archives unpack into scratch directories under TMPDIR.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use celld::executor::container::egress_rule;
use celld::garden::types::{ContainerSpec, IcmpControl, IpRange, NetOutRule, PortRange, ProcessPayload, ProcessSpec};
use celld::grpc::pb;
use celld::lifecycle::archive::{self, Limits};
use celld::lifecycle::builder::{Proc, parse_launch_yml, parse_procfile, parse_release};
use celld::lifecycle::{StagingInfo, to_go_json};
use celld::network::rules::{MAX_STATEMENTS, allowances, log_prefix};
use celld::sshproxy::Login;
use proptest::prelude::*;
use prost::Message;

// ---- helpers -----------------------------------------------------------------

static NEXT: AtomicU64 = AtomicU64::new(0);

/// `root/` holds `dest/` and `outside/sentinel`; an extraction may touch only
/// `dest/`. Removed on drop.
struct Scratch {
    root: PathBuf,
    dest: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("celld-props-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("outside")).unwrap();
        fs::write(root.join("outside/sentinel"), b"untouched").unwrap();
        let dest = root.join("dest");
        Self { root, dest }
    }

    fn check(&self, links_inside: bool) {
        let mut names: Vec<String> =
            fs::read_dir(&self.root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert!(names == ["dest", "outside"] || names == ["outside"], "entries outside dest: {names:?}");
        assert_eq!(fs::read_dir(self.root.join("outside")).unwrap().count(), 1, "a new entry in outside/");
        let sentinel = self.root.join("outside/sentinel");
        assert!(fs::symlink_metadata(&sentinel).unwrap().file_type().is_file(), "sentinel replaced");
        assert_eq!(fs::read(&sentinel).unwrap(), b"untouched");
        if links_inside && self.dest.exists() {
            let dest = fs::canonicalize(&self.dest).unwrap();
            walk(&self.dest, &mut |p| {
                if fs::symlink_metadata(p).unwrap().file_type().is_symlink() {
                    if let Ok(real) = fs::canonicalize(p) {
                        assert!(real.starts_with(&dest), "{} resolves outside dest to {}", p.display(), real.display());
                    }
                }
            });
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        f(&p);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_dir()) {
            walk(&p, f);
        }
    }
}

/// Only numbers, addresses, keywords and the filtered log prefix may reach an
/// nft statement.
fn assert_nft_safe(stmt: &str) {
    assert!(
        stmt.chars().all(|c| c.is_ascii_alphanumeric() || " .-_:\"".contains(c)),
        "unsafe character in nft statement {stmt:?}"
    );
    assert!(stmt.matches('"').count() <= 2 && stmt.ends_with("accept"), "{stmt:?}");
}

/// One archive entry as an attacker might write it.
#[derive(Debug, Clone)]
enum Entry {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
}

/// Names and link targets built from parts that matter for escapes: `..`,
/// absolute roots, `.`, empty components, the scratch's `outside` and names
/// that earlier entries reuse.
fn path_strategy() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("outside".to_string()),
        Just("sentinel".to_string()),
        "[a-c]{1,3}",
    ];
    (any::<bool>(), prop::collection::vec(part, 1..5))
        .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")))
        .prop_filter("fits a v7 tar header", |s| !s.is_empty() && s.len() < 100)
}

fn entry_strategy() -> impl Strategy<Value = Entry> {
    prop_oneof![
        (path_strategy(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(n, d)| Entry::File(n, d)),
        path_strategy().prop_map(Entry::Dir),
        (path_strategy(), path_strategy()).prop_map(|(n, t)| Entry::Symlink(n, t)),
        (path_strategy(), path_strategy()).prop_map(|(n, t)| Entry::Hardlink(n, t)),
    ]
}

/// A tar with the names written raw (the tar crate's builder refuses `..`).
fn raw_tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (name, kind, data, link): (&str, tar::EntryType, &[u8], &str) = match e {
            Entry::File(n, d) => (n, tar::EntryType::Regular, d, ""),
            Entry::Dir(n) => (n, tar::EntryType::Directory, &[], ""),
            Entry::Symlink(n, t) => (n, tar::EntryType::Symlink, &[], t),
            Entry::Hardlink(n, t) => (n, tar::EntryType::Link, &[], t),
        };
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn raw_zip(entries: &[Entry]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = |mode| zip::write::SimpleFileOptions::default().unix_permissions(mode);
    for e in entries {
        // The writer refuses some names (duplicates); what it writes is enough.
        let _ = match e {
            Entry::File(n, d) => z.start_file(n.as_str(), opts(0o644)).and_then(|()| Ok(z.write_all(d)?)),
            Entry::Dir(n) => z.add_directory(n.as_str(), opts(0o755)),
            Entry::Symlink(n, t) | Entry::Hardlink(n, t) => z.add_symlink(n.as_str(), t.as_str(), opts(0o777)),
        };
    }
    z.finish().unwrap().into_inner()
}

/// Text that YAML and JSON treat specially: controls, DEL, C1 (NEL among
/// them), line and paragraph separators, BOM, non-characters, indicators.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x{a0}\\x{2028}\\x{2029}\\x{feff}\\x{fffe}\\x{ffff}\\x{10ffff}:#'\"{}\\[\\]&*!|>%@` -]{0,12}",
    ]
}

fn small_limits() -> Limits {
    Limits { max_bytes: 1 << 20, max_entries: 1000 }
}

// ---- archives ----------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Stream-in (the call init makes) and the lifecycle's extraction of the
    /// same tar: nothing lands outside the destination; the lifecycle also
    /// leaves no symlink that resolves outside it.
    #[test]
    fn tar_entries_stay_inside(entries in prop::collection::vec(entry_strategy(), 0..8)) {
        let tar = raw_tar(&entries);
        let s = Scratch::new();
        fs::create_dir(&s.dest).unwrap();
        let _ = celld::runtime::init::unpack_tar_stream(&tar[..], &s.dest);
        s.check(false);
        drop(s);

        let s = Scratch::new();
        let _ = archive::extract_tar(&tar[..], &s.dest, &small_limits());
        s.check(true);
    }

    /// App packages as zips, through the same entry point as the stager.
    #[test]
    fn zip_entries_stay_inside(entries in prop::collection::vec(entry_strategy(), 0..8)) {
        let s = Scratch::new();
        let pkg = s.root.with_extension("zip");
        fs::write(&pkg, raw_zip(&entries)).unwrap();
        let _ = archive::extract(&pkg, &s.dest, &small_limits());
        fs::remove_file(&pkg).unwrap();
        s.check(true);
    }

    /// Arbitrary bytes, and arbitrary bytes behind each format's magic.
    #[test]
    fn archive_bytes_never_panic(
        magic in prop_oneof![Just(&b""[..]), Just(&b"PK\x03\x04"[..]), Just(&b"\x1f\x8b"[..]), Just(&b"PK\x05\x06"[..])],
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let s = Scratch::new();
        let pkg = s.root.with_extension("pkg");
        fs::write(&pkg, [magic, &body[..]].concat()).unwrap();
        let _ = archive::extract(&pkg, &s.dest, &small_limits());
        fs::remove_file(&pkg).unwrap();
        s.check(true);
        let _ = archive::sniff(&body);
    }
}

// ---- YAML and JSON of the staging ----------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any map of strings written as a Procfile reads back the same; any text
    /// is parsed or refused, never a panic.
    #[test]
    fn procfile_roundtrip(map in prop::collection::btree_map(text(), text(), 0..5), junk in text()) {
        let doc = serde_yaml_ng::to_string(&map).unwrap();
        prop_assert_eq!(parse_procfile(doc.as_bytes()), Ok(map.clone()), "{}", doc);
        let _ = parse_procfile(junk.as_bytes());
        let release = serde_yaml_ng::to_string(&BTreeMap::from([("default_process_types", &map)])).unwrap();
        prop_assert_eq!(parse_release(release.as_bytes()), Ok(map), "{}", release);
        let _ = parse_release(junk.as_bytes());
    }

    /// `launch.yml` as a buildpack writes it reads back as the same processes.
    #[test]
    fn launch_yml_roundtrip(
        procs in prop::collection::vec(
            (text(), text(), prop::collection::vec(text(), 0..3), any::<u64>()),
            0..4,
        ),
        junk in any::<String>(),
    ) {
        let list: Vec<serde_json::Value> = procs
            .iter()
            .map(|(t, c, s, m)| serde_json::json!({
                "type": t, "command": c,
                "platforms": {"cloudfoundry": {"sidecar_for": s}},
                "limits": {"memory": m},
            }))
            .collect();
        let doc = serde_yaml_ng::to_string(&serde_json::json!({ "processes": list })).unwrap();
        let want: Vec<Proc> = procs
            .into_iter()
            .map(|(process_type, command, sidecar_for, memory)| Proc { process_type, command, sidecar_for, memory })
            .collect();
        prop_assert_eq!(parse_launch_yml(doc.as_bytes()), Ok(want), "{}", doc);
        let _ = parse_launch_yml(junk.as_bytes());
    }

    /// The builder writes `staging_info.yml` as Go-escaped JSON and the
    /// launcher reads it as YAML: any start command survives the trip.
    #[test]
    fn staging_info_roundtrip(detected in text(), command in text(), prefix in text()) {
        let info = StagingInfo {
            detected_buildpack: detected,
            start_command: command,
            config: Some(celld::lifecycle::BuildpackConfig { entrypoint_prefix: prefix }),
        };
        let json = to_go_json(&info).unwrap();
        let back: Result<StagingInfo, _> = serde_yaml_ng::from_str(&json);
        prop_assert_eq!(back.map_err(|e| e.to_string()), Ok(info), "{}", json);
    }

    /// VCAP_APPLICATION is rewritten only when it is a JSON object, and the
    /// result is one; VCAP_SERVICES of any shape is read or ignored.
    #[test]
    fn vcap_env_never_panics(current in any::<String>(), guid in any::<String>(), port in any::<String>(), index in any::<String>()) {
        if let Some(v) = celld::lifecycle::launcher::vcap_application_for_instance(Some(&current), &guid, Some(&port), Some(&index)) {
            let v: serde_json::Value = serde_json::from_str(&v).unwrap();
            prop_assert_eq!(v.get("instance_id").and_then(|g| g.as_str()), Some(guid.as_str()));
        }
        let _ = celld::lifecycle::database_url(&current);
    }
}

// ---- Garden, net-out rules, proto, ssh ------------------------------------------

fn ip_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u32>().prop_map(|n| std::net::Ipv4Addr::from(n).to_string()),
        Just(String::new()),
        "[0-9.:a-f/; \"-]{0,20}",
        any::<String>(),
    ]
}

fn netout_strategy() -> impl Strategy<Value = NetOutRule> {
    (
        0u8..6,
        prop::collection::vec((ip_text(), ip_text()).prop_map(|(start, end)| IpRange { start, end }), 0..4),
        prop::collection::vec((any::<u16>(), any::<u16>()).prop_map(|(start, end)| PortRange { start, end }), 0..4),
        prop::option::of(
            (any::<u8>(), prop::option::of(any::<u8>())).prop_map(|(t, c)| IcmpControl { icmp_type: t, code: c }),
        ),
        any::<bool>(),
    )
        .prop_map(|(protocol, networks, ports, icmps, log)| NetOutRule { protocol, networks, ports, icmps, log })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the rule and handle, the firewall text holds no client text
    /// but the filtered prefix, and a request expands to a bounded number of
    /// rules; the rule survives the JSON trip a Garden client makes.
    #[test]
    fn netout_rules_are_safe(rules in prop::collection::vec(netout_strategy(), 0..3), handle in any::<String>()) {
        let prefix = log_prefix(&handle);
        prop_assert!(prefix.len() <= 29);
        if let Ok(allows) = allowances(&rules, &handle) {
            prop_assert!(allows.len() <= MAX_STATEMENTS);
            for a in &allows {
                assert_nft_safe(&a.nft());
            }
        }
        let json = serde_json::to_vec(&rules).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Vec<NetOutRule>>(&json).unwrap(), rules);
    }

    /// Garden bodies: any bytes are parsed or refused.
    #[test]
    fn garden_bodies_never_panic(body in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "[\\[\\]{}\":,0-9a-z_ .-]{0,128}".prop_map(String::into_bytes),
    ]) {
        let _ = serde_json::from_slice::<ContainerSpec>(&body);
        let _ = serde_json::from_slice::<ProcessPayload>(&body);
        if let Ok(spec) = serde_json::from_slice::<ProcessSpec>(&body) {
            let _ = celld::gardener::process_env(&[], &spec);
        }
        let _ = celld::garden::server::parse_query(std::str::from_utf8(&body).ok());
    }

    /// ASG rules from the scheduler become the same safe firewall text.
    #[test]
    fn egress_rules_are_safe(
        protocol in prop_oneof![Just("tcp".to_string()), Just("ICMP".to_string()), Just("all".to_string()), any::<String>()],
        destinations in prop::collection::vec(prop_oneof![
            (any::<u32>(), 0u32..40).prop_map(|(ip, bits)| format!("{}/{bits}", std::net::Ipv4Addr::from(ip))),
            (any::<u32>(), any::<u32>()).prop_map(|(a, b)| format!("{}-{}", std::net::Ipv4Addr::from(a), std::net::Ipv4Addr::from(b))),
            any::<String>(),
        ], 0..3),
        ports in prop::collection::vec(any::<u32>(), 0..3),
        range in (any::<u32>(), any::<u32>()),
        icmp in (any::<i32>(), any::<i32>()),
    ) {
        let r = pb::EgressRule {
            protocol,
            destinations,
            ports,
            port_range: Some(pb::PortRange { start: range.0, end: range.1 }),
            icmp_info: Some(pb::IcmpInfo { r#type: icmp.0, code: icmp.1 }),
            log: true,
        };
        if let Ok(rule) = egress_rule(&r) {
            if let Ok(allows) = allowances(&[rule], "h") {
                for a in &allows {
                    assert_nft_safe(&a.nft());
                }
            }
        }
    }

    /// celld.v1 requests: any bytes decode or fail, and what decodes meets
    /// the scheduler's checks without a panic; an app name's route host is
    /// always a valid host.
    #[test]
    fn proto_requests_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), name in any::<String>()) {
        if let Ok(d) = pb::DesiredLrp::decode(&body[..]) {
            let _ = celld::scheduler::model::validate_guid("process_guid", &d.process_guid);
            let _ = celld::scheduler::model::validate(&celld::scheduler::model::new_unclaimed(&d, 0, 0));
        }
        if let Ok(w) = pb::Work::decode(&body[..]) {
            for t in &w.tasks {
                let _ = celld::executor::env::task_env(t, "10.0.0.1", "10.255.0.2");
            }
        }
        if let Ok(lrp) = pb::ActualLrp::decode(&body[..]) {
            let _ = celld::scheduler::model::validate(&lrp);
            let _ = celld::scheduler::model::next_crash_count(&lrp, i64::MIN);
        }
        let reason = celld::scheduler::model::truncate_reason(&name);
        prop_assert!(name.starts_with(&reason));
        if let Ok(host) = celld::apps::host_label(&name) {
            prop_assert!(celld::apps::validate_host_label(&host).is_ok(), "{:?} -> {:?}", name, host);
        }
    }

    /// ssh logins: `cf:ID/N` and `diego:ID/N` parse to what they say, for
    /// any non-empty id; anything else is refused, never a panic.
    #[test]
    fn ssh_login_roundtrip(id in ".+", index in any::<u32>(), junk in any::<String>()) {
        prop_assert_eq!(
            Login::parse(&format!("cf:{id}/{index}")).ok(),
            Some(Login::Cf { app: id.clone(), index })
        );
        prop_assert_eq!(
            Login::parse(&format!("diego:{id}/{index}")).ok(),
            Some(Login::Diego { process_guid: id, index })
        );
        if let Ok(login) = Login::parse(&junk) {
            let (realm, id, index) = match &login {
                Login::Cf { app, index } => ("cf", app, index),
                Login::Diego { process_guid, index } => ("diego", process_guid, index),
            };
            prop_assert_eq!(Login::parse(&format!("{realm}:{id}/{index}")).ok(), Some(login.clone()));
        }
    }
}
