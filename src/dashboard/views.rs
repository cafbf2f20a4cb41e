//! The JSON the page reads, built from the app layer's and the executor's
//! proto messages (never the store's records: those hold registry passwords).

use serde_json::{Value, json};

use super::samples::Sample;
use celld_proto as pb;

/// Nanoseconds (the protos' clock) to the page's milliseconds.
pub fn ms(ns: i64) -> i64 {
    ns / 1_000_000
}

fn resources(r: Option<&pb::Resources>) -> Value {
    match r {
        Some(r) => json!({ "memory_mb": r.memory_mb, "disk_mb": r.disk_mb, "containers": r.containers }),
        None => Value::Null,
    }
}

/// `null` when the cell did not say (the page shows "—").
pub fn vitals(v: Option<&pb::CellVitals>) -> Value {
    let Some(v) = v else { return Value::Null };
    json!({
        "load": [v.load_1m, v.load_5m, v.load_15m],
        "cpu_user_percent": v.cpu_user_percent,
        "cpu_sys_percent": v.cpu_sys_percent,
        "cpu_wait_percent": v.cpu_wait_percent,
        "memory_used_bytes": v.memory_used_bytes,
        "memory_total_bytes": v.memory_total_bytes,
        "swap_used_bytes": v.swap_used_bytes,
        "swap_total_bytes": v.swap_total_bytes,
        "system_disk_percent": v.system_disk_percent,
        "depot_disk_percent": v.depot_disk_percent,
        "uptime_seconds": v.uptime_seconds,
    })
}

pub fn cell(c: &pb::CellStatus) -> Value {
    json!({
        "cell_id": c.cell_id,
        "zone": c.zone,
        "capacity": resources(c.capacity.as_ref()),
        "available": resources(c.available.as_ref()),
        "instances": c.instances,
        "tasks": c.tasks,
        "stacks": c.stacks,
        "evacuating": c.evacuating,
        "vitals": vitals(c.vitals.as_ref()),
    })
}

pub fn instance(i: &pb::AppInstance, process_type: &str, history: Vec<Sample>) -> Value {
    json!({
        "process_type": process_type,
        "index": i.index,
        "state": i.state,
        "since": ms(i.since),
        "instance_guid": i.instance_guid,
        "cell_id": i.cell_id,
        "cpu": i.cpu_percentage,
        "memory": i.memory_bytes,
        "memory_quota": i.memory_quota_bytes,
        "disk": i.disk_bytes,
        "disk_quota": i.disk_quota_bytes,
        "crash_count": i.crash_count,
        "details": i.details,
        "history": history,
    })
}

pub fn event(e: &crate::apps::store::EventRecord) -> Value {
    json!({ "type": e.kind, "actor": e.actor, "timestamp": ms(e.timestamp), "metadata": e.metadata })
}

/// A log line as `cf logs` shows its source: `APP/PROC/WEB/0`, `RTR/0`, `STG/0`.
pub fn log_line(e: &pb::LogEnvelope) -> Value {
    let source = if e.source_instance.is_empty() {
        e.source_type.clone()
    } else {
        format!("{}/{}", e.source_type, e.source_instance)
    };
    let stream = match e.message_type() {
        pb::log_envelope::MessageType::Out => "OUT",
        pb::log_envelope::MessageType::Err => "ERR",
    };
    json!({ "t": ms(e.timestamp), "source": source, "stream": stream, "message": e.message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_vitals_are_null_and_sources_read_as_cf_shows_them() {
        assert_eq!(vitals(None), Value::Null);
        let v = pb::CellVitals { load_1m: 0.5, ..Default::default() };
        assert_eq!(vitals(Some(&v))["load"][0], json!(0.5));
        let e = pb::LogEnvelope {
            source_type: "APP/PROC/WEB".into(),
            source_instance: "0".into(),
            message: "hello".into(),
            timestamp: 2_000_000,
            ..Default::default()
        };
        let l = log_line(&e);
        assert_eq!(l["source"], "APP/PROC/WEB/0");
        assert_eq!(l["stream"], "OUT");
        assert_eq!(l["t"], 2);
    }
}
