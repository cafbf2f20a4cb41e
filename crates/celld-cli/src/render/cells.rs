//! `cellctl cells`: each cell's place and capacity, then its host's vitals
//! the way `bosh vms --vitals` prints a VM's (same columns, same number
//! formats). Two tables, as one would not fit 160 columns.

use serde_json::{Value, json};

use super::{Paint, Style, Table, fmt_mb, opt_json, resources_json};
use celld_proto as pb;

pub fn cells_table(r: &pb::ListCellsResponse, style: Style) -> String {
    if r.cells.is_empty() {
        return "No cells found\n".to_string();
    }
    let mut t = Table::new(&[
        "cell",
        "address",
        "zone",
        "state",
        "memory avail/total",
        "disk avail/total",
        "containers",
        "instances",
        "tasks",
        "stacks",
    ]);
    for c in &r.cells {
        let none = pb::Resources::default();
        let (cap, avail) = (c.capacity.as_ref().unwrap_or(&none), c.available.as_ref().unwrap_or(&none));
        let (state, paint) = if c.evacuating { ("evacuating", Paint::Yellow) } else { ("ok", Paint::Green) };
        t.row(vec![
            (c.cell_id.clone(), Paint::Plain),
            (c.grpc_address.clone(), Paint::Plain),
            (c.zone.clone(), Paint::Plain),
            (state.to_string(), paint),
            (format!("{}/{}", fmt_mb(avail.memory_mb), fmt_mb(cap.memory_mb)), Paint::Plain),
            (format!("{}/{}", fmt_mb(avail.disk_mb), fmt_mb(cap.disk_mb)), Paint::Plain),
            // In use, as a count like instances and tasks.
            (cap.containers.saturating_sub(avail.containers).to_string(), Paint::Plain),
            (c.instances.to_string(), Paint::Plain),
            (c.tasks.to_string(), Paint::Plain),
            (c.stacks.join(", "), Paint::Plain),
        ]);
    }
    let mut out = t.render(style);
    out.push('\n');
    out.push_str(&vitals_table(r, style));
    out
}

/// bosh's vitals columns (its two-line headers on one line); a cell that did
/// not answer has empty cells, as bosh shows a VM whose agent is silent.
fn vitals_table(r: &pb::ListCellsResponse, style: Style) -> String {
    let mut t = Table::new(&[
        "cell",
        "uptime",
        "load (1m, 5m, 15m)",
        "cpu user",
        "cpu sys",
        "cpu wait",
        "memory usage",
        "swap usage",
        "system disk",
        "ephemeral disk",
    ]);
    for c in &r.cells {
        let mut row = vec![c.cell_id.clone()];
        if let Some(v) = &c.vitals {
            row.extend([
                uptime(v.uptime_seconds),
                format!("{:.2}, {:.2}, {:.2}", v.load_1m, v.load_5m, v.load_15m),
                format!("{:.1}%", v.cpu_user_percent),
                format!("{:.1}%", v.cpu_sys_percent),
                format!("{:.1}%", v.cpu_wait_percent),
                mem_usage(v.memory_used_bytes, v.memory_total_bytes),
                mem_usage(v.swap_used_bytes, v.swap_total_bytes),
                format!("{:.0}%", v.system_disk_percent),
                format!("{:.0}%", v.depot_disk_percent),
            ]);
        }
        t.plain_row(row);
    }
    t.render(style)
}

