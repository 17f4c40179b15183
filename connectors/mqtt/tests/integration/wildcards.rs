//! One wildcard mapping table run against both real brokers: a Mosquitto in client mode
//! and the embedded rumqttd. Each MQTT topic must land exactly once, on the Danube topic of
//! the first mapping whose filter matches it, or nowhere.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{client_env, start_connector, TestClient};
use crate::embedded_mode::embedded_env;
use danube_connect_testkit::mosquitto::Mosquitto;
use danube_connect_testkit::ports::free_port;
use danube_connector_mqtt::config::EmbeddedConfig;
use danube_connector_mqtt::embedded::broker_config;
use danube_dev_broker::EmbeddedBroker;
use rumqttc::QoS;

/// In order: first match wins.
const MAPPINGS: &str = r##"[
    {filter="a/special", topic="/default/wc-special"},
    {filter="a/#", topic="/default/wc-a"},
    {filter="+/+", topic="/default/wc-two"},
    {filter="#", topic="/default/wc-all"}
]"##;

const DANUBE_TOPICS: [&str; 4] = ["/default/wc-special", "/default/wc-a", "/default/wc-two", "/default/wc-all"];

/// (MQTT topic, Danube topic it must land on; None = nowhere).
const CASES: [(&str, Option<&str>); 9] = [
    ("a", Some("/default/wc-a")),               // `a/#` also matches `a`
    ("a/special", Some("/default/wc-special")), // first match, though all four match
    ("a/x", Some("/default/wc-a")),             // `a/#` is before `+/+`
    ("a/x/y", Some("/default/wc-a")),
    ("b/c", Some("/default/wc-two")), // `+/+`
    ("/c", Some("/default/wc-two")),  // `+` matches an empty level
    ("b", Some("/default/wc-all")),   // `#` only
    ("b/c/d", Some("/default/wc-all")),
    ("$SYS/x", None), // a leading wildcard never matches `$...`
];

/// Publishes every case (QoS 1, waiting for each PUBACK) through `port` and checks where
/// each landed in `danube`.
async fn check_table(danube: &EmbeddedBroker, port: u16, broker: &str, dead_letter_topic: &str) {
    let mut device = TestClient::connect(port, &format!("device-wildcards-{broker}"));
    for (topic, _) in CASES {
        device.publish(topic, QoS::AtLeastOnce, false, topic).await;
    }
    let mut expected: BTreeMap<&str, Vec<&str>> = DANUBE_TOPICS.iter().map(|t| (*t, Vec::new())).collect();
    for (mqtt_topic, danube_topic) in CASES {
        if let Some(danube_topic) = danube_topic {
            expected.entry(danube_topic).or_default().push(mqtt_topic);
        }
    }
    for (danube_topic, want) in &expected {
        danube.wait_for_messages(danube_topic, want.len(), Duration::from_secs(20)).await;
    }
    // Give a wrong extra copy time to show up before the exact comparison.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for (danube_topic, want) in expected {
        let mut got: Vec<String> =
            danube.messages(danube_topic).iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
        got.sort();
        let mut want: Vec<String> = want.into_iter().map(String::from).collect();
        want.sort();
        assert_eq!(got, want, "{broker}: MQTT topics on {danube_topic}");
    }
    assert_eq!(danube.message_count(dead_letter_topic), 0, "{broker}: nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_mapping_table_against_mosquitto() {
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = client_env(&danube, mqtt.port(), "it-wildcards", MAPPINGS);
    let _connector = start_connector(&env).await;
    check_table(&danube, mqtt.port(), "mosquitto", "/default/dlq-mqtt-test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_mapping_table_against_the_embedded_broker() {
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let port = free_port();
    let env = embedded_env(&danube, port, MAPPINGS);
    let _connector = start_connector(&env).await;
    check_table(&danube, port, "embedded", "/default/dlq-mqtt-embedded").await;
}

/// Starts a standalone rumqttd (the embedded mode's configuration) on a free port: an
/// MQTT broker that, unlike Mosquitto 2.0, sends one copy of a message per matching
/// subscription of a client.
fn start_rumqttd() -> u16 {
    let port = free_port();
    let embedded = EmbeddedConfig { listen: SocketAddr::from(([127, 0, 0, 1], port)), ..EmbeddedConfig::default() };
    let mut broker = rumqttd::Broker::new(broker_config(&embedded, embedded.listen));
    std::thread::spawn(move || {
        let _ = broker.start();
    });
    port
}

/// `a/special` and `a/#` overlap. Some brokers (rumqttd; MQTT 5 allows it) send one copy
/// per matching subscription, Mosquitto 2.0 sends one: either way the connector subscribes
/// only to `a/#`, routes `a/special` by the first match, and each message lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_client_filters_deliver_exactly_one_copy() {
    let mqtt = Mosquitto::start().expect("mosquitto");
    for (broker, port) in [("mosquitto", mqtt.port()), ("rumqttd", start_rumqttd())] {
        let danube = EmbeddedBroker::start_default().await.expect("danube");
        let env = client_env(
            &danube,
            port,
            &format!("it-overlap-{broker}"),
            r#"[{filter="a/special", topic="/default/special", qos=1}, {filter="a/#", topic="/default/rest", qos=0}]"#,
        );
        let connector = start_connector(&env).await;
        let mut device = TestClient::connect(port, &format!("device-overlap-{broker}"));
        device.publish_many(20, QoS::AtLeastOnce, |i| ("a/special".to_string(), i.to_string().into_bytes())).await;
        device.publish("a/other", QoS::AtLeastOnce, false, "other").await;

        danube.wait_for_messages("/default/special", 20, Duration::from_secs(20)).await;
        danube.wait_for_messages("/default/rest", 1, Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let special = danube.messages("/default/special");
        let order: Vec<String> = special.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
        assert_eq!(
            order,
            (0..20).map(|i| i.to_string()).collect::<Vec<_>>(),
            "{broker}: one copy each, in order\n{}",
            connector.log()
        );
        // The QoS 1 mapping keeps QoS 1 although only the QoS 0 `a/#` is subscribed.
        assert!(
            special.iter().all(|m| m.attributes.get("mqtt.qos").map(String::as_str) == Some("1")),
            "{broker}: delivered at QoS 1"
        );
        assert_eq!(danube.message_count("/default/rest"), 1, "{broker}");
    }
}

/// Mapped Danube topics exist from the start, shorter names first: the first message goes to
/// `/default/pfx-all`, whose name extends `/default/pfx`, and yet a later message still lands
/// on `/default/pfx` (created in arrival order, Danube would refuse it for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_topics_whose_names_extend_each_other_all_receive_messages() {
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let port = free_port();
    let mappings = r##"[{filter="long/#", topic="/default/pfx-all"}, {filter="#", topic="/default/pfx"}]"##;
    let env = embedded_env(&danube, port, mappings);
    let _connector = start_connector(&env).await;
    let mut device = TestClient::connect(port, "device-prefixes");
    device.publish("long/x", QoS::AtLeastOnce, false, "long").await;
    device.publish("short", QoS::AtLeastOnce, false, "short").await;
    let long = danube.wait_for_messages("/default/pfx-all", 1, Duration::from_secs(20)).await;
    let short = danube.wait_for_messages("/default/pfx", 1, Duration::from_secs(20)).await;
    assert_eq!(long.len(), 1, "the longer topic got its message");
    assert_eq!(short.len(), 1, "the shorter topic got its message");
    assert_eq!(danube.message_count("/default/dlq-mqtt-embedded"), 0, "nothing dead-lettered");
}
