//! End-to-end tests with the real danube-client 0.16 over gRPC.

use danube_client::{Consumer, DanubeClient, Producer, SubType};
use danube_core::message::StreamMessage;
use danube_dev_broker::{BrokerConfig, EmbeddedBroker};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(5);

async fn client(b: &EmbeddedBroker) -> DanubeClient {
    DanubeClient::builder().service_url(b.url()).build().await.expect("client")
}

async fn producer(c: &DanubeClient, topic: &str, name: &str, reliable: bool) -> Producer {
    let mut builder = c.new_producer().with_topic(topic).with_name(name);
    if reliable {
        builder = builder.with_reliable_dispatch();
    }
    let mut p = builder.build().expect("producer builder");
    p.create().await.expect("producer create");
    p
}

async fn consumer(
    c: &DanubeClient,
    topic: &str,
    name: &str,
    sub: &str,
    ty: SubType,
) -> (Consumer, Receiver<StreamMessage>) {
    let mut cons = c
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name(name)
        .with_subscription(sub)
        .with_subscription_type(ty)
        .build()
        .expect("consumer builder");
    cons.subscribe().await.expect("subscribe");
    let rx = cons.receive().await.expect("receive");
    (cons, rx)
}

async fn recv(rx: &mut Receiver<StreamMessage>, timeout: Duration) -> Option<StreamMessage> {
    tokio::time::timeout(timeout, rx.recv()).await.ok().flatten()
}

async fn recv_n(rx: &mut Receiver<StreamMessage>, n: usize) -> Vec<StreamMessage> {
    let mut out = Vec::new();
    while out.len() < n {
        match recv(rx, WAIT).await {
            Some(m) => out.push(m),
            None => break,
        }
    }
    out
}

fn text(m: &StreamMessage) -> String {
    String::from_utf8_lossy(&m.payload).into_owned()
}

async fn wait_until(mut f: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test]
async fn produce_consume_round_trip() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    assert!(b.url().starts_with("http://127.0.0.1:"));
    let c = client(&b).await;
    let topic = "/default/round-trip";
    let p = producer(&c, topic, "p1", true).await;
    let (mut cons, mut rx) = consumer(&c, topic, "c1", "sub", SubType::Exclusive).await;
    assert!(b.wait_for_consumers(topic, "sub", 1, WAIT).await);

    let attrs = HashMap::from([("k".to_string(), "v".to_string())]);
    p.send(b"one".to_vec(), Some(attrs.clone())).await.expect("send");
    p.send_with_key(b"two".to_vec(), None, "key-a").await.expect("send");
    p.send(b"three".to_vec(), None).await.expect("send");

    let got = recv_n(&mut rx, 3).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["one", "two", "three"]);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.msg_id.topic_name, topic);
        assert_eq!(m.msg_id.topic_offset, i as u64);
        assert_eq!(m.msg_id.broker_addr, b.url());
        assert_eq!(m.subscription_name.as_deref(), Some("sub"));
        assert_eq!(m.producer_name, "p1");
    }
    assert_eq!(got[0].attributes, attrs);
    assert_eq!(got[1].routing_key.as_deref(), Some("key-a"));
    assert_eq!(b.unacked_count(topic, "sub"), 3);
    for m in &got {
        cons.ack(m).await.expect("ack");
    }
    assert_eq!(b.ack_count(topic, "sub"), 3);
    assert_eq!(b.unacked_count(topic, "sub"), 0);

    let stored = b.messages(topic);
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[1].routing_key.as_deref(), Some("key-a"));
    assert_eq!(stored[0].attributes, attrs);
    assert_eq!(stored[2].offset, 2);
    assert_eq!(stored[0].producer_name, "p1");
    assert!(stored[0].publish_time > 1_600_000_000_000, "publish_time in ms");
    assert_eq!(stored[0].schema_id, None);
}

