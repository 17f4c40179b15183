//! SIGTERM during a broker outage: the connector binary exits within `shutdown.timeout`
//! (its retries and waits end at the signal) and loses nothing it acknowledged, on both
//! brokers. The outage is the dev broker stopped, or the real broker frozen (SIGSTOP):
//! every publish and ack in flight waits for an answer that does not come.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::{reliable_producers, TopicReader};
use danube_connect_testkit::process::ConnectorProcess;

const SOURCE_BIN: &str = env!("CARGO_BIN_EXE_minimal_source");
const SINK_BIN: &str = env!("CARGO_BIN_EXE_minimal_sink");

/// The drain deadline the tests set; the process must be gone within it plus this grace
/// (process start-up of the exit path, the test's 50 ms polling).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
const GRACE: Duration = Duration::from_secs(3);

/// Starts an outage: the dev broker stops, the real one is frozen.
async fn begin_outage(broker: &mut TestBroker) {
    match broker {
        TestBroker::Dev(dev) => dev.stop().await,
        TestBroker::Real(real) => signal(real.pid().expect("real broker pid"), "-STOP"),
    }
}

/// Ends the outage begun by [`begin_outage`].
async fn end_outage(broker: &mut TestBroker) {
    match broker {
        TestBroker::Dev(dev) => dev.restart().await.expect("dev broker restarts on its data"),
        TestBroker::Real(real) => signal(real.pid().expect("real broker pid"), "-CONT"),
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill").arg(which).arg(pid.to_string()).status().expect("kill");
    assert!(status.success(), "kill {which} {pid}");
}

/// Starts an outage, sends SIGTERM two seconds into it (long enough for publishes and
/// acks to fail or hang and their retries to start), ends the outage once the process is
/// gone, and checks that it exited within the deadline: 0 when everything in flight was
/// acked before the broker went away, 3 when the deadline came first; never killed, never a
/// crash. Returns how long the exit took and the exit code.
async fn sigterm_during_an_outage(broker: &mut TestBroker, process: &mut ConnectorProcess) -> (Duration, Option<i32>) {
    let kind = broker.kind();
    begin_outage(broker).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let status = process.terminate(SHUTDOWN_TIMEOUT + Duration::from_secs(60)).await;
    let took = started.elapsed();
    end_outage(broker).await;
    let status = status.unwrap_or_else(|| panic!("{kind}: still running 65 s after SIGTERM: {}", process.log()));
    assert!(took <= SHUTDOWN_TIMEOUT + GRACE, "{kind}: exit took {took:?}: {}", process.log());
    assert!(matches!(status.code(), Some(0 | 3)), "{kind}: exit {status:?}: {}", process.log());
    (took, status.code())
}

/// The counter numbers `reader` got, once it has every number up to `last` or after `wait`
/// (redeliveries count twice in the reader, so distinct numbers are awaited).
async fn numbers_read(reader: &TopicReader, last: u64, wait: Duration) -> BTreeSet<u64> {
    let deadline = Instant::now() + wait;
    loop {
        let read: BTreeSet<u64> =
            reader.messages().iter().filter_map(|m| m.attributes.get("n").and_then(|n| n.parse().ok())).collect();
        if (0..=last).all(|n| read.contains(&n)) || Instant::now() > deadline {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_sigtermed_during_an_outage_exits_in_time_and_everything_committed_is_in_danube() {
    for kind in BrokerKind::all() {
        let mut broker = TestBroker::start_persistent(kind).await.expect("broker");
        let topic = "/default/outage-source";
        // The topic exists (reliable, as the source creates it) before the reader subscribes.
        drop(reliable_producers(broker.url(), topic, "create", 1).await.expect("topic"));
        let reader = TopicReader::subscribe(broker.url(), topic, "check").await.expect("reader");
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let env = HashMap::from([
            ("DANUBE_SERVICE_URL".to_string(), broker.url()),
            ("CONNECTOR_NAME".to_string(), "outage-counter".to_string()),
            ("CONNECTOR_SHUTDOWN__TIMEOUT".to_string(), "5s".to_string()),
            ("COUNTER_TOPIC".to_string(), topic.to_string()),
            // 200 records/s: below what a reader gets from the real broker at its default
            // window, so the check is not cut short by the broker's dispatch stall
            // (docs/running-on-danube.md); what is tested is the connector's exit.
            ("COUNTER_BATCH".to_string(), "10".to_string()),
            ("COUNTER_INTERVAL".to_string(), "50".to_string()),
            ("COUNTER_STATE_FILE".to_string(), state.display().to_string()),
        ]);
        let mut process = ConnectorProcess::spawn(Path::new(SOURCE_BIN), &env).expect("spawn");
        process.wait_ready(Duration::from_secs(30)).await.expect("ready");
        reader.wait_for(100, Duration::from_secs(30)).await;

        let (took, code) = sigterm_during_an_outage(&mut broker, &mut process).await;
        let last = std::fs::read_to_string(&state).expect("a committed position").trim().parse::<u64>().unwrap();
        // The reader may have lost its stream in the outage: the durable subscription hands
        // what it did not ack to a second reader on the same subscription.
        let mut stored = numbers_read(&reader, last, Duration::from_secs(30)).await;
        if (0..=last).any(|n| !stored.contains(&n)) {
            drop(reader);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let second = TopicReader::subscribe(broker.url(), topic, "check").await.expect("second reader");
            stored.extend(numbers_read(&second, last, Duration::from_secs(30)).await);
        }
        let missing: Vec<u64> = (0..=last).filter(|n| !stored.contains(n)).collect();
        assert!(missing.is_empty(), "{kind}: committed but not in Danube: {missing:?}");
        eprintln!("{kind}: SIGTERM during the outage: exit {code:?} after {took:?}; {} committed", last + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_sigtermed_during_an_outage_exits_in_time_and_a_restart_gets_every_record() {
    for kind in BrokerKind::all() {
        let mut broker = TestBroker::start_persistent(kind).await.expect("broker");
        let topic = "/default/outage-sink";
        let dir = tempfile::tempdir().expect("tempdir");
        let lines = dir.path().join("lines.txt");
        let env = HashMap::from([
            ("DANUBE_SERVICE_URL".to_string(), broker.url()),
            ("CONNECTOR_NAME".to_string(), "outage-lines".to_string()),
            ("CONNECTOR_SHUTDOWN__TIMEOUT".to_string(), "5s".to_string()),
            ("CONNECTOR_SINK__TOPICS".to_string(), format!("[{{topic=\"{topic}\", subscription=\"lines\"}}]")),
            ("LINES_PATH".to_string(), lines.display().to_string()),
        ]);
        let producers = reliable_producers(broker.url(), topic, "outage", 1).await.expect("producer");
        let mut process = ConnectorProcess::spawn(Path::new(SINK_BIN), &env).expect("spawn");
        process.wait_consuming(Duration::from_secs(30)).await.expect("consuming");
        const TOTAL: u32 = 200;
        for i in 0..TOTAL {
            producers[0].send(format!("r-{i}").into_bytes(), None).await.expect("send");
        }
        let written = || -> HashSet<String> {
            let text = std::fs::read_to_string(&lines).unwrap_or_default();
            text.lines().filter_map(|l| l.rsplit('\t').next()).map(str::to_string).collect()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while written().len() < 50 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let (took, code) = sigterm_during_an_outage(&mut broker, &mut process).await;
        let before_restart = written().len();

        // What the first run did not ack comes back to the next one: nothing is lost.
        let mut restarted = ConnectorProcess::spawn(Path::new(SINK_BIN), &env).expect("respawn");
        restarted.wait_consuming(Duration::from_secs(30)).await.expect("consuming again");
        let deadline = Instant::now() + Duration::from_secs(90);
        while written().len() < TOTAL as usize && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got = written();
        let missing: Vec<u32> = (0..TOTAL).filter(|i| !got.contains(&format!("r-{i}"))).collect();
        let _ = restarted.terminate(Duration::from_secs(30)).await;
        assert!(missing.is_empty(), "{kind}: never written: {missing:?}\n{}", restarted.log());
        eprintln!("{kind}: SIGTERM during the outage: exit {code:?} after {took:?}; {before_restart} written before");
    }
}
