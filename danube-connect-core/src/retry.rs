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

/// Why [`RetryPolicy::run_until`] gave up.
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

    /// The verdicts of one operation's retries: after each failed attempt,
    /// [`Attempts::after_failure`] says how long to wait before the next one, or that the
    /// attempts, the elapsed time or the kind of error end it. For loops that cannot hand
    /// their operation to [`run_until`](Self::run_until) (one that borrows its caller
    /// mutably); they must watch shutdown themselves while they wait.
    pub fn attempts(&self) -> Attempts {
        Attempts { policy: self.clone(), started: Instant::now(), delays: self.delays(), attempt: 0 }
    }

    /// Runs `op` until it succeeds, returns a non-retryable error, or the attempts or
    /// elapsed time run out; `on_retry` is called before each new attempt. Gives up waiting
    /// as soon as `stop` is cancelled: `None` then means "stopped before it succeeded or
    /// failed for good", so the caller leaves the work undone (a sink record unacked, to be
    /// redelivered) instead of treating it as failed. An attempt already running is
    /// awaited; none starts after `stop`, so a shutdown during an outage is not held up by
    /// backoff sleeps.
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
        let mut attempts = self.attempts();
        loop {
            let error = match op(attempts.attempt + 1).await {
                Ok(value) => return Some(Ok(value)),
                Err(error) => error,
            };
            let Some(delay) = attempts.after_failure(&error) else {
                return Some(Err(RetryFailure { error, attempts: attempts.attempt }));
            };
            if stop.is_cancelled() {
                return None;
            }
            on_retry(&error, attempts.attempt, delay);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return None,
            }
        }
    }
}

/// The retries of one operation under a [`RetryPolicy`] (from [`RetryPolicy::attempts`]).
pub struct Attempts {
    policy: RetryPolicy,
    started: Instant,
    delays: Box<dyn Iterator<Item = Duration> + Send + Sync>,
    attempt: usize,
}

impl std::fmt::Debug for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempts")
            .field("failed", &self.attempt)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl Attempts {
    /// Counts a failed attempt and returns the delay before the next one, or `None` when
    /// there is none: the error is not retryable, or `retry.max_attempts` or
    /// `retry.max_elapsed` would be passed. A `retry_after` hint lengthens the delay.
    pub fn after_failure(&mut self, error: &ConnectorError) -> Option<Duration> {
        self.attempt += 1;
        let ConnectorError::Retryable { retry_after, .. } = error else { return None };
        let config = &self.policy.config;
        if self.attempt >= config.max_attempts {
            return None;
        }
        let backoff = self.delays.next().unwrap_or(config.max_backoff);
        let delay = retry_after.map_or(backoff, |hint| hint.max(backoff));
        (self.started.elapsed() + delay <= config.max_elapsed).then_some(delay)
    }

    /// How many attempts have failed so far.
    pub fn failed(&self) -> usize {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs `op` with a stop token nobody cancels.
    async fn run_to_end<T, F, Fut>(policy: &RetryPolicy, op: F) -> Result<T, RetryFailure>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, ConnectorError>>,
    {
        policy.run_until(&CancellationToken::new(), op, |_, _, _| {}).await.expect("nothing cancels the token")
    }

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
        let result = run_to_end(&fast(5), |_| async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(ConnectorError::retryable_msg("down"))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(result.expect("success"), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let failure = run_to_end(&fast(3), |_| async { Err::<(), _>(ConnectorError::retryable_msg("down")) })
            .await
            .expect_err("gives up");
        assert_eq!(failure.attempts, 3);
    }

    #[tokio::test]
    async fn invalid_record_is_not_retried() {
        let failure = run_to_end(&fast(5), |_| async { Err::<(), _>(ConnectorError::invalid_msg("bad")) })
            .await
            .expect_err("fails");
        assert_eq!(failure.attempts, 1);
    }

    #[tokio::test]
    async fn retry_after_hint_lengthens_the_delay() {
        let started = Instant::now();
        let calls = AtomicUsize::new(0);
        run_to_end(&fast(2), |_| async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(ConnectorError::Retryable {
                    message: "429".into(),
                    retry_after: Some(Duration::from_millis(200)),
                    source: None,
                })
            } else {
                Ok(())
            }
        })
        .await
        .expect("success");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn attempts_end_at_max_elapsed_and_on_an_error_that_is_not_retryable() {
        let policy = RetryPolicy::new(RetryConfig {
            max_attempts: 1000,
            initial_backoff: Duration::from_millis(400),
            max_backoff: Duration::from_millis(400),
            max_elapsed: Duration::from_secs(1),
            ..RetryConfig::default()
        });
        let mut attempts = policy.attempts();
        let down = ConnectorError::retryable_msg("down");
        let first = attempts.after_failure(&down).expect("a first retry fits into 1 s");
        assert!(first >= Duration::from_millis(400), "{first:?}");
        let hint = ConnectorError::Retryable {
            message: "429".into(),
            retry_after: Some(Duration::from_secs(2)),
            source: None,
        };
        assert_eq!(attempts.after_failure(&hint), None, "a 2 s hint passes max_elapsed (1 s)");
        assert_eq!(attempts.failed(), 2);
        assert_eq!(policy.attempts().after_failure(&ConnectorError::invalid_msg("bad")), None, "not retryable");
    }
}