#[tokio::test]
async fn new_subscription_starts_at_end() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/starts-at-end";
    let p = producer(&c, topic, "p", true).await;
    p.send(b"old-1".to_vec(), None).await.expect("send");
    p.send(b"old-2".to_vec(), None).await.expect("send");
    let (_cons, mut rx) = consumer(&c, topic, "c", "late", SubType::Shared).await;
    assert!(b.wait_for_consumers(topic, "late", 1, WAIT).await);
    p.send(b"new".to_vec(), None).await.expect("send");
    let m = recv(&mut rx, WAIT).await.expect("message");
    assert_eq!(text(&m), "new");
    assert_eq!(m.msg_id.topic_offset, 2);
    assert!(recv(&mut rx, Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn subscribe_to_missing_topic_fails() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let mut cons = c
        .new_consumer()
        .with_topic("/default/does-not-exist")
        .with_consumer_name("c")
        .with_subscription("s")
        .build()
        .expect("builder");
    let err = cons.subscribe().await.expect_err("must fail");
    assert!(err.to_string().contains("No topics found"), "{err}");
}

#[tokio::test]
async fn durable_subscription_redelivers_after_reconnect() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/durable";
    let p = producer(&c, topic, "p", true).await;
    let (mut c1, mut rx1) = consumer(&c, topic, "c1", "durable-sub", SubType::Shared).await;
    assert!(b.wait_for_consumers(topic, "durable-sub", 1, WAIT).await);
    p.send(b"m0".to_vec(), None).await.expect("send");
    let m0 = recv(&mut rx1, WAIT).await.expect("m0");
    c1.ack(&m0).await.expect("ack");
    // One more delivered but never acked before the consumer goes away.
    p.send(b"m1".to_vec(), None).await.expect("send");
    assert_eq!(text(&recv(&mut rx1, WAIT).await.expect("m1")), "m1");
    c1.close().await;
    drop(rx1);
    assert!(wait_until(|| b.connected_consumers(topic, "durable-sub") == 0, WAIT).await);

    p.send(b"m2".to_vec(), None).await.expect("send");
    p.send(b"m3".to_vec(), None).await.expect("send");

    let c2client = client(&b).await;
    let (mut c2, mut rx2) = consumer(&c2client, topic, "c2", "durable-sub", SubType::Shared).await;
    let got = recv_n(&mut rx2, 3).await;
    assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["m1", "m2", "m3"]);
    for m in &got {
        c2.ack(m).await.expect("ack");
    }
    assert_eq!(b.ack_count(topic, "durable-sub"), 4);
    assert!(recv(&mut rx2, Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn dispatch_window_limits_unacked_messages() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/window";
    b.publish(topic, b"seed".to_vec(), HashMap::new(), None);
    let (mut cons, mut rx) = consumer(&c, topic, "c", "w", SubType::Exclusive).await;
    assert!(b.wait_for_consumers(topic, "w", 1, WAIT).await);
    for i in 0..15 {
        b.publish(topic, format!("m{i}").into_bytes(), HashMap::new(), None);
    }
    let got = recv_n(&mut rx, 10).await;
    assert_eq!(got.len(), 10);
    assert!(recv(&mut rx, Duration::from_millis(400)).await.is_none(), "window exceeded");
    assert_eq!(b.unacked_count(topic, "w"), 10);
    cons.ack(&got[0]).await.expect("ack");
    let next = recv(&mut rx, WAIT).await.expect("11th after ack");
    assert_eq!(text(&next), "m10");
    assert!(recv(&mut rx, Duration::from_millis(200)).await.is_none());

    // Per-subscription override.
    b.set_max_unacked(topic, "w", 12);
    let more = recv_n(&mut rx, 2).await;
    assert_eq!(more.iter().map(text).collect::<Vec<_>>(), ["m11", "m12"]);
    assert!(recv(&mut rx, Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn ack_timeout_redelivers_with_backoff() {
    let cfg = BrokerConfig {
        ack_timeout: Duration::from_millis(300),
        redelivery_base_delay: Duration::from_millis(200),
        ..BrokerConfig::default()
    };
    let b = EmbeddedBroker::start(cfg).await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/ack-timeout";
    b.publish(topic, b"seed".to_vec(), HashMap::new(), None);
    let (mut cons, mut rx) = consumer(&c, topic, "c", "s", SubType::Shared).await;
    assert!(b.wait_for_consumers(topic, "s", 1, WAIT).await);
    let off = b.publish(topic, b"x".to_vec(), HashMap::new(), None);
    let first = recv(&mut rx, WAIT).await.expect("first delivery");
    let t0 = tokio::time::Instant::now();
    // Not acked: comes back after ack_timeout + 200 ms.
    let again = recv(&mut rx, WAIT).await.expect("redelivery");
    let elapsed = t0.elapsed();
    assert_eq!(again.msg_id.topic_offset, off);
    assert_eq!(first.msg_id.topic_offset, off);
    assert!(elapsed >= Duration::from_millis(450), "redelivered too early: {elapsed:?}");
    cons.ack(&again).await.expect("ack");
    assert_eq!(b.unacked_count(topic, "s"), 0);
    assert!(recv(&mut rx, Duration::from_millis(900)).await.is_none());
}

#[tokio::test]
async fn nack_redelivers_after_delay() {
    let cfg = BrokerConfig { redelivery_base_delay: Duration::from_millis(50), ..BrokerConfig::default() };
    let b = EmbeddedBroker::start(cfg).await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/nack";
    b.publish(topic, b"seed".to_vec(), HashMap::new(), None);
    let (mut cons, mut rx) = consumer(&c, topic, "c", "s", SubType::Shared).await;
    assert!(b.wait_for_consumers(topic, "s", 1, WAIT).await);
    b.publish(topic, b"x".to_vec(), HashMap::new(), None);
    let m = recv(&mut rx, WAIT).await.expect("delivery");
    let t0 = tokio::time::Instant::now();
    cons.nack(&m, Some(700), Some("try later".into())).await.expect("nack");
    assert!(recv(&mut rx, Duration::from_millis(450)).await.is_none(), "nack delay ignored");
    let again = recv(&mut rx, WAIT).await.expect("redelivery");
    assert!(t0.elapsed() >= Duration::from_millis(650));
    assert_eq!(again.msg_id.topic_offset, m.msg_id.topic_offset);
    // Nack without delay: base backoff (doubling: 2nd redelivery = 100 ms).
    cons.nack(&again, None, None).await.expect("nack");
    let third = recv(&mut rx, WAIT).await.expect("second redelivery");
    assert_eq!(third.msg_id.topic_offset, m.msg_id.topic_offset);
    cons.ack(&third).await.expect("ack");
    assert_eq!(b.unacked_count(topic, "s"), 0);
}

#[tokio::test]
async fn key_shared_keeps_keys_on_one_consumer_in_order() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/key-shared";
    b.publish(topic, b"seed".to_vec(), HashMap::new(), None);
    let (mut c1, mut rx1) = consumer(&c, topic, "ks-1", "ks", SubType::KeyShared).await;
    let (mut c2, mut rx2) = consumer(&c, topic, "ks-2", "ks", SubType::KeyShared).await;
    assert!(b.wait_for_consumers(topic, "ks", 2, WAIT).await);
    let total = 64;
    for i in 0..total {
        let key = format!("key-{}", i % 16);
        b.publish(topic, format!("{key}:{i}").into_bytes(), HashMap::new(), Some(key));
    }
    let mut per_consumer: Vec<Vec<StreamMessage>> = vec![Vec::new(), Vec::new()];
    let deadline = tokio::time::Instant::now() + WAIT;
    while per_consumer[0].len() + per_consumer[1].len() < total && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(m) = rx1.recv() => { c1.ack(&m).await.expect("ack"); per_consumer[0].push(m); }
            Some(m) = rx2.recv() => { c2.ack(&m).await.expect("ack"); per_consumer[1].push(m); }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_eq!(per_consumer[0].len() + per_consumer[1].len(), total);
    assert!(!per_consumer[0].is_empty() && !per_consumer[1].is_empty(), "keys not spread");
    let keys = |v: &Vec<StreamMessage>| -> HashSet<String> { v.iter().filter_map(|m| m.routing_key.clone()).collect() };
    assert!(keys(&per_consumer[0]).is_disjoint(&keys(&per_consumer[1])), "a key went to both consumers");
    for msgs in &per_consumer {
        let mut last: HashMap<String, u64> = HashMap::new();
        for m in msgs {
            let key = m.routing_key.clone().expect("key");
            if let Some(prev) = last.insert(key, m.msg_id.topic_offset) {
                assert!(prev < m.msg_id.topic_offset, "per-key order broken");
            }
        }
    }
}

#[tokio::test]
async fn key_shared_filters_select_keys() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/key-filters";
    b.publish(topic, b"seed".to_vec(), HashMap::new(), None);
    let mut eu = c
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name("eu")
        .with_subscription("kf")
        .with_subscription_type(SubType::KeyShared)
        .with_key_filter("eu-*")
        .build()
        .expect("builder");
    eu.subscribe().await.expect("subscribe");
    let mut rx_eu = eu.receive().await.expect("receive");
    let mut us = c
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name("us")
        .with_subscription("kf")
        .with_subscription_type(SubType::KeyShared)
        .with_key_filter("us-?")
        .build()
        .expect("builder");
    us.subscribe().await.expect("subscribe");
    let mut rx_us = us.receive().await.expect("receive");
    assert!(b.wait_for_consumers(topic, "kf", 2, WAIT).await);
    for k in ["eu-west", "us-1", "eu-north", "us-2"] {
        b.publish(topic, k.as_bytes().to_vec(), HashMap::new(), Some(k.to_string()));
    }
    let e = recv_n(&mut rx_eu, 2).await;
    let u = recv_n(&mut rx_us, 2).await;
    assert_eq!(e.iter().map(text).collect::<Vec<_>>(), ["eu-west", "eu-north"]);
    assert_eq!(u.iter().map(text).collect::<Vec<_>>(), ["us-1", "us-2"]);
}

#[tokio::test]
async fn shared_subscription_round_robins() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/shared";
    b.publish(topic, b"seed".to_vec(), HashMap::new(), None);
    let (mut c1, mut rx1) = consumer(&c, topic, "s1", "rr", SubType::Shared).await;
    let (mut c2, mut rx2) = consumer(&c, topic, "s2", "rr", SubType::Shared).await;
    assert!(b.wait_for_consumers(topic, "rr", 2, WAIT).await);
    for i in 0..10 {
        b.publish(topic, format!("m{i}").into_bytes(), HashMap::new(), None);
    }
    let a = recv_n(&mut rx1, 5).await;
    let z = recv_n(&mut rx2, 5).await;
    assert_eq!(a.len(), 5);
    assert_eq!(z.len(), 5);
    let offs = |v: &[StreamMessage]| v.iter().map(|m| m.msg_id.topic_offset % 2).collect::<HashSet<_>>();
    assert_eq!(offs(&a).len(), 1, "not alternating");
    assert_ne!(offs(&a), offs(&z));
    for m in &a {
        c1.ack(m).await.expect("ack");
    }
    for m in &z {
        c2.ack(m).await.expect("ack");
    }
    assert_eq!(b.ack_count(topic, "rr"), 10);
}

#[tokio::test]
async fn exclusive_rejects_second_consumer_and_failover_takes_over() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/exclusive";
    let _p = producer(&c, topic, "p", true).await;
    let (_c1, _rx1) = consumer(&c, topic, "first", "ex", SubType::Exclusive).await;
    let mut second = c
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name("second")
        .with_subscription("ex")
        .with_subscription_type(SubType::Exclusive)
        .build()
        .expect("builder");
    assert!(second.subscribe().await.is_err());
    // Same name re-subscribes fine.
    let (_again, _rx) = consumer(&c, topic, "first", "ex", SubType::Exclusive).await;

    let ft = "/default/failover";
    b.publish(ft, b"seed".to_vec(), HashMap::new(), None);
    let (mut f1, mut frx1) = consumer(&c, ft, "f1", "fo", SubType::FailOver).await;
    assert!(b.wait_for_consumers(ft, "fo", 1, WAIT).await);
    let (mut f2, mut frx2) = consumer(&c, ft, "f2", "fo", SubType::FailOver).await;
    assert!(b.wait_for_consumers(ft, "fo", 2, WAIT).await);
    b.publish(ft, b"a".to_vec(), HashMap::new(), None);
    let m = recv(&mut frx1, WAIT).await.expect("active gets it");
    f1.ack(&m).await.expect("ack");
    assert!(recv(&mut frx2, Duration::from_millis(300)).await.is_none());
    f1.close().await;
    drop(frx1);
    assert!(wait_until(|| b.connected_consumers(ft, "fo") == 1, WAIT).await);
    b.publish(ft, b"b".to_vec(), HashMap::new(), None);
    let m = recv(&mut frx2, WAIT).await.expect("standby takes over");
    assert_eq!(text(&m), "b");
    f2.ack(&m).await.expect("ack");
}

