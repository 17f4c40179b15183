//! Retry with exponential backoff and jitter (delays from `backon`), bounded by attempts
//! and elapsed time, honouring a `retry_after` hint from the outside system.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::config::{BackoffStrategy, RetryConfig};
use crate::error::ConnectorError;

/// The retry policy built from [`RetryConfig`].
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    config: RetryConfig,
}

/// The delays of a reconnect loop: [`next_delay`](Self::next_delay) walks the policy's
/// jittered sequence, [`reset`](Self::reset) starts it over after a success.
pub struct Backoff {
    policy: RetryPolicy,
    delays: Box<dyn Iterator<Item = Duration> + Send + Sync>,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff").field("config", &self.policy.config).finish_non_exhaustive()
    }
}

impl Backoff {
    /// Exponential, jittered delays from `initial` up to `max` (the other retry settings
    /// at their defaults).
    pub fn between(initial: Duration, max: Duration) -> Self {
        RetryPolicy::new(RetryConfig { initial_backoff: initial, max_backoff: max, ..RetryConfig::default() }).backoff()
    }

    /// The delay to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.policy.config.max_backoff)
    }

    /// Starts the sequence over (after a successful attempt).
    pub fn reset(&mut self) {
        self.delays = self.policy.delays();
    }
}

/// Why [`RetryPolicy::run`] gave up.
#[derive(Debug)]
pub struct RetryFailure {
    /// The last error.
    pub error: ConnectorError,
    /// How many attempts were made.
    pub attempts: usize,
}

impl RetryPolicy {
    /// A policy from its configuration.
    pub fn new(config: RetryConfig) -> Self {
        Self { config }
    }

    /// The configuration in force.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// The jittered delay sequence of the configured strategy (unbounded in count).
    pub fn delays(&self) -> Box<dyn Iterator<Item = Duration> + Send + Sync> {
        match self.config.strategy {
            BackoffStrategy::Exponential => Box::new(
                ExponentialBuilder::default()
                    .with_min_delay(self.config.initial_backoff)
                    .with_max_delay(self.config.max_backoff)
                    .with_factor(2.0)
                    .with_jitter()
                    .without_max_times()
                    .build(),
            ),
            BackoffStrategy::Linear => {
                let (initial, max) = (self.config.initial_backoff, self.config.max_backoff);
                // Like backon's jitter: a random extra of up to the delay itself.
                Box::new((1u32..).map(move |n| {
                    let delay = initial.saturating_mul(n).min(max);
                    delay + delay.mul_f64(rand::random::<f64>())
                }))
            }
        }
    }

    /// A restartable walk over [`delays`](Self::delays), for reconnect loops.
    pub fn backoff(&self) -> Backoff {
        Backoff { delays: self.delays(), policy: self.clone() }
    }

    /// Runs `op` until it succeeds, returns a non-retryable error, or the attempts or
    /// elapsed time run out. `on_retry` is called before each new attempt.
    pub async fn run<T, F, Fut>(
        &self,
        op: F,
        on_retry: impl FnMut(&ConnectorError, usize, Duration),
    ) -> Result<T, RetryFailure>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, ConnectorError>>,
    {
        let never = CancellationToken::new();
        match self.run_until(&never, op, on_retry).await {
            Some(result) => result,
            None => unreachable!("a token nobody holds is never cancelled"),
        }
    }

