//! Staging an app and waiting for its instances to run, as `push`, `start`,
//! `restart` and `scale` do: the staging log as it comes, then a poll of the
//! instances until all run, one crashes, or the time is up.

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
    while let Some(ev) = events.message().await.map_err(|s| ctx.fail(s))? {
        match ev.event {
            Some(Event::Log(l)) => println!("{}", l.message.trim_end_matches(['\r', '\n'])),
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

pub fn start_state(d: &pb::AppDetail) -> StartState {
    let want = d.app.as_ref().map_or(0, |a| a.instances);
    // Instances beyond the desired count are on their way out.
    let current: Vec<_> = d.instances.iter().filter(|i| i.index < want).collect();
    if current.iter().any(|i| i.state == "crashed") {
        StartState::Crashed
    } else if current.iter().filter(|i| i.state == "running").count() >= want as usize {
        StartState::Running
    } else {
        StartState::Waiting
    }
}

/// Polls the app until all its instances run, one crashes, or the health
/// check timeout (plus time to be placed) passes; then shows it like `cf app`.
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
                    "Start unsuccessful: not every instance was running after {}s{tip}",
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
    fn start_waits_for_every_desired_instance() {
        let inst = |index, state: &str| pb::AppInstance { index, state: state.into(), ..Default::default() };
        let detail = |want, list: Vec<pb::AppInstance>| pb::AppDetail {
            app: Some(pb::App { instances: want, ..Default::default() }),
            instances: list,
        };
        assert_eq!(start_state(&detail(2, vec![inst(0, "running"), inst(1, "starting")])), StartState::Waiting);
        assert_eq!(start_state(&detail(2, vec![inst(0, "running")])), StartState::Waiting);
        assert_eq!(start_state(&detail(2, vec![inst(0, "running"), inst(1, "running")])), StartState::Running);
        assert_eq!(start_state(&detail(2, vec![inst(0, "running"), inst(1, "crashed")])), StartState::Crashed);
        // An instance being scaled away does not count either way.
        assert_eq!(start_state(&detail(1, vec![inst(0, "running"), inst(1, "crashed")])), StartState::Running);
        assert_eq!(start_state(&detail(0, vec![])), StartState::Running);
    }
}
