//! The flusher of a table: seals lingering spool segments and inserts sealed ones, oldest
//! first; restarted by its supervisor when it panics.

use std::sync::Arc;

use danube_connect_core::retry::Backoff;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::{Inner, Table};

/// Runs a table's flusher until stopped, starting it again (after a backoff) when it
/// panics: intake keeps acking records into the spool, so inserts must not stop for good.
pub(super) async fn supervise_flusher(inner: Arc<Inner>, table: Arc<Table>, stop: CancellationToken) {
    let mut backoff = inner.retry.backoff();
    loop {
        let task = tokio::spawn(flusher(inner.clone(), table.clone(), stop.clone()));
        let join = match task.await {
            Ok(()) => return,
            Err(join) => join,
        };
        if stop.is_cancelled() {
            return;
        }
        let delay = backoff.next_delay();
        error!(table = %table.label, error = %join, restart_in = ?delay, "the flusher failed; restarting it (the rows stay in the spool)");
        inner.set_problem(Some(format!("the flusher of {} failed: {join}", table.label)));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Seals lingering segments and inserts sealed ones, oldest first, until stopped. A spool
/// error is reported to health and retried with backoff; it never ends the loop.
async fn flusher(inner: Arc<Inner>, table: Arc<Table>, stop: CancellationToken) {
    let linger = inner.config.batch.max_linger;
    let label = [table.label.clone()];
    let mut spool_backoff = inner.retry.backoff();
    // Waits a backoff step after a spool failure; false when stopped meanwhile.
    let pause = |backoff: &mut Backoff, problem: String| {
        let delay = backoff.next_delay();
        error!(table = %table.label, error = %problem, retry_in = ?delay, "spool operation failed; retrying");
        inner.set_problem(Some(format!("spool of {}: {problem}", table.label)));
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => true,
                _ = stop.cancelled() => false,
            }
        }
    };
    loop {
        let spool = table.spool.clone();
        match tokio::task::spawn_blocking(move || spool.seal_lingering(Some(linger))).await {
            Ok(Ok(_)) => {}
            // The segments are queued anyway; only the directory sync failed.
            Ok(Err(error)) => {
                error!(table = %table.label, error = %danube_connect_core::error::error_chain(&error), "cannot seal a spool segment")
            }
            Err(join) => error!(table = %table.label, error = %join, "spool seal task failed"),
        }
        while let Some(segment) = table.spool.front() {
            let spool = table.spool.clone();
            let seg = segment.clone();
            let loaded = match tokio::task::spawn_blocking(move || spool.load(&seg)).await {
                Ok(Ok(loaded)) => loaded,
                Ok(Err(error)) => {
                    if pause(&mut spool_backoff, danube_connect_core::error::error_chain(&error)).await {
                        continue;
                    }
                    return;
                }
                Err(join) => {
                    if pause(&mut spool_backoff, format!("spool read task failed: {join}")).await {
                        continue;
                    }
                    return;
                }
            };
            if inner.insert_segment(&table, &loaded, &stop).await.is_err() {
                return;
            }
            let loaded = Arc::new(loaded);
            // The rows are in ClickHouse: only the bookkeeping is retried, never the insert.
            loop {
                let spool = table.spool.clone();
                let done = loaded.clone();
                let problem = match tokio::task::spawn_blocking(move || spool.complete(&done)).await {
                    Ok(Ok(())) => break,
                    Ok(Err(error)) => format!(
                        "cannot mark an inserted segment done: {}",
                        danube_connect_core::error::error_chain(&error)
                    ),
                    Err(join) => format!("spool complete task failed: {join}"),
                };
                if !pause(&mut spool_backoff, problem).await {
                    return;
                }
            }
            spool_backoff.reset();
            inner.set_problem(None);
            inner.metrics.spool_bytes.with_label_values(&[&label[0]]).set(table.spool.bytes() as i64);
            table.space.notify_waiters();
        }
        let deadline = table.spool.next_deadline(linger).map(tokio::time::Instant::from_std);
        let wait = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = table.wake.notified() => {}
            _ = wait => {}
            _ = stop.cancelled() => return,
        }
    }
}