    /// Like [`run`](Self::run), but gives up waiting as soon as `stop` is cancelled: `None`
    /// then means "stopped before it succeeded or failed for good", so the caller leaves the
    /// work undone (a sink record unacked, to be redelivered) instead of treating it as
    /// failed. An attempt already running is awaited; none starts after `stop`, so a
    /// shutdown during an outage is not held up by backoff sleeps.
    pub async fn run_until<T, F, Fut>(
        &self,
        stop: &CancellationToken,
        mut op: F,
        mut on_retry: impl FnMut(&ConnectorError, usize, Duration),
    ) -> Option<Result<T, RetryFailure>>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, ConnectorError>>,
    {
        let started = Instant::now();
        let mut delays = self.delays();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match op(attempt).await {
                Ok(value) => return Some(Ok(value)),
                Err(error) => error,
            };
            let retry_after = match &error {
                ConnectorError::Retryable { retry_after, .. } => *retry_after,
                _ => return Some(Err(RetryFailure { error, attempts: attempt })),
            };
            if attempt >= self.config.max_attempts {
                return Some(Err(RetryFailure { error, attempts: attempt }));
            }
            let backoff = delays.next().unwrap_or(self.config.max_backoff);
            let delay = retry_after.map_or(backoff, |hint| hint.max(backoff));
            if started.elapsed() + delay > self.config.max_elapsed {
                return Some(Err(RetryFailure { error, attempts: attempt }));
            }
            if stop.is_cancelled() {
                return None;
            }
            on_retry(&error, attempt, delay);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fast(max_attempts: usize) -> RetryPolicy {
        RetryPolicy::new(RetryConfig {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_elapsed: Duration::from_secs(5),
            ..RetryConfig::default()
        })
    }

    #[test]
    fn backoff_grows_to_the_cap_and_starts_over_after_reset() {
        let policy = RetryPolicy::new(RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..RetryConfig::default()
        });
        let mut backoff = policy.backoff();
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200), "{first:?}");
        let later: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= Duration::from_millis(700)), "capped (with jitter): {later:?}");
        assert!(later.last().is_some_and(|d| *d >= Duration::from_millis(350)), "reached the cap: {later:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(200), "starts over");
    }

    #[test]
    fn linear_delays_grow_by_the_initial_step_with_jitter_and_stop_at_the_cap() {
        let policy = RetryPolicy::new(RetryConfig {
            strategy: BackoffStrategy::Linear,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..RetryConfig::default()
        });
        let delays: Vec<Duration> = policy.delays().take(5).collect();
        for (i, (delay, base)) in delays.iter().zip([100u64, 200, 300, 350, 350]).enumerate() {
            let base = Duration::from_millis(base);
            assert!(*delay >= base && *delay <= base * 2, "delay {i}: {delay:?} not in [{base:?}, 2x]");
        }
    }

    #[tokio::test]
    async fn a_stop_during_the_backoff_ends_the_wait_at_once_without_a_verdict() {
        let policy = RetryPolicy::new(RetryConfig {
            max_attempts: 100,
            initial_backoff: Duration::from_secs(20),
            max_backoff: Duration::from_secs(20),
            max_elapsed: Duration::from_secs(600),
            ..RetryConfig::default()
        });
        let stop = CancellationToken::new();
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let canceller = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            canceller.cancel();
        });
        let outcome: Option<Result<(), RetryFailure>> = policy
            .run_until(
                &stop,
                |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err(ConnectorError::retryable_msg("down")) }
                },
                |_, _, _| {},
            )
            .await;
        assert!(outcome.is_none(), "stopped, neither done nor failed");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no attempt after the stop");
        assert!(started.elapsed() < Duration::from_secs(5), "the 20 s backoff was cut short: {:?}", started.elapsed());
        // Already stopped: one attempt, then no wait at all.
        let outcome: Option<Result<(), RetryFailure>> =
            policy.run_until(&stop, |_| async { Err(ConnectorError::retryable_msg("down")) }, |_, _, _| {}).await;
        assert!(outcome.is_none());
        let done = policy.run_until(&stop, |_| async { Ok::<_, ConnectorError>(7) }, |_, _, _| {}).await;
        assert_eq!(done.map(|r| r.ok()), Some(Some(7)), "a success is a success even while stopping");
    }

    #[tokio::test]
    async fn retryable_error_is_retried_until_success() {
        let calls = AtomicUsize::new(0);
        let result = fast(5)
            .run(
                |_| async {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(ConnectorError::retryable_msg("down"))
                    } else {
                        Ok(7)
                    }
                },
                |_, _, _| {},
            )
            .await;
        assert_eq!(result.expect("success"), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let failure = fast(3)
            .run(|_| async { Err::<(), _>(ConnectorError::retryable_msg("down")) }, |_, _, _| {})
            .await
            .expect_err("gives up");
        assert_eq!(failure.attempts, 3);
    }

    #[tokio::test]
    async fn invalid_record_is_not_retried() {
        let failure = fast(5)
            .run(|_| async { Err::<(), _>(ConnectorError::invalid_msg("bad")) }, |_, _, _| {})
            .await
            .expect_err("fails");
        assert_eq!(failure.attempts, 1);
    }

    #[tokio::test]
    async fn retry_after_hint_lengthens_the_delay() {
        let started = Instant::now();
        let calls = AtomicUsize::new(0);
        fast(2)
            .run(
                |_| async {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(ConnectorError::Retryable {
                            message: "429".into(),
                            retry_after: Some(Duration::from_millis(200)),
                            source: None,
                        })
                    } else {
                        Ok(())
                    }
                },
                |_, _, _| {},
            )
            .await
            .expect("success");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
