//! Diego's monitor action (an LRP without a check_definition): run every
//! 0.5 s until it succeeds, within the start timeout; then every 30 s, and
//! the first failure crashes the instance. Reasons are Diego's.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{StepError, StepRunner, perform};
use crate::executor::health::go_duration;
use celld_proto::diego::bbs;

/// Between tries until the first success (Diego's unhealthy interval).
pub const UNHEALTHY_INTERVAL: Duration = Duration::from_millis(500);
/// Between tries once healthy (Diego's healthy interval).
pub const HEALTHY_INTERVAL: Duration = Duration::from_secs(30);

async fn once(r: &dyn StepRunner, monitor: &bbs::Action) -> Result<(), StepError> {
    perform(r, monitor, "monitor".into(), "HEALTH", CancellationToken::new()).await
}

/// Ok once the monitor succeeds; Diego's crash reason if it never does
/// within `timeout` (0: no limit).
pub async fn until_healthy(
    r: &dyn StepRunner,
    monitor: &bbs::Action,
    timeout: Duration,
    interval: Duration,
) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        let err = match once(r, monitor).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !timeout.is_zero() && started.elapsed() >= timeout {
            return Err(format!("Instance never healthy after {}: {err}", go_duration(timeout)));
        }
    }
}

/// Returns Diego's crash reason at the monitor's first failure.
pub async fn until_unhealthy(r: &dyn StepRunner, monitor: &bbs::Action, interval: Duration) -> String {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = once(r, monitor).await {
            return format!("Instance became unhealthy: {e}");
        }
    }
}