#[tokio::test]
async fn partitioned_topic_round_trip() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/parted";
    let mut p = c
        .new_producer()
        .with_topic(topic)
        .with_name("pp")
        .with_partitions(3)
        .with_reliable_dispatch()
        .build()
        .expect("builder");
    p.create().await.expect("create");
    let (mut cons, mut rx) = consumer(&c, topic, "c", "ps", SubType::Shared).await;
    assert!(b.wait_for_consumers(topic, "ps", 3, WAIT).await);
    for i in 0..9 {
        p.send(format!("m{i}").into_bytes(), None).await.expect("send");
    }
    let got = recv_n(&mut rx, 9).await;
    assert_eq!(got.len(), 9);
    let parts: HashSet<String> = got.iter().map(|m| m.msg_id.topic_name.clone()).collect();
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert!(parts.iter().all(|t| t.starts_with("/default/parted-part-")));
    for m in &got {
        cons.ack(m).await.expect("ack");
    }
    assert_eq!(b.messages(topic).len(), 9);
    assert_eq!(b.messages("/default/parted-part-1").len(), 3);
    assert_eq!(b.ack_count(topic, "ps"), 9);

    // Helper-created partitioned topic is discoverable by consumers.
    b.create_partitioned_topic("/default/pre", 2);
    let (_pc, mut prx) = consumer(&c, "/default/pre", "c", "s", SubType::Shared).await;
    assert!(b.wait_for_consumers("/default/pre", "s", 2, WAIT).await);
    b.publish("/default/pre", b"x".to_vec(), HashMap::new(), None);
    b.publish("/default/pre", b"y".to_vec(), HashMap::new(), None);
    assert_eq!(recv_n(&mut prx, 2).await.len(), 2);
}