/// `1d 3h 4m 5s`, bosh's uptime.
fn uptime(secs: u64) -> String {
    format!("{}d {}h {}m {}s", secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// `14% (1.8 GB)`: bosh prints the agent's kilobytes (KiB) times 1000 in SI
/// units, so the size is shown the way bosh would show this host's.
fn mem_usage(used: u64, total: u64) -> String {
    let pct = if total == 0 { 0.0 } else { used as f64 * 100.0 / total as f64 };
    format!("{pct:.0}% ({})", si_bytes((used / 1024).saturating_mul(1000)))
}

/// Sizes in SI units like go-humanize's `Bytes`, which bosh uses: `9 B`,
/// `1.8 GB`, `18 GB`, `512 kB` (one decimal below 10).
fn si_bytes(b: u64) -> String {
    if b < 10 {
        return format!("{b} B");
    }
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    let v = (v * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 { format!("{v:.1} {}", UNITS[i]) } else { format!("{v:.0} {}", UNITS[i]) }
}

fn vitals_json(v: &pb::CellVitals) -> Value {
    json!({
        "load": [v.load_1m, v.load_5m, v.load_15m],
        "cpu": {"user_percent": v.cpu_user_percent, "sys_percent": v.cpu_sys_percent, "wait_percent": v.cpu_wait_percent},
        "memory": {"used_bytes": v.memory_used_bytes, "total_bytes": v.memory_total_bytes},
        "swap": {"used_bytes": v.swap_used_bytes, "total_bytes": v.swap_total_bytes},
        "system_disk_percent": v.system_disk_percent,
        "ephemeral_disk_percent": v.depot_disk_percent,
        "uptime_seconds": v.uptime_seconds,
    })
}

pub fn cells_json(r: &pb::ListCellsResponse) -> Value {
    let cells: Vec<Value> = r
        .cells
        .iter()
        .map(|c| {
            json!({
                "cell_id": c.cell_id, "grpc_address": c.grpc_address, "zone": c.zone,
                "capacity": opt_json(&c.capacity, resources_json),
                "available": opt_json(&c.available, resources_json),
                "instances": c.instances, "tasks": c.tasks, "stacks": c.stacks, "evacuating": c.evacuating,
                "vitals": opt_json(&c.vitals, vitals_json),
            })
        })
        .collect();
    json!({ "cells": cells })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells() -> pb::ListCellsResponse {
        let vitals = pb::CellVitals {
            load_1m: 0.12,
            load_5m: 0.25,
            load_15m: 0.3,
            cpu_user_percent: 1.234,
            cpu_sys_percent: 0.56,
            cpu_wait_percent: 0.0,
            memory_used_bytes: 1_800_000 * 1024,
            memory_total_bytes: 12_800_000 * 1024,
            swap_used_bytes: 0,
            swap_total_bytes: 0,
            system_disk_percent: 41.6,
            depot_disk_percent: 7.2,
            uptime_seconds: 90_061,
        };
        pb::ListCellsResponse {
            cells: vec![
                pb::CellStatus {
                    cell_id: "cell-a".into(),
                    capacity: Some(pb::Resources { memory_mb: 8192, disk_mb: 16384, containers: 250 }),
                    vitals: Some(vitals),
                    ..Default::default()
                },
                pb::CellStatus { cell_id: "cell-b".into(), ..Default::default() },
            ],
        }
    }

    #[test]
    fn numbers_look_like_bosh() {
        assert_eq!(uptime(90_061), "1d 1h 1m 1s");
        assert_eq!(uptime(0), "0d 0h 0m 0s");
        assert_eq!(si_bytes(9), "9 B");
        assert_eq!(si_bytes(512_000), "512 kB");
        assert_eq!(si_bytes(1_800_000_000), "1.8 GB");
        assert_eq!(si_bytes(18_000_000_000), "18 GB");
        assert_eq!(si_bytes(u64::MAX), "18 EB");
        // 1,800,000 KiB is shown as 1.8 GB, as bosh does.
        assert_eq!(mem_usage(1_800_000 * 1024, 12_800_000 * 1024), "14% (1.8 GB)");
        assert_eq!(mem_usage(0, 0), "0% (0 B)");
    }

    #[test]
    fn the_table_has_capacity_then_vitals() {
        let text = cells_table(&cells(), Style::default());
        let (capacity, vitals) = text.split_once("\n\n").unwrap();
        assert!(capacity.starts_with("cell     address   zone   state   memory avail/total"), "{capacity}");
        let mut lines = vitals.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("cell     uptime        load (1m, 5m, 15m)   cpu user"), "{header}");
        let a = lines.next().unwrap();
        for want in ["1d 1h 1m 1s", "0.12, 0.25, 0.30", "1.2%", "0.6%", "0.0%", "14% (1.8 GB)", "0% (0 B)", "42%", "7%"]
        {
            assert!(a.contains(want), "{want} in {a}");
        }
        // A cell that did not answer: its name only.
        assert_eq!(lines.next(), Some("cell-b"));
        assert!(text.lines().all(|l| l.chars().count() <= 160), "{text}");
        assert_eq!(cells_table(&pb::ListCellsResponse::default(), Style::default()), "No cells found\n");
    }

    #[test]
    fn json_has_the_vitals() {
        let v = cells_json(&cells());
        let a = &v["cells"][0]["vitals"];
        assert_eq!(a["load"], json!([0.12, 0.25, 0.3]));
        assert_eq!(a["memory"]["total_bytes"], 12_800_000u64 * 1024);
        assert_eq!(a["ephemeral_disk_percent"], 7.2);
        assert_eq!(a["uptime_seconds"], 90_061);
        assert_eq!(v["cells"][1]["vitals"], Value::Null);
    }
}
