//! Rough throughput of the development broker: one producer, one consumer, reliable dispatch.
//! `cargo bench -p danube-dev-broker`.

use danube_client::{DanubeClient, SubType};
use danube_dev_broker::EmbeddedBroker;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = DanubeClient::builder().service_url(b.url()).build().await.expect("client");
    let topic = "/default/throughput";
    let n = 5000usize;
    let mut p = c.new_producer().with_topic(topic).with_name("p").with_reliable_dispatch().build().expect("builder");
    p.create().await.expect("create");
    let mut cons = c
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name("c")
        .with_subscription("s")
        .with_subscription_type(SubType::Shared)
        .build()
        .expect("builder");
    cons.subscribe().await.expect("subscribe");
    let mut rx = cons.receive().await.expect("receive");
    assert!(b.wait_for_consumers(topic, "s", 1, Duration::from_secs(5)).await);

    let consumer = tokio::spawn(async move {
        let t = Instant::now();
        let mut got = 0usize;
        while got < n {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(m)) => {
                    cons.ack(&m).await.expect("ack");
                    got += 1;
                }
                _ => break,
            }
        }
        (got, t.elapsed())
    });
    let t = Instant::now();
    for i in 0..n {
        p.send(vec![b'x'; 256 + (i % 7)], None).await.expect("send");
    }
    let send_elapsed = t.elapsed();
    let (got, consume_elapsed) = consumer.await.expect("consumer task");
    println!(
        "sent {n} in {send_elapsed:?} ({:.0} msg/s, one producer); consumed+acked {got} in {consume_elapsed:?} ({:.0} msg/s, window 10)",
        n as f64 / send_elapsed.as_secs_f64(),
        got as f64 / consume_elapsed.as_secs_f64()
    );
    assert_eq!(got, n);
}
