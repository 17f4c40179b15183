//! Schemas registered while running: records carrying one are validated against it and
//! stamped with its version; a sink-side cache sees a new latest version.

use std::time::Duration;

use crate::common::runtime_config;
use danube_connect_common::schema::{CompatibilityMode, Schema, SchemaKind};
use danube_connect_core::schema::SchemaCache;
use danube_connect_core::{PublishError, Runtime, SourceRecord};
use danube_dev_broker::EmbeddedBroker;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const ORDER_V1: &str = r#"{"type":"object","additionalProperties":false,"required":["id"],
  "properties":{"id":{"type":"string"},"amount":{"type":"number"}}}"#;

/// v1 plus an optional `currency`: backward compatible, and a record with a currency is
/// valid only under v2.
const ORDER_V2: &str = r#"{"type":"object","additionalProperties":false,"required":["id"],
  "properties":{"id":{"type":"string"},"amount":{"type":"number"},"currency":{"type":"string"}}}"#;

/// `id` becomes a number: incompatible both ways.
const ORDER_RETYPED: &str = r#"{"type":"object","additionalProperties":false,"required":["id"],
  "properties":{"id":{"type":"integer"},"amount":{"type":"number"}}}"#;

async fn start(broker: &EmbeddedBroker, name: &str) -> Runtime {
    let mut config = runtime_config(name, &broker.url());
    config.ops.enabled = false;
    Runtime::start(config, CancellationToken::new()).await.expect("runtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_a_run_time_schema_carries_its_id_and_version_and_an_invalid_one_is_refused() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let runtime = start(&broker, "rtschema").await;
    let publisher = runtime.publisher();
    let topic = "/default/rt-orders";
    let bound = publisher.register_schema("rt-orders", SchemaKind::JsonSchema, ORDER_V1, None).await.expect("register");
    assert_eq!(bound.version, 1);
    assert_eq!(bound.subject, "rt-orders");

    let valid =
        SourceRecord::from_json(topic, &json!({"id": "a", "amount": 1.5})).expect("json").with_schema(bound.clone());
    publisher.publish(valid).await.expect("valid record published");
    let invalid = SourceRecord::from_json(topic, &json!({"id": 7})).expect("json").with_schema(bound.clone());
    match publisher.publish(invalid).await {
        Err(PublishError::Invalid { message, .. }) => assert!(message.contains("/id"), "names the field: {message}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // The same topic without a schema: nothing is validated, no schema is stamped.
    publisher.publish(SourceRecord::new(topic, "plain")).await.expect("plain record");

    let stored = broker.wait_for_messages(topic, 2, Duration::from_secs(10)).await;
    assert_eq!(stored.len(), 2, "the invalid record never entered the topic");
    assert_eq!((stored[0].schema_id, stored[0].schema_version), (Some(bound.schema_id), Some(1)));
    assert_eq!(stored[1].payload.as_ref(), b"plain");
    assert_eq!((stored[1].schema_id, stored[1].schema_version), (None, None));

    // Registering the same definition again returns the same version.
    let again = publisher.register_schema("rt-orders", SchemaKind::JsonSchema, ORDER_V1, None).await.expect("again");
    assert_eq!((again.schema_id, again.version), (bound.schema_id, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_keep_the_version_they_were_queued_with_across_a_new_version() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let runtime = start(&broker, "rtevolve").await;
    let publisher = runtime.publisher();
    let topic = "/default/rt-evolve";
    let v1 = publisher.register_schema("rt-evolve", SchemaKind::JsonSchema, ORDER_V1, None).await.expect("v1");
    let record = |id: &str, bound: &std::sync::Arc<danube_connect_core::schema::BoundSchema>| {
        // One routing key: one lane, so the stored order is the queue order.
        SourceRecord::from_json(topic, &json!({"id": id})).expect("json").with_key("k").with_schema(bound.clone())
    };
    // Queued under v1 (not sent yet when v2 is registered below).
    let early: Vec<_> = ["a", "b"].iter().map(|id| record(id, &v1)).collect();
    let early_batch = {
        let publisher = publisher.clone();
        tokio::spawn(async move { publisher.publish_batch(early).await })
    };
    let v2 = publisher.register_schema("rt-evolve", SchemaKind::JsonSchema, ORDER_V2, None).await.expect("v2");
    assert_eq!((v2.schema_id, v2.version), (v1.schema_id, 2));
    let with_currency = SourceRecord::from_json(topic, &json!({"id": "c", "currency": "EUR"})).expect("json");
    let refused = publisher.publish(with_currency.clone().with_schema(v1.clone())).await;
    assert!(matches!(refused, Err(PublishError::Invalid { .. })), "v1 does not allow a currency: {refused:?}");
    early_batch.await.expect("join").expect("early records");
    publisher
        .publish_batch(vec![with_currency.with_key("k").with_schema(v2.clone()), record("d", &v1), record("e", &v2)])
        .await
        .expect("later records");

    let stored = broker.wait_for_messages(topic, 5, Duration::from_secs(10)).await;
    let stamped: Vec<(String, Option<u32>)> = stored
        .iter()
        .map(|m| {
            let value: serde_json::Value = serde_json::from_slice(&m.payload).expect("json payload");
            (value["id"].as_str().unwrap_or_default().to_string(), m.schema_version)
        })
        .collect();
    let want: Vec<(String, Option<u32>)> =
        [("a", 1), ("b", 1), ("c", 2), ("d", 1), ("e", 2)].iter().map(|(id, v)| (id.to_string(), Some(*v))).collect();
    assert_eq!(stamped, want, "each message carries the version it was validated against");
    assert!(stored.iter().all(|m| m.schema_id == Some(v1.schema_id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_run_time_registration_is_a_typed_non_transient_error() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let runtime = start(&broker, "rtrefused").await;
    let publisher = runtime.publisher();
    publisher
        .register_schema("rt-refused", SchemaKind::JsonSchema, ORDER_V1, Some(CompatibilityMode::Full))
        .await
        .expect("v1");
    let error = publisher
        .register_schema("rt-refused", SchemaKind::JsonSchema, ORDER_RETYPED, None)
        .await
        .expect_err("an incompatible change is refused");
    let chain = danube_connect_core::error::error_chain(&error);
    assert!(chain.contains("rt-refused") && chain.contains("incompatible"), "{chain}");
    assert!(!error.is_transient(), "a refusal is not retried: {chain}");
    let broken = publisher.register_schema("rt-refused", SchemaKind::JsonSchema, "{not json", None).await;
    match broken {
        Err(error @ danube_connect_core::schema::SchemaSetupError::InvalidDefinition { .. }) => {
            assert!(!error.is_transient())
        }
        other => panic!("expected InvalidDefinition, got {other:?}"),
    }

    let nowhere =
        danube_connect_core::config::DanubeConfig { service_url: "http://127.0.0.1:1".into(), ..Default::default() };
    let unreachable = danube_connect_core::DanubeConnection::build(&nowhere).await.expect("lazy client");
    let error = danube_connect_core::schema::BoundSchema::register(
        &unreachable,
        "x",
        SchemaKind::JsonSchema,
        ORDER_V1.as_bytes(),
        None,
    )
    .await
    .expect_err("no registry");
    assert!(
        error.is_transient(),
        "an unreachable registry is transient: {}",
        danube_connect_core::error::error_chain(&error)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_cache_sees_a_new_latest_version_after_its_ttl() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let runtime = start(&broker, "rtcache").await;
    let publisher = runtime.publisher();
    let v1 = publisher.register_schema("rt-cache", SchemaKind::JsonSchema, ORDER_V1, None).await.expect("v1");
    let ttl = Duration::from_millis(500);
    let cache = SchemaCache::with_latest_ttl(runtime.schema_registry(), ttl);
    let canonical = |text: &str| Schema::compile(SchemaKind::JsonSchema, text).expect("compiles").definition().to_vec();

    assert_eq!(cache.get(v1.schema_id, None).await.expect("latest").definition(), canonical(ORDER_V1).as_slice());
    publisher.register_schema("rt-cache", SchemaKind::JsonSchema, ORDER_V2, None).await.expect("v2");
    // Pinned versions are exact at once.
    assert_eq!(cache.get(v1.schema_id, Some(2)).await.expect("v2").definition(), canonical(ORDER_V2).as_slice());
    assert_eq!(cache.get(v1.schema_id, Some(1)).await.expect("v1").definition(), canonical(ORDER_V1).as_slice());
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(
        cache.get(v1.schema_id, None).await.expect("latest").definition(),
        canonical(ORDER_V2).as_slice(),
        "the latest lookup is asked again after its ttl and sees version 2"
    );
}
