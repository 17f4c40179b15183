//! Per-record cost of `[[transforms]]`: a typical 3-line VRL program run on a small webhook
//! payload through the runtime's own path (payload parsed into VRL's value, metadata built,
//! the program run, the payload written back), beside a baseline measured in the same run: the
//! same payload parsed into `serde_json::Value` and written back (what any JSON-aware step
//! costs). Prints ns per record, records/s and the ratio to the baseline.
//!
//! Run: `cargo bench -p danube-connect-core --bench transform` (`BENCH_RECORDS`, default
//! 200000).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use danube_connect_core::transform::{payload_bytes, payload_value, Applied, TransformConfig, Transforms};

const PAYLOAD: &[u8] = br#"{"event":"push","repository":"danube-connect","n":12345}"#;

const PROGRAM: &str = r#"if .event == "test" { abort }
.repo = del(.repository)
%attributes.event = to_string(.event) ?? "unknown""#;

fn main() {
    let records: usize = std::env::var("BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let transforms = Transforms::compile(&[TransformConfig::inline("bench", PROGRAM)]).expect("compiles");
    let attributes: HashMap<String, String> = [
        ("content-type", "application/json"),
        ("http.method", "POST"),
        ("http.path", "/bench"),
        ("http.endpoint", "/bench"),
        ("http.remote_addr", "127.0.0.1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let payload = Bytes::from_static(PAYLOAD);

    let transform_once = || {
        let (value, was_json) = payload_value(&payload);
        match transforms.apply("/default/bench", None, &attributes, value).expect("runs") {
            Applied::Kept(out) => {
                let bytes = payload_bytes(&out.payload, was_json).expect("json");
                black_box((bytes, out.attributes, out.topic));
            }
            Applied::Dropped { .. } => unreachable!("the bench payload is kept"),
        }
    };
    let baseline_once = || {
        let value: serde_json::Value = serde_json::from_slice(&payload).expect("json");
        black_box(serde_json::to_vec(&value).expect("json"));
        black_box(attributes.clone());
    };
    // Warm up, then alternate rounds so a change of machine load weighs on both.
    for _ in 0..records / 10 {
        transform_once();
        baseline_once();
    }
    let rounds = 5;
    let (mut transform_ns, mut baseline_ns) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..records / rounds {
            baseline_once();
        }
        baseline_ns.push(started.elapsed().as_nanos() as f64 / (records / rounds) as f64);
        let started = Instant::now();
        for _ in 0..records / rounds {
            transform_once();
        }
        transform_ns.push(started.elapsed().as_nanos() as f64 / (records / rounds) as f64);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (transform, baseline) = (median(transform_ns), median(baseline_ns));
    println!(
        "transform per-record cost, {records} records, 3-line program, {} byte payload, 5 attributes",
        PAYLOAD.len()
    );
    println!(
        "baseline (serde_json parse + write + attributes clone): {baseline:.0} ns/record ({:.0} records/s)",
        1e9 / baseline
    );
    println!(
        "transform (parse to VRL value, run, write back):        {transform:.0} ns/record ({:.0} records/s)",
        1e9 / transform
    );
    println!(
        "ratio transform / baseline: {:.2}x; added cost over the baseline: {:.0} ns/record",
        transform / baseline,
        transform - baseline
    );
}