#[tokio::test]
async fn fail_next_sends_then_success() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/flaky";
    let p = producer(&c, topic, "p", true).await;

    // Raw gRPC sees the injected Unavailable.
    let mut raw =
        danube_core::proto::producer_service_client::ProducerServiceClient::connect(b.url()).await.expect("raw client");
    let req = danube_core::proto::ProducerRequest {
        request_id: 1,
        producer_name: "raw".into(),
        topic_name: topic.into(),
        schema_ref: None,
        producer_access_mode: 0,
        dispatch_strategy: 1,
    };
    let producer_id = raw.create_producer(req).await.expect("create").into_inner().producer_id;
    let msg = |payload: &'static [u8]| danube_core::proto::StreamMessage {
        request_id: 7,
        msg_id: Some(danube_core::proto::MsgId {
            producer_id,
            topic_name: topic.into(),
            broker_addr: String::new(),
            topic_offset: 0,
        }),
        payload: bytes::Bytes::from_static(payload),
        publish_time: 1,
        producer_name: "raw".into(),
        ..Default::default()
    };
    b.fail_next_sends(1);
    let err = raw.send_message(msg(b"r1")).await.expect_err("injected failure");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let ok = raw.send_message(msg(b"r2")).await.expect("second send");
    assert_eq!(ok.into_inner().request_id, 7);
    assert_eq!(b.messages(topic).len(), 1);

    // The client retries Unavailable transparently.
    b.fail_next_sends(2);
    p.send(b"after-failures".to_vec(), None).await.expect("send after retries");
    let stored = b.messages(topic);
    assert_eq!(stored.len(), 2, "failed sends must not be stored");
    assert_eq!(&stored[1].payload[..], b"after-failures");

    // Unknown producer id is NotFound; oversize payload refused.
    let mut bad = msg(b"x");
    if let Some(id) = bad.msg_id.as_mut() {
        id.producer_id = 999_999;
    }
    assert_eq!(raw.send_message(bad).await.expect_err("unknown").code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn oversize_message_is_refused() {
    let cfg = BrokerConfig { max_message_size: 1024, ..BrokerConfig::default() };
    let b = EmbeddedBroker::start(cfg).await.expect("broker");
    let c = client(&b).await;
    let p = producer(&c, "/default/big", "p", true).await;
    p.send(vec![0u8; 1024], None).await.expect("at the limit");
    let err = p.send(vec![0u8; 1025], None).await.expect_err("over the limit");
    assert_eq!(err.extract_status().map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    assert_eq!(b.messages("/default/big").len(), 1);
}

#[tokio::test]
async fn stop_and_restart_keep_state_on_same_port() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let addr = b.addr();
    let c = client(&b).await;
    let topic = "/default/restart";
    let p = producer(&c, topic, "p", true).await;
    let (mut cons, mut rx) = consumer(&c, topic, "c", "s", SubType::Exclusive).await;
    assert!(b.wait_for_consumers(topic, "s", 1, WAIT).await);
    p.send(b"before".to_vec(), None).await.expect("send");
    let m = recv(&mut rx, WAIT).await.expect("before");
    cons.ack(&m).await.expect("ack");

    b.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "port still open");
    assert_eq!(b.connected_consumers(topic, "s"), 0);
    assert_eq!(b.messages(topic).len(), 1);

    b.restart().await.expect("restart");
    assert_eq!(b.addr(), addr);
    p.send(b"after".to_vec(), None).await.expect("send after restart");
    assert_eq!(b.messages(topic).len(), 2);
    let m = recv(&mut rx, Duration::from_secs(15)).await.expect("consumer resumes");
    assert_eq!(text(&m), "after");
    cons.ack(&m).await.expect("ack");
    assert_eq!(b.ack_count(topic, "s"), 2);
}

