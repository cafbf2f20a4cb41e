//! One-off tasks (`cf run-task`): a Diego Task from the app's droplet and
//! environment, and CF's task states read back from Diego's.

use std::collections::BTreeMap;

use super::AppsError;
use super::layer::AppLayer;
use super::process::{default_security_groups, not_staged};
use super::store::TaskRecord;
use crate::executor::logs::now_ns;
use celld_base::guid::new_guid;
use celld_proto as pb;

const TASK_DOMAIN: &str = "cf-tasks";

impl AppLayer {
    pub async fn run_task(&self, r: pb::RunTaskRequest) -> Result<pb::AppTask, AppsError> {
        let app = self.find(&r.app.clone().unwrap_or_default())?;
        let droplet = app.droplet.clone().ok_or_else(|| not_staged(&app))?;
        if r.command.trim().is_empty() {
            return Err(AppsError::InvalidArgument("a task needs a command".into()));
        }
        if !r.name.is_empty() && (r.name.len() > 255 || r.name.chars().any(|c| c.is_control() || c == '/')) {
            return Err(AppsError::InvalidArgument(format!("task name {:?} is not valid", r.name)));
        }
        let rec = self.store.add_task(TaskRecord {
            guid: new_guid(),
            app_guid: app.guid.clone(),
            sequence_id: 0,
            name: r.name,
            command: r.command.clone(),
            memory_mb: if r.memory_mb == 0 { app.memory_mb } else { r.memory_mb },
            disk_mb: if r.disk_mb == 0 { app.disk_mb } else { r.disk_mb },
            created_at: now_ns(),
            ..Default::default()
        })?;
        let env = self.app_env(&app, None)?;
        let task = pb::Task {
            task_guid: rec.guid.clone(),
            domain: TASK_DOMAIN.into(),
            droplet_key: droplet.key.clone(),
            rootfs: format!("preloaded:{}", droplet.stack),
            command: r.command,
            env: env.into_iter().map(|(name, value)| pb::EnvironmentVariable { name, value }).collect(),
            memory_mb: rec.memory_mb,
            disk_mb: rec.disk_mb,
            max_pids: 1024,
            log_guid: app.guid.clone(),
            log_source: format!("APP/TASK/{}", rec.name),
            egress_rules: default_security_groups(),
            ..Default::default()
        };
        if let Err(e) = self.sched().desire_task(task).await {
            let _ = self.store.finish_task(&rec.guid, "FAILED", e.message());
            return Err(e.into());
        }
        self.event(
            &app,
            "audit.app.task.create",
            BTreeMap::from([("task_guid".to_string(), rec.guid.clone()), ("name".to_string(), rec.name.clone())]),
        );
        Ok(proto_task(&rec, "PENDING", ""))
    }

    pub async fn tasks(&self, r: &pb::AppRef) -> Result<Vec<pb::AppTask>, AppsError> {
        let app = self.find(r)?;
        let mut out = Vec::new();
        for t in self.store.tasks(&app.guid)? {
            if !t.state.is_empty() {
                out.push(proto_task(&t, &t.state.clone(), &t.failure_reason.clone()));
                continue;
            }
            let (state, reason) = match self
                .sched()
                .get_task(pb::GetTaskRequest { task_guid: t.guid.clone() })
                .await
                .map(|r| r.into_inner())
            {
                Ok(task) => task_state(&task),
                Err(s) if s.code() == tonic::Code::NotFound => {
                    ("FAILED".to_string(), "task record is gone".to_string())
                }
                Err(s) => return Err(s.into()),
            };
            if state == "SUCCEEDED" || state == "FAILED" {
                let _ = self.store.finish_task(&t.guid, &state, &reason);
            }
            out.push(proto_task(&t, &state, &reason));
        }
        Ok(out)
    }
}

impl AppLayer {
    /// `cf terminate-task`: the scheduler cancels it (the task fails with
    /// "task was cancelled"); a task that already ended is refused.
    pub async fn cancel_task(&self, r: &pb::AppRef, task_guid: &str) -> Result<pb::AppTask, AppsError> {
        let app = self.find(r)?;
        let t = self
            .store
            .tasks(&app.guid)?
            .into_iter()
            .find(|t| t.guid == task_guid || t.sequence_id.to_string() == task_guid)
            .ok_or_else(|| AppsError::NotFound(format!("Task '{task_guid}' not found for app '{}'.", app.name)))?;
        if !t.state.is_empty() {
            return Err(AppsError::FailedPrecondition(format!(
                "Task state is {} and therefore cannot be canceled",
                t.state
            )));
        }
        self.sched().cancel_task(pb::CancelTaskRequest { task_guid: t.guid.clone() }).await?;
        self.event(&app, "audit.app.task.cancel", BTreeMap::from([("task_guid".to_string(), t.guid.clone())]));
        Ok(proto_task(&t, "CANCELING", ""))
    }
}

pub(super) fn proto_task(t: &TaskRecord, state: &str, reason: &str) -> pb::AppTask {
    pb::AppTask {
        guid: t.guid.clone(),
        sequence_id: t.sequence_id,
        name: t.name.clone(),
        command: t.command.clone(),
        state: state.to_string(),
        failure_reason: reason.to_string(),
        created_at: t.created_at,
        memory_mb: t.memory_mb,
        disk_mb: t.disk_mb,
    }
}

/// CF's task states from Diego's.
fn task_state(t: &pb::Task) -> (String, String) {
    use pb::task::State;
    match t.state() {
        State::Pending | State::Invalid => ("PENDING".into(), String::new()),
        State::Running => ("RUNNING".into(), String::new()),
        State::Completed | State::Resolving if t.failed => ("FAILED".into(), t.failure_reason.clone()),
        State::Completed | State::Resolving => ("SUCCEEDED".into(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_are_cfs() {
        let mut t = pb::Task { state: pb::task::State::Completed as i32, ..Default::default() };
        assert_eq!(task_state(&t).0, "SUCCEEDED");
        t.failed = true;
        t.failure_reason = "boom".into();
        assert_eq!(task_state(&t), ("FAILED".into(), "boom".into()));
        t.state = pb::task::State::Running as i32;
        assert_eq!(task_state(&t).0, "RUNNING");
    }
}
