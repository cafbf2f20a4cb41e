//! Staging an app and waiting for its instances to run, as `push`, `start`,
//! `restart` and `scale` do: the staging log as it comes, then a poll of the
//! instances until each process type runs one, one type's all crashed, or
//! the time is up.

use std::time::{Duration, Instant};

use crate::api::{Client, Ctx, Fail};
use crate::render;
use celld_proto as pb;

/// How often `push`, `start`, `restart` and `scale` look at the instances.
const POLL: Duration = Duration::from_millis(500);
/// Beyond the health check timeout, what an instance gets to be placed and
/// have its droplet downloaded before cellctl gives up waiting.
const START_GRACE: Duration = Duration::from_secs(30);

/// Stages the app's latest package, printing the staging log as it comes.
pub(super) async fn stage(ctx: &Ctx, c: &mut Client, name: &str) -> Result<(), Fail> {
    use pb::staging_event::Event;
    println!("\nStaging app and tracing logs...");
    let req = pb::StageAppRequest { app: Some(ctx.app_ref(name)) };
    let mut events = c.stage_app(req).await.map_err(|s| ctx.fail(s))?.into_inner();
    // Dropped (cleared) on every way out.
    let mut bar = crate::progress::StagingBar::default();
    while let Some(ev) = events.message().await.map_err(|s| ctx.fail(s))? {
        match ev.event {
            Some(Event::Log(l)) => bar.println(l.message.trim_end_matches(['\r', '\n'])),
            Some(Event::Progress(p)) => bar.update(&p),
            Some(Event::Result(_)) => return Ok(()),
            Some(Event::Failure(f)) => {
                return Err(Fail::Failed(format!("staging failed: {} - {}", f.reason, f.message)));
            }
            Some(Event::Started(_)) | None => {}
        }
    }
    Err(Fail::Failed(format!(
        "the staging stream ended without a result: see 'cellctl app {name}' and 'cellctl logs {name} --recent'"
    )))
}

/// How a start is going, from the instances the server reports.
#[derive(Debug, PartialEq, Eq)]
pub enum StartState {
    Running,
    Crashed,
    Waiting,
}

/// cf v8's rule, per process type: one with no instances desired, or with
/// at least one running, is up; one whose instances all crashed fails the
/// start; the start succeeds once every type is up.
pub fn start_state(d: &pb::AppDetail) -> StartState {
    let web;
    let processes: Vec<(u32, &[pb::AppInstance])> = if d.processes.is_empty() {
        // A server without process types: the app's own count is web's.
        web = d.app.as_ref().map_or(0, |a| a.instances);
        vec![(web, d.instances.as_slice())]
    } else {
        d.processes.iter().map(|p| (p.process.as_ref().map_or(0, |p| p.instances), p.instances.as_slice())).collect()
    };
    let mut all_up = true;
    for (want, instances) in processes {
        // Instances beyond the desired count are on their way out.
        let current: Vec<_> = instances.iter().filter(|i| i.index < want).collect();
        if want == 0 || current.iter().any(|i| i.state == "running") {
            continue;
        }
        if !current.is_empty() && current.iter().all(|i| i.state == "crashed") {
            return StartState::Crashed;
        }
        all_up = false;
    }
    if all_up { StartState::Running } else { StartState::Waiting }
}

/// Polls the app until each process type has an instance running, one
/// type's instances all crashed, or the health check timeout (plus time to
/// be placed) passes; then shows it like `cf app`.
pub(super) async fn wait_started(ctx: &Ctx, c: &mut Client, name: &str, health_timeout: u32) -> Result<(), Fail> {
    println!("Waiting for app {name} to start...\n");
    let timeout = Duration::from_secs(u64::from(if health_timeout == 0 { 60 } else { health_timeout }));
    let deadline = Instant::now() + timeout + START_GRACE;
    loop {
        let d = c.get_app(ctx.app_ref(name)).await.map_err(|s| ctx.fail(s))?.into_inner();
        let state = start_state(&d);
        if state != StartState::Waiting || Instant::now() >= deadline {
            print!("{}", render::app_detail(&d, ctx.style));
            let tip = format!("\nTIP: use 'cellctl logs {name} --recent' for more information");
            return match state {
                StartState::Running => Ok(()),
                StartState::Crashed => Err(Fail::Failed(format!("Start unsuccessful{tip}"))),
                StartState::Waiting => Err(Fail::Failed(format!(
                    "Start app timeout: no instance was running after {}s{tip}",
                    (timeout + START_GRACE).as_secs()
                ))),
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_succeeds_once_any_instance_of_each_type_runs() {
        let inst = |index, state: &str| pb::AppInstance { index, state: state.into(), ..Default::default() };
        let detail = |want, list: Vec<pb::AppInstance>| pb::AppDetail {
            app: Some(pb::App { instances: want, ..Default::default() }),
            instances: list,
            processes: vec![],
        };
        assert_eq!(start_state(&detail(2, vec![inst(0, "starting"), inst(1, "starting")])), StartState::Waiting);
        assert_eq!(start_state(&detail(2, vec![inst(0, "running"), inst(1, "starting")])), StartState::Running);
        // One crashing instance does not fail a start another instance made.
        assert_eq!(start_state(&detail(2, vec![inst(0, "running"), inst(1, "crashed")])), StartState::Running);
        assert_eq!(start_state(&detail(2, vec![inst(0, "crashed"), inst(1, "starting")])), StartState::Waiting);
        assert_eq!(start_state(&detail(2, vec![inst(0, "crashed"), inst(1, "crashed")])), StartState::Crashed);
        // An instance being scaled away does not count either way.
        assert_eq!(start_state(&detail(1, vec![inst(0, "crashed"), inst(1, "running")])), StartState::Crashed);
        assert_eq!(start_state(&detail(0, vec![])), StartState::Running);
        // Every type must be up; a type with no instances is.
        let typed = |list: Vec<(u32, Vec<pb::AppInstance>)>| pb::AppDetail {
            processes: list
                .into_iter()
                .map(|(want, instances)| pb::ProcessDetail {
                    process: Some(pb::AppProcess { instances: want, ..Default::default() }),
                    instances,
                })
                .collect(),
            ..Default::default()
        };
        assert_eq!(start_state(&typed(vec![(1, vec![inst(0, "running")]), (0, vec![])])), StartState::Running);
        assert_eq!(
            start_state(&typed(vec![(1, vec![inst(0, "running")]), (1, vec![inst(0, "starting")])])),
            StartState::Waiting
        );
        assert_eq!(
            start_state(&typed(vec![(1, vec![inst(0, "running")]), (1, vec![inst(0, "crashed")])])),
            StartState::Crashed
        );
    }
}
