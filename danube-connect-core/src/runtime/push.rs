//! The push-source task: the source is never polled (it publishes through
//! `Context::failures` from its own tasks); its `health_check` runs on its own timer
//! until shutdown, then its `shutdown` answers the pending clients.

use tracing::warn;

use super::{Env, SOURCE_HEALTH_INTERVAL};
use crate::connector::PushSource;

pub(super) async fn run_push_source(env: Env, index: usize, mut source: Box<dyn PushSource>) {
    let component = format!("source[{index}]");
    loop {
        let checked = tokio::select! {
            biased;
            _ = env.shutdown.cancelled() => break,
            checked = source.health_check() => checked,
        };
        env.health.set_component(&component, checked.err().map(|e| e.chain()));
        tokio::select! {
            _ = env.shutdown.cancelled() => break,
            _ = tokio::time::sleep(SOURCE_HEALTH_INTERVAL) => {}
        }
    }
    if let Err(error) = source.shutdown().await {
        warn!(error = %error.chain(), "source shutdown failed");
    }
}
