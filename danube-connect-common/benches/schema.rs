//! Encode+validate rate per schema format, against a plain `serde_json` parse measured in the
//! same run.
//!
//! Run: `cargo bench -p danube-connect-common --bench schema` (optional argument: seconds per
//! measurement, default 2).
//!
//! Every format handles the same 1,000 distinct order records (about 300 bytes as JSON):
//! - baseline: `serde_json::from_slice::<Value>` of the JSON text (what an unvalidated pipeline
//!   does at least);
//! - encode+validate: `Schema::encode_from_json` (JSON value -> checked wire payload) followed
//!   by `Schema::validate` of the result (what a validating source does);
//! - validate: `Schema::validate` of a wire payload alone (what a source does for a payload
//!   already in the wire format);
//! - decode: `Schema::decode_to_json` (what a decoding sink does).

use std::hint::black_box;
use std::time::{Duration, Instant};

use danube_connect_common::schema::{Schema, SchemaKind};
use serde_json::{json, Value};

const RECORDS: usize = 1_000;

const JSON_SCHEMA: &str = r#"{
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "customer": {"type": "string", "minLength": 1},
        "amount_cents": {"type": "integer", "minimum": 0},
        "currency": {"type": "string", "enum": ["EUR", "USD", "NOK"]},
        "paid": {"type": "boolean"},
        "note": {"type": ["string", "null"]},
        "items": {"type": "array", "items": {
            "type": "object",
            "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
            "required": ["sku", "qty"]
        }}
    },
    "required": ["order_id", "customer", "amount_cents", "currency", "paid", "items"]
}"#;

const AVRO: &str = r#"{
    "type": "record", "name": "Order", "namespace": "bench",
    "fields": [
        {"name": "order_id", "type": "string"},
        {"name": "customer", "type": "string"},
        {"name": "amount_cents", "type": "long"},
        {"name": "currency", "type": {"type": "enum", "name": "Currency", "symbols": ["EUR", "USD", "NOK"]}},
        {"name": "paid", "type": "boolean"},
        {"name": "note", "type": ["null", "string"], "default": null},
        {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "Item",
            "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}]}}}
    ]
}"#;

const PROTO: &str = r#"
    syntax = "proto3";
    package bench;
    message Order {
        string order_id = 1;
        string customer = 2;
        int64 amount_cents = 3;
        Currency currency = 4;
        bool paid = 5;
        optional string note = 6;
        repeated Item items = 7;
    }
    message Item { string sku = 1; int32 qty = 2; }
    enum Currency { EUR = 0; USD = 1; NOK = 2; }
"#;

fn record(i: usize) -> Value {
    let currency = ["EUR", "USD", "NOK"][i % 3];
    let items: Vec<Value> =
        (0..1 + i % 4).map(|n| json!({"sku": format!("sku-{:05}-{n}", i * 7 % 10_000), "qty": 1 + n})).collect();
    json!({
        "order_id": format!("ord-{i:08}"),
        "customer": format!("customer-{}@example.com", i % 977),
        "amount_cents": 1_000 + (i * 37) % 100_000,
        "currency": currency,
        "paid": i.is_multiple_of(2),
        "note": if i.is_multiple_of(5) { Value::Null } else { Value::from(format!("note {i}")) },
        "items": items,
    })
}

/// The protobuf JSON form: 64-bit integers are strings in the proto3 mapping, but numbers are
/// accepted too; `note: null` means unset.
fn proto_record(v: &Value) -> Value {
    let mut v = v.clone();
    if v["note"].is_null() {
        v.as_object_mut().map(|m| m.remove("note"));
    }
    v
}

/// Runs `f` over all records repeatedly for `budget`; returns records per second.
fn rate<T>(budget: Duration, inputs: &[T], mut f: impl FnMut(&T)) -> f64 {
    // Warm-up pass.
    for input in inputs {
        f(input);
    }
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < budget {
        for input in inputs {
            f(input);
        }
        done += inputs.len();
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let seconds: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2.0);
    let budget = Duration::from_secs_f64(seconds);

    let values: Vec<Value> = (0..RECORDS).map(record).collect();
    let json_texts: Vec<Vec<u8>> = values.iter().map(|v| serde_json::to_vec(v).unwrap()).collect();
    let avg_json = json_texts.iter().map(Vec::len).sum::<usize>() / RECORDS;

    let baseline = rate(budget, &json_texts, |text| {
        black_box(serde_json::from_slice::<Value>(text).unwrap());
    });

    let formats: Vec<(&str, Schema, Vec<Value>)> = vec![
        ("json_schema", Schema::compile(SchemaKind::JsonSchema, JSON_SCHEMA).unwrap(), values.clone()),
        ("avro", Schema::compile(SchemaKind::Avro, AVRO).unwrap(), values.clone()),
        ("protobuf", Schema::compile(SchemaKind::Protobuf, PROTO).unwrap(), values.iter().map(proto_record).collect()),
    ];

    println!("schema bench: {RECORDS} distinct order records, {seconds}s per figure");
    println!("baseline serde_json parse ({avg_json} B avg): {baseline:>12.0} records/s");
    println!(
        "{:<12} {:>8} {:>18} {:>8} {:>16} {:>8} {:>16} {:>8}",
        "format", "wire B", "encode+validate/s", "ratio", "validate/s", "ratio", "decode/s", "ratio"
    );
    for (name, schema, inputs) in &formats {
        let payloads: Vec<Vec<u8>> = inputs.iter().map(|v| schema.encode_from_json(v).unwrap()).collect();
        for (p, v) in payloads.iter().zip(inputs) {
            schema.validate(p).unwrap();
            let back = schema.decode_to_json(p).unwrap();
            assert_eq!(back["order_id"], v["order_id"]);
        }
        let wire = payloads.iter().map(Vec::len).sum::<usize>() / RECORDS;
        let encode_validate = rate(budget, inputs, |v| {
            let bytes = schema.encode_from_json(v).unwrap();
            schema.validate(&bytes).unwrap();
            black_box(bytes);
        });
        let validate = rate(budget, &payloads, |p| {
            schema.validate(p).unwrap();
        });
        let decode = rate(budget, &payloads, |p| {
            black_box(schema.decode_to_json(p).unwrap());
        });
        println!(
            "{:<12} {:>8} {:>18.0} {:>8.2} {:>16.0} {:>8.2} {:>16.0} {:>8.2}",
            name,
            wire,
            encode_validate,
            encode_validate / baseline,
            validate,
            validate / baseline,
            decode,
            decode / baseline
        );
    }
    println!("ratio = rate / baseline serde_json parse rate (same run)");
}
