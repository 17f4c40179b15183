//! Probe of the real broker's reliable dispatch under a burst: publishes `N` messages from
//! `P` raw producers into a fresh topic that one raw consumer reads, and prints what arrived.
//!
//! `cargo run -p danube-connect-core --example stall_probe -- SERVICE_URL PROM_URL ADMIN_URL TOPIC N P MODE [WAIT_S] [WINDOW]`
//! MODE: `ack` (ack each message at once), `noack` (never ack: shows the effective window),
//! `slow` (ack each after 1 ms).
//! WINDOW: when given, `SetSubscriptionDispatchConfig` is sent before subscribing (v0.15.1
//! stores it and ignores it). The figures in `docs/running-on-danube.md` were taken with it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use danube_client::{DanubeClient, SubType};
use danube_core::admin_proto::topic_admin_client::TopicAdminClient;
use danube_core::admin_proto::{
    GetSubscriptionDispatchConfigRequest, PartitionedTopicRequest, SetSubscriptionDispatchConfigRequest,
    SubscriptionDispatchConfig,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 8 {
        eprintln!(
            "usage: stall_probe SERVICE_URL PROM_URL ADMIN_URL TOPIC N PRODUCERS ack|noack|slow [WAIT_S] [WINDOW]"
        );
        eprintln!(
            "env: PROBE_SUB (subscription), PROBE_EXPECT (count to wait for), PROBE_RATE (msg/s), PROBE_PARTITIONS"
        );
        std::process::exit(2);
    }
    let service = args[1].clone();
    let prom = args[2].clone();
    let admin = args[3].clone();
    let topic = args[4].clone();
    let total: u64 = args[5].parse()?;
    let producers_n: usize = args[6].parse()?;
    let mode = args[7].clone();
    let wait: u64 = args.get(8).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let window: Option<u32> = args.get(9).map(|s| s.parse()).transpose()?;
    let subscription_owned = std::env::var("PROBE_SUB").unwrap_or_else(|_| "probe-sub".to_string());
    let subscription = subscription_owned.as_str();
    let expect: u64 = std::env::var("PROBE_EXPECT").ok().and_then(|s| s.parse().ok()).unwrap_or(total);

    let partitions: u32 = std::env::var("PROBE_PARTITIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    if partitions > 0 {
        let mut admin_client = TopicAdminClient::connect(admin.clone()).await?;
        let r = admin_client
            .create_partitioned_topic(PartitionedTopicRequest {
                base_name: topic.clone(),
                partitions,
                schema_subject: None,
                dispatch_strategy: 1,
            })
            .await;
        println!("create partitioned topic ({partitions}): {:?}", r.map(|r| r.into_inner()));
    }
    let rate: f64 = std::env::var("PROBE_RATE").ok().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let producers = if total == 0 {
        Vec::new()
    } else if partitions > 0 {
        let client = DanubeClient::builder().service_url(service.clone()).build().await?;
        let mut producers = Vec::new();
        for i in 0..producers_n {
            let mut producer = client
                .new_producer()
                .with_topic(topic.clone())
                .with_name(format!("probe-{i}"))
                .with_partitions(partitions as usize)
                .with_reliable_dispatch()
                .build()?;
            producer.create().await?;
            producers.push(producer);
        }
        producers
    } else {
        danube_connect_testkit::danube::reliable_producers(service.clone(), &topic, "probe", producers_n).await?
    };
    if let Some(window) = window {
        let mut admin_client = TopicAdminClient::connect(admin.clone()).await?;
        let r = admin_client
            .set_subscription_dispatch_config(SetSubscriptionDispatchConfigRequest {
                topic: topic.clone(),
                subscription: subscription.to_string(),
                dispatch_config: Some(SubscriptionDispatchConfig { max_unacked_messages: window }),
            })
            .await;
        println!("set window {window}: {r:?}");
        let g = admin_client
            .get_subscription_dispatch_config(GetSubscriptionDispatchConfigRequest {
                topic: topic.clone(),
                subscription: subscription.to_string(),
            })
            .await;
        println!("get window: {g:?}");
    }
    let client = DanubeClient::builder().service_url(service.clone()).build().await?;
    let mut consumer = client
        .new_consumer()
        .with_topic(topic.clone())
        .with_consumer_name("probe-consumer".to_string())
        .with_subscription(subscription.to_string())
        .with_subscription_type(SubType::Exclusive)
        .build()?;
    consumer.subscribe().await?;
    let mut rx = consumer.receive().await?;
    let seen: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let received = Arc::new(AtomicU64::new(0));
    {
        let seen = seen.clone();
        let received = received.clone();
        let mode = mode.clone();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                received.fetch_add(1, Ordering::Relaxed);
                let n: u64 =
                    std::str::from_utf8(&message.payload).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
                seen.lock().unwrap().insert(n);
                match mode.as_str() {
                    "noack" => {}
                    "slow" => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let _ = consumer.ack(&message).await;
                    }
                    _ => {
                        let _ = consumer.ack(&message).await;
                    }
                }
            }
        });
    }
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for producer in producers {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return;
                }
                if rate > 0.0 {
                    let due = started + Duration::from_secs_f64(n as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                producer.send(n.to_string().into_bytes(), None).await.expect("send");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let publish = started.elapsed();
    println!(
        "published {total} in {:.2}s ({:.0} msg/s); delivered so far {}",
        publish.as_secs_f64(),
        total as f64 / publish.as_secs_f64(),
        seen.lock().unwrap().len()
    );
    let mut last = 0;
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let distinct = seen.lock().unwrap().len();
        if distinct != last {
            last = distinct;
            last_change = Instant::now();
        }
        if distinct as u64 >= expect || last_change.elapsed() > Duration::from_secs(wait) {
            break;
        }
    }
    let distinct = seen.lock().unwrap().len();
    println!(
        "RESULT mode={mode} window={window:?} total={total} producers={producers_n} distinct={distinct} received={} elapsed={:.2}s (last progress {:.2}s ago)",
        received.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        last_change.elapsed().as_secs_f64()
    );
    let metrics = reqwest::get(format!("{prom}/metrics")).await?.text().await?;
    for line in metrics.lines() {
        if line.contains(&topic)
            && (line.starts_with("danube_subscription_lag")
                || line.starts_with("danube_consumer_messages_out")
                || line.starts_with("danube_topic_messages_in"))
        {
            println!("  {line}");
        }
    }
    Ok(())
}
