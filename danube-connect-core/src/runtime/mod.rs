//! The runtime: owns the Danube client, runs sources and sinks, drains on shutdown.
//!
//! ```no_run
//! # use danube_connect_core::{Parts, Runtime, RuntimeConfig};
//! # async fn demo(parts: Parts) -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let runtime = Runtime::start(RuntimeConfig::default(), shutdown.clone()).await?;
//! let report = runtime.run(parts).await?;
//! std::process::exit(report.exit_code());
//! # }
//! ```

pub(crate) mod dead_letter;
mod push;
mod sink;
mod source;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use danube_client::DanubeClient;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::client::{probe, DanubeConnection, SchemaRegistry};
use crate::config::RuntimeConfig;
use crate::connector::{Context, Parts};
use crate::error::{ConnectorError, RuntimeError};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::ops;
use crate::publisher::Publisher;
use crate::schema::{SchemaCache, TopicSchemas};
use crate::transform::Transforms;

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    /// Whether every in-flight record was finished (acked, committed or dead-lettered)
    /// before the shutdown deadline.
    pub drained: bool,
    /// The fatal error that stopped the connector, if any.
    pub fatal: Option<ConnectorError>,
}

impl RunReport {
    /// Process exit code: 0 clean, 2 stopped by a fatal error, 3 drain incomplete.
    pub fn exit_code(&self) -> i32 {
        if self.fatal.is_some() {
            2
        } else if !self.drained {
            3
        } else {
            0
        }
    }
}

/// Readiness component set while [`Runtime::run`] starts the connectors.
const STARTING_COMPONENT: &str = "runtime";

/// How often a source's `health_check` runs: between polls for polled sources, on its own
/// timer for push sources.
const SOURCE_HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// Records the first fatal error and stops the whole runtime.
///
/// `has_failed` runs for every record in the sink lanes, so it reads an atomic flag set
/// beside the stored error instead of taking the mutex.
#[derive(Debug, Clone)]
pub(crate) struct Stopper {
    token: CancellationToken,
    failed: Arc<AtomicBool>,
    fatal: Arc<Mutex<Option<ConnectorError>>>,
}

impl Stopper {
    fn new(token: CancellationToken) -> Self {
        Self { token, failed: Arc::new(AtomicBool::new(false)), fatal: Arc::new(Mutex::new(None)) }
    }

    pub(crate) fn fail(&self, error: ConnectorError) {
        error!(error = %error.chain(), "fatal connector error, stopping");
        if let Ok(mut slot) = self.fatal.lock() {
            slot.get_or_insert(error);
        }
        // Set even when the mutex is poisoned: a failure is never lost.
        self.failed.store(true, AtomicOrdering::Release);
        self.token.cancel();
    }

    /// Whether a fatal error was recorded: from then on nothing more is processed or
    /// acked (records left unacked are redelivered after a restart, in order).
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(AtomicOrdering::Acquire)
    }

    fn take(&self) -> Option<ConnectorError> {
        self.fatal.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// Shared pieces every runtime task needs.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub(crate) config: Arc<RuntimeConfig>,
    pub(crate) client: DanubeClient,
    pub(crate) publisher: Publisher,
    pub(crate) metrics: Metrics,
    pub(crate) health: Health,
    pub(crate) shutdown: CancellationToken,
    pub(crate) stopper: Stopper,
    /// Registry schemas for decoding sink records (None when `sink.decode_schemas` is off).
    pub(crate) schema_cache: Option<Arc<SchemaCache>>,
    /// `[[transforms]]`, compiled (None when there is none).
    pub(crate) transforms: Option<Arc<Transforms>>,
}

impl Env {
    /// What a connector gets at start.
    fn context(&self) -> Context {
        let failures = crate::failure::FailureHandler::new(
            self.config.clone(),
            self.publisher.clone(),
            self.metrics.clone(),
            self.stopper.clone(),
            self.shutdown.clone(),
        );
        Context {
            name: self.config.name.clone(),
            publisher: self.publisher.clone(),
            shutdown: self.shutdown.child_token(),
            health: self.health.clone(),
            failures,
            retry: crate::retry::RetryPolicy::new(self.config.retry.clone()),
            ordering: self.config.sink.ordering,
            batch: self.config.sink.batch.clone(),
            metrics: self.metrics.for_connector(),
        }
    }
}

/// A started runtime: connected to Danube, ops port serving.
pub struct Runtime {
    env: Env,
    ops_addr: Option<SocketAddr>,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("name", &self.env.config.name).field("ops_addr", &self.ops_addr).finish()
    }
}