#[tokio::test]
async fn drop_streams_requeues_and_clients_resume() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/drop-streams";
    b.publish(topic, b"seed".to_vec(), HashMap::new(), None);
    let (mut cons, mut rx) = consumer(&c, topic, "c", "s", SubType::Shared).await;
    assert!(b.wait_for_consumers(topic, "s", 1, WAIT).await);
    b.publish(topic, b"x".to_vec(), HashMap::new(), None);
    let first = recv(&mut rx, WAIT).await.expect("first");
    b.drop_streams();
    // Unacked message comes again on the re-opened stream.
    let again = recv(&mut rx, WAIT).await.expect("redelivered after stream drop");
    assert_eq!(again.msg_id.topic_offset, first.msg_id.topic_offset);
    cons.ack(&again).await.expect("ack");
    b.publish(topic, b"y".to_vec(), HashMap::new(), None);
    assert_eq!(text(&recv(&mut rx, WAIT).await.expect("y")), "y");
}

#[tokio::test]
async fn non_reliable_is_fire_and_forget() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/non-reliable";
    let p = producer(&c, topic, "p", false).await;
    let (_cons, mut rx) = consumer(&c, topic, "c", "s", SubType::Shared).await;
    assert!(b.wait_for_consumers(topic, "s", 1, WAIT).await);
    for i in 0..25 {
        p.send(format!("m{i}").into_bytes(), None).await.expect("send");
    }
    // No window on non-reliable topics, no ack tracking.
    assert_eq!(recv_n(&mut rx, 25).await.len(), 25);
    assert_eq!(b.unacked_count(topic, "s"), 0);
}

