//! The tree's semantics over a fake runner: a Run's path says what it does
//! ("ok", "exit:N", "hang" until cancelled).

use std::sync::Mutex;

use super::*;

#[derive(Default)]
struct Fake {
    events: Mutex<Vec<String>>,
}

impl Fake {
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
    fn push(&self, e: String) {
        self.events.lock().unwrap().push(e);
    }
}

#[async_trait::async_trait]
impl StepRunner for Fake {
    async fn step(&self, At { at, source, cancel }: At<'_>, leaf: Leaf<'_>) -> Result<(), StepError> {
        let run = match leaf {
            Leaf::Run(run) => run,
            Leaf::Download(_) | Leaf::Upload(_) => {
                self.push(format!("transfer {at}"));
                return Ok(());
            }
        };
        self.push(format!("run {at} {}", run.path));
        if let Some(code) = run.path.strip_prefix("exit:") {
            return Err(StepError::Emittable(format!("{source}: Exited with status {code}")));
        }
        if run.path == "hang" {
            cancel.cancelled().await;
            self.push(format!("cancelled {at}"));
            return Err(StepError::Cancelled);
        }
        Ok(())
    }
    fn emit(&self, source: &str, msg: &str, stderr: bool) {
        self.push(format!("{} {source} {msg}", if stderr { "ERR" } else { "OUT" }));
    }
}

fn run(path: &str) -> bbs::Action {
    bbs::Action { run_action: Some(bbs::RunAction { path: path.into(), ..Default::default() }), ..Default::default() }
}

fn serial(actions: Vec<bbs::Action>) -> bbs::Action {
    bbs::Action { serial_action: Some(bbs::SerialAction { actions, ..Default::default() }), ..Default::default() }
}

fn parallel(actions: Vec<bbs::Action>) -> bbs::Action {
    bbs::Action { parallel_action: Some(bbs::ParallelAction { actions, ..Default::default() }), ..Default::default() }
}

fn codependent(actions: Vec<bbs::Action>) -> bbs::Action {
    bbs::Action {
        codependent_action: Some(bbs::CodependentAction { actions, ..Default::default() }),
        ..Default::default()
    }
}

async fn go(f: &Fake, a: &bbs::Action) -> Result<(), StepError> {
    validate(a, "action")?;
    perform(f, a, "action".into(), "APP/PROC/WEB", CancellationToken::new()).await
}

#[tokio::test]
async fn serial_stops_at_the_first_error() {
    let f = Fake::default();
    let r = go(&f, &serial(vec![run("ok"), run("exit:3"), run("ok")])).await;
    assert_eq!(r.unwrap_err().to_string(), "APP/PROC/WEB: Exited with status 3");
    assert_eq!(f.events(), vec!["run action.0 ok", "run action.1 exit:3"]);
}

#[tokio::test]
async fn parallel_waits_for_all_and_joins_errors() {
    let f = Fake::default();
    let r = go(&f, &parallel(vec![run("exit:1"), run("ok"), run("exit:2")])).await;
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("Exited with status 1") && msg.contains("; ") && msg.contains("status 2"), "{msg}");
    assert_eq!(f.events().len(), 3);
}

#[tokio::test]
async fn codependent_ends_all_when_one_ends() {
    let f = Fake::default();
    let r = go(&f, &codependent(vec![run("hang"), run("exit:3")])).await;
    // The cancelled one is left out of the reason.
    assert_eq!(r.unwrap_err().to_string(), "APP/PROC/WEB: Exited with status 3");
    assert!(f.events().contains(&"cancelled action.0".to_string()));
    let f = Fake::default();
    let r = go(&f, &codependent(vec![run("hang"), run("ok")])).await;
    assert_eq!(r.unwrap_err().to_string(), CODEPENDENT_EXITED);
}

#[tokio::test]
async fn try_never_fails_and_timeout_cancels_with_diegos_message() {
    let f = Fake::default();
    let t = bbs::Action {
        try_action: Some(Box::new(bbs::TryAction { action: Some(Box::new(run("exit:1"))), ..Default::default() })),
        ..Default::default()
    };
    assert!(go(&f, &t).await.is_ok());
    let timeout = |inner, ms| bbs::Action {
        timeout_action: Some(Box::new(bbs::TimeoutAction {
            action: Some(Box::new(inner)),
            timeout_ms: ms,
            ..Default::default()
        })),
        ..Default::default()
    };
    let r = go(&f, &timeout(run("hang"), 50)).await;
    assert_eq!(r.unwrap_err().to_string(), "exceeded 50ms timeout");
    assert!(go(&f, &timeout(run("ok"), 5000)).await.is_ok());
    let e = go(&f, &timeout(run("ok"), 0)).await.unwrap_err();
    assert!(e.to_string().contains("timeout_ms"), "{e}");
}

#[tokio::test]
async fn emit_progress_logs_around_its_action() {
    let f = Fake::default();
    let ep = |inner| bbs::Action {
        emit_progress_action: Some(Box::new(bbs::EmitProgressAction {
            action: Some(Box::new(inner)),
            start_message: "Starting".into(),
            success_message: "Done".into(),
            failure_message_prefix: "Failed".into(),
            log_source: "STG".into(),
        })),
        ..Default::default()
    };
    go(&f, &ep(run("ok"))).await.unwrap();
    assert!(go(&f, &ep(run("exit:4"))).await.is_err());
    let ev = f.events();
    assert!(ev.contains(&"OUT STG Starting".to_string()));
    assert!(ev.contains(&"OUT STG Done".to_string()));
    assert!(ev.contains(&"ERR STG Failed: STG: Exited with status 4".to_string()), "{ev:?}");
}

#[test]
fn empty_actions_and_unresumable_trees_are_named() {
    let e = validate(&bbs::Action::default(), "setup").unwrap_err();
    assert!(e.to_string().contains("setup"), "{e}");
    let dl = bbs::Action { download_action: Some(Default::default()), ..Default::default() };
    assert!(resumable(&codependent(vec![run("ok"), serial(vec![run("ok")])])).is_ok());
    let e = resumable(&serial(vec![run("ok"), dl])).unwrap_err();
    assert!(e.contains("Download"), "{e}");
}