impl Runtime {
    /// Starts the ops port, builds the client and waits (with backoff) until the broker
    /// answers. `shutdown` stops the runtime when cancelled (the CLI wires it to signals).
    pub async fn start(config: RuntimeConfig, shutdown: CancellationToken) -> Result<Self, RuntimeError> {
        let config = Arc::new(config);
        // Compiled before anything starts: a program that does not compile stops the start.
        let transforms = Arc::new(Transforms::compile(&config.transforms)?);
        let metrics = Metrics::new(&config.name);
        let health = Health::exported_to(&metrics);
        let mut background = Vec::new();
        let ops_addr = if config.ops.enabled {
            let (addr, task) = ops::serve(&config.ops, metrics.clone(), health.clone(), shutdown.clone()).await?;
            info!(%addr, "ops port serving /metrics, /healthz, /readyz");
            background.push(task);
            Some(addr)
        } else {
            None
        };
        let connection = DanubeConnection::connect(&config.danube, &shutdown).await?;
        let client = connection.inner().clone();
        health.set_broker_reachable(true);
        let schemas = TopicSchemas::resolve(&connection, &config.schemas).await?;
        let publisher = Publisher::new(
            client.clone(),
            config.source.clone(),
            &config.name,
            metrics.clone(),
            health.clone(),
            schemas,
        )
        .with_transforms(transforms.clone(), config.dead_letter_topic());
        background.extend(prepare_topics(&publisher, topics_known_at_start(&config), &shutdown).await?);
        let schema_cache = config.sink.decode_schemas.then(|| Arc::new(SchemaCache::new(connection.schema_registry())));
        let stopper = Stopper::new(shutdown.clone());
        background.push(tokio::spawn(probe_broker(client.clone(), health.clone(), shutdown.clone())));
        Ok(Self {
            env: Env {
                config,
                client,
                publisher,
                metrics,
                health,
                shutdown,
                stopper,
                schema_cache,
                transforms: (!transforms.is_empty()).then_some(transforms),
            },
            ops_addr,
            background,
        })
    }

    /// The acknowledged publish handle.
    pub fn publisher(&self) -> Publisher {
        self.env.publisher.clone()
    }

    /// The broker's schema registry (e.g. to look up what a source registered).
    pub fn schema_registry(&self) -> SchemaRegistry {
        DanubeConnection::from_inner(self.env.client.clone()).schema_registry()
    }

    /// Readiness state.
    pub fn health(&self) -> Health {
        self.env.health.clone()
    }

    /// The ops port's bound address (useful with port 0).
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// The token that stops the runtime.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.env.shutdown.clone()
    }

    /// Starts `parts` and runs them until shutdown, then drains: pull sources are polled
    /// and their acked offsets committed, push sources health-checked on a timer, the sink
    /// consumes `sink.topics`. [`Parts::check`] runs first (a sink needs `sink.topics`).
    pub async fn run(self, parts: Parts) -> Result<RunReport, RuntimeError> {
        let env = self.env.clone();
        parts.check(&env.config)?;
        // Not ready until the connectors are started: a client polling `/readyz` would
        // otherwise send data before, e.g., the MQTT source subscribed (and lose it).
        env.health.set_component(STARTING_COMPONENT, Some("connectors are starting".to_string()));
        // The sources' own topics, in one pass with those of the configuration (created at
        // `start` already, so only checked again here) so shorter names come first.
        let mut topics = topics_known_at_start(&env.config);
        for pending in &parts.pull {
            topics.extend(pending.topics.iter().cloned());
        }
        for pending in &parts.push {
            topics.extend(pending.topics.iter().cloned());
        }
        let mut background = self.background;
        background.extend(prepare_topics(&env.publisher, topics, &env.shutdown).await?);
        let Parts { pull, push, sink } = parts;
        let mut pull_sources = Vec::new();
        for pending in pull {
            pull_sources.push((pending.start)(env.context()).await?);
        }
        let mut push_sources = Vec::new();
        for pending in push {
            push_sources.push((pending.start)(env.context()).await?);
        }
        let sink_handle = match sink {
            Some(pending) => Some((pending.start)(env.context()).await?),
            None => None,
        };
        // The dead-letter topic is created after the connectors prepared their own topics: a
        // dead-letter topic whose name extends a data topic's name (`/default/x` and a custom
        // `/default/x-dlq`) would make Danube refuse the data topic for good if it came first.
        // It and its durable subscription are ready before any record flows, so no dead letter
        // is written before the subscription that `danube-connect dlq` reads exists.
        if env.config.failure.policy == crate::config::FailurePolicy::DeadLetter {
            let dead_letter = env.config.dead_letter_topic();
            match prepare_topics(&env.publisher, vec![dead_letter.clone()], &env.shutdown).await {
                Ok(retries) => {
                    // Subscribing fails while the topic does not exist: then retried until it does.
                    background.extend(retries);
                    background.extend(prepare_dead_letter_subscription(&env, dead_letter).await);
                }
                Err(error) => {
                    // Stop what the connectors started before failing the start.
                    env.shutdown.cancel();
                    for task in background {
                        task.abort();
                    }
                    return Err(error);
                }
            }
        }

        env.health.set_component(STARTING_COMPONENT, None);
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        for (index, source) in pull_sources.into_iter().enumerate() {
            tasks.push(tokio::spawn(source::run_source_loop(env.clone(), index, source)));
        }
        let offset = tasks.len();
        for (index, source) in push_sources.into_iter().enumerate() {
            tasks.push(tokio::spawn(push::run_push_source(env.clone(), offset + index, source)));
        }
        if let Some(sink) = &sink_handle {
            for (index, topic) in env.config.sink.topics.iter().enumerate() {
                tasks.push(tokio::spawn(sink::run_topic(env.clone(), index, topic.clone(), sink.clone())));
            }
            tasks.push(tokio::spawn(sink::health_loop(env.clone(), sink.clone())));
        }
        info!(name = %env.config.name, "connector running");

        env.shutdown.cancelled().await;
        info!(timeout = ?env.config.shutdown.timeout, "shutting down: draining in-flight work");

        let drain = async {
            for task in tasks {
                if let Err(e) = task.await {
                    warn!(error = %e, "runtime task ended abnormally");
                }
            }
            if let Some(sink) = &sink_handle {
                if let Err(e) = sink.shutdown().await {
                    warn!(error = %e.chain(), "sink shutdown failed");
                }
            }
            env.publisher.close().await;
        };
        let drained = tokio::time::timeout(env.config.shutdown.timeout, drain).await.is_ok();
        if !drained {
            warn!("shutdown deadline reached before the drain completed");
            env.publisher.abort();
        }
        for task in background {
            task.abort();
        }
        let fatal = env.stopper.take();
        info!(drained, fatal = fatal.is_some(), "connector stopped");
        Ok(RunReport { drained, fatal })
    }
}