#[tokio::test]
async fn missing_namespace_is_refused() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let mut p = c
        .new_producer()
        .with_topic("/other/t")
        .with_name("p")
        .with_options(danube_client::ProducerOptions::new(1, 10, 20))
        .build()
        .expect("builder");
    let err = p.create().await.expect_err("namespace missing");
    let status = err.extract_status().expect("status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("Unable to find the namespace"), "{status:?}");
    b.create_namespace("other");
    p.create().await.expect("created after namespace exists");
    p.send(b"x".to_vec(), None).await.expect("send");
    assert_eq!(b.messages("/other/t").len(), 1);
}

#[tokio::test]
async fn health_check_closes_unknown_ids() {
    use danube_core::proto::health_check_client::HealthCheckClient;
    use danube_core::proto::HealthCheckRequest;
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let _p = producer(&c, "/default/hc", "p", true).await;
    let mut raw = HealthCheckClient::connect(b.url()).await.expect("raw");
    let check = |client: i32, id: u64| HealthCheckRequest { request_id: 1, client, id };
    let unknown = raw.health_check(check(0, 424_242)).await.expect("hc").into_inner();
    assert_eq!(unknown.status, 1, "CLOSE for unknown producer");
    let unknown = raw.health_check(check(1, 424_242)).await.expect("hc").into_inner();
    assert_eq!(unknown.status, 1, "CLOSE for unknown consumer");
}
