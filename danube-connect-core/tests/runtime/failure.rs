//! `FailureHandler` (`Context::failures`) on both brokers: a record Danube refuses for
//! good (its topic's name clashes with a longer one created first) follows `failure.policy`
//! with the real attempt count; `nack` refuses it when its sender still holds it and acts as
//! `stop` when the sender was acknowledged already.

use std::time::Duration;

use crate::common::runtime_config;
use danube_connect_core::config::FailurePolicy;
use danube_connect_core::failure::{Delivery, FailureHandler, Handback, Undeliverable};
use danube_connect_core::{
    async_trait, ConnectorResult, Context, Factory, Parts, PushSource, RunReport, Runtime, RuntimeError, SourceRecord,
};
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::{reliable_producers, TopicReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A push source that hands its failure handler to the test.
struct HandlerSource {
    handler: oneshot::Sender<FailureHandler>,
}

#[async_trait]
impl Factory for HandlerSource {
    type Connector = Idle;

    async fn start(self, ctx: Context) -> ConnectorResult<Idle> {
        let _ = self.handler.send(ctx.failures().clone());
        Ok(Idle)
    }
}

/// The running push source: the test publishes through its handler.
struct Idle;

#[async_trait]
impl PushSource for Idle {
    async fn shutdown(&mut self) -> ConnectorResult<()> {
        Ok(())
    }
}

struct Running {
    handler: FailureHandler,
    token: CancellationToken,
    run: JoinHandle<Result<RunReport, RuntimeError>>,
}

async fn start(broker: &TestBroker, name: &str, policy: FailurePolicy) -> Running {
    let mut config = runtime_config(name, &broker.url());
    config.failure.policy = policy;
    let token = CancellationToken::new();
    let runtime = Runtime::start(config, token.clone()).await.expect("runtime starts");
    let (tx, rx) = oneshot::channel();
    let run = tokio::spawn(runtime.run(Parts::new().with_push(HandlerSource { handler: tx })));
    let handler = tokio::time::timeout(Duration::from_secs(30), rx).await.expect("initialized").expect("handler");
    Running { handler, token, run }
}

async fn report(run: JoinHandle<Result<RunReport, RuntimeError>>) -> RunReport {
    tokio::time::timeout(Duration::from_secs(30), run).await.expect("the run ends").expect("join").expect("run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_danube_refuses_follows_the_failure_policy() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let _long = reliable_producers(broker.url(), "/default/fh-clash-long", "mk", 1).await.expect("longer topic");
        let dlq = "/default/dlq-fh";
        let _dlq_maker = reliable_producers(broker.url(), dlq, "mk", 1).await.expect("dead-letter topic");
        let dead = TopicReader::subscribe(broker.url(), dlq, "fh-test").await.expect("dlq reader");
        let refused = || SourceRecord::new("/default/fh-clash", "clashing").with_attribute("origin", "test");

        // dead_letter: published to the dead-letter topic with the attempts made.
        let running = start(&broker, "fh", FailurePolicy::DeadLetter).await;
        let delivery = running.handler.publish_or_dead_letter(refused(), Handback::Possible).await;
        assert_eq!(delivery, Delivery::DeadLettered, "{kind}");
        // A record that never reached Danube (e.g. its outside write was refused), after 7 attempts.
        let outside = SourceRecord::new("/default/fh-other", "outside");
        let failed = Undeliverable::refused(outside, &danube_connect_core::PublishError::Closed, 7);
        let delivery = running.handler.undeliverable(failed, Handback::Impossible).await;
        assert_eq!(delivery, Delivery::DeadLettered, "{kind}");
        let letters = dead.wait_for(2, Duration::from_secs(30)).await;
        assert_eq!(letters.len(), 2, "{kind}");
        let attr = |i: usize, k: &str| letters[i].attributes.get(k).cloned().unwrap_or_default();
        assert_eq!(letters[0].payload.as_ref(), b"clashing", "{kind}");
        assert_eq!(attr(0, "dlq.attempts"), "1", "{kind}: a refusal is not retried");
        assert_eq!(attr(0, "dlq.error_kind"), "rejected", "{kind}");
        assert_eq!(attr(0, "dlq.source_topic"), "/default/fh-clash", "{kind}");
        assert_eq!(attr(0, "origin"), "test", "{kind}: original attributes kept");
        assert_eq!(attr(1, "dlq.attempts"), "7", "{kind}: the caller's count");
        running.token.cancel();
        assert_eq!(report(running.run).await.exit_code(), 0, "{kind}");

        // nack: refused while the sender holds the record; a stop once it was acknowledged.
        let running = start(&broker, "fh", FailurePolicy::Nack).await;
        let delivery = running.handler.publish_or_dead_letter(refused(), Handback::Possible).await;
        assert_eq!(delivery, Delivery::Refused, "{kind}");
        assert!(!running.run.is_finished(), "{kind}: nack does not stop the connector");
        let delivery = running.handler.publish_or_dead_letter(refused(), Handback::Impossible).await;
        assert_eq!(delivery, Delivery::Stopped, "{kind}");
        let stopped = report(running.run).await;
        assert_eq!(stopped.exit_code(), 2, "{kind}");
        assert!(format!("{:?}", stopped.fatal).contains("cannot hand it back"), "{kind}: {:?}", stopped.fatal);

        // stop: the connector stops with the error, whatever the sender holds.
        let running = start(&broker, "fh", FailurePolicy::Stop).await;
        let delivery = running.handler.publish_or_dead_letter(refused(), Handback::Possible).await;
        assert_eq!(delivery, Delivery::Stopped, "{kind}");
        let stopped = report(running.run).await;
        assert_eq!(stopped.exit_code(), 2, "{kind}");
        assert!(format!("{:?}", stopped.fatal).contains("/default/fh-clash"), "{kind}: {:?}", stopped.fatal);

        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(dead.count(), 2, "{kind}: only the dead_letter run dead-lettered");
    }
}