/// How long the start waits for the producers of one topic known at start before going on
/// without them (they are retried in the background).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(5);

/// The topics whose producers are created at start: the schema-bound and partitioned
/// topics. The dead-letter topic follows once the connectors are started (see
/// [`Runtime::run`]).
fn topics_known_at_start(config: &RuntimeConfig) -> Vec<String> {
    let mut topics: Vec<String> = config.schemas.iter().map(|binding| binding.topic.clone()).collect();
    topics.extend(config.source.partitions.keys().cloned());
    topics
}

/// Creates the producers (and so the topics) of `topics` at start, so a sink subscribing
/// before the first record still sees it, and so a topic Danube refuses (its name, its
/// dispatch strategy, a clash with another topic's name) stops the start with the fix
/// instead of failing every record later. A topic that fails for a passing reason (a slow
/// broker) does not stop the start: a background task retries it, and records to it create
/// the producers anyway.
async fn prepare_topics(
    publisher: &Publisher,
    topics: Vec<String>,
    shutdown: &CancellationToken,
) -> Result<Vec<JoinHandle<()>>, RuntimeError> {
    let pending = publisher.prepare_all(topics, PREPARE_TIMEOUT).await?;
    Ok((!pending.is_empty())
        .then(|| publisher.prepare_in_background(pending, PREPARE_TIMEOUT, shutdown.clone()))
        .into_iter()
        .collect())
}

/// Creates the durable subscription [`dead_letter::DEAD_LETTER_SUBSCRIPTION`] on the
/// dead-letter topic (which exists by now), waiting at most [`PREPARE_TIMEOUT`]; on failure a
/// background task retries it (backoff from 500 ms to 10 s) until it exists or shutdown.
async fn prepare_dead_letter_subscription(env: &Env, topic: String) -> Option<JoinHandle<()>> {
    let consumer_name = format!("{}-dlq-subscription", env.config.name);
    let attempt = dead_letter::subscribe_dead_letters(&env.client, &topic, &consumer_name);
    let error = match tokio::time::timeout(PREPARE_TIMEOUT, attempt).await {
        Ok(Ok(())) => {
            info!(%topic, subscription = dead_letter::DEAD_LETTER_SUBSCRIPTION, "dead-letter subscription ready");
            return None;
        }
        Ok(Err(error)) => crate::error::error_chain(&error),
        Err(_) => format!("no answer within {PREPARE_TIMEOUT:?}"),
    };
    warn!(%topic, subscription = dead_letter::DEAD_LETTER_SUBSCRIPTION, %error, "dead-letter subscription not created yet, retrying in the background");
    let (client, shutdown) = (env.client.clone(), env.shutdown.clone());
    Some(tokio::spawn(async move {
        let mut backoff = crate::retry::Backoff::between(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.cancelled() => return,
            }
            let attempt = dead_letter::subscribe_dead_letters(&client, &topic, &consumer_name);
            if let Ok(Ok(())) = tokio::time::timeout(PREPARE_TIMEOUT, attempt).await {
                info!(%topic, subscription = dead_letter::DEAD_LETTER_SUBSCRIPTION, "dead-letter subscription ready");
                return;
            }
        }
    }))
}

async fn probe_broker(client: DanubeClient, health: Health, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.cancelled() => return,
        }
        health.set_broker_reachable(probe(&client).await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopper_keeps_the_first_fatal_error_and_reports_failure_without_locking() {
        let token = CancellationToken::new();
        let stopper = Stopper::new(token.clone());
        assert!(!stopper.has_failed());
        stopper.fail(ConnectorError::fatal_msg("first"));
        stopper.fail(ConnectorError::fatal_msg("second"));
        assert!(stopper.clone().has_failed(), "clones share the flag");
        assert!(token.is_cancelled());
        let kept = stopper.take().map(|error| error.to_string());
        assert_eq!(kept.as_deref(), Some("fatal: first"));
    }
}
