use super::*;
use crate::schema::{check_compatible, CompatibilityMode, Schema};
use serde_json::json;

const ORDER: &str = r#"
    syntax = "proto3";
    package shop.v1;
    import "google/protobuf/timestamp.proto";

    message Order {
        string order_id = 1;
        int64 amount_cents = 2;
        repeated Item items = 3;
        Status status = 4;
        map<string, string> labels = 5;
        google.protobuf.Timestamp created = 6;
        optional string note = 7;
    }
    message Item {
        string sku = 1;
        int32 qty = 2;
    }
    enum Status {
        STATUS_UNSPECIFIED = 0;
        STATUS_PAID = 1;
    }
"#;

fn order() -> Schema {
    Schema::compile(SchemaKind::Protobuf, ORDER).unwrap()
}

fn full_order() -> Value {
    json!({
        "order_id": "o-1",
        "amount_cents": "1250",
        "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}],
        "status": "STATUS_PAID",
        "labels": {"channel": "web"},
        "created": "2024-05-01T10:00:00Z",
        "note": "gift"
    })
}

#[test]
fn valid_message_round_trips_with_proto_field_names() {
    let schema = order();
    assert_eq!(schema.protobuf_message(), Some("shop.v1.Order"));
    let bytes = schema.encode_from_json(&full_order()).unwrap();
    schema.validate(&bytes).unwrap();
    assert_eq!(schema.decode_to_json(&bytes).unwrap(), full_order());
}

#[test]
fn json_names_are_accepted_and_defaults_are_emitted() {
    let schema = order();
    let bytes = schema.encode_from_json(&json!({"orderId": "o-2"})).unwrap();
    assert_eq!(bytes, vec![0x0a, 3, b'o', b'-', b'2']);
    let back = schema.decode_to_json(&bytes).unwrap();
    assert_eq!(back["order_id"], json!("o-2"));
    assert_eq!(back["amount_cents"], json!("0"));
    assert_eq!(back["items"], json!([]));
    assert_eq!(back["status"], json!("STATUS_UNSPECIFIED"));
    assert!(back.get("note").is_none(), "unset optional field is absent: {back}");
}

#[test]
fn invalid_json_values_name_the_field() {
    let schema = order();
    let err = schema.encode_from_json(&json!({"order_id": "o", "items": [{"sku": "a"}, {"qty": "many"}]})).unwrap_err();
    assert!(err.is_invalid_payload(), "{err}");
    assert_eq!(err.violations()[0].path, "/items/1/qty", "{err}");

    let err = schema.encode_from_json(&json!({"status": "STATUS_LOST"})).unwrap_err();
    assert_eq!(err.violations()[0].path, "/status", "{err}");

    let err = schema.encode_from_json(&json!({"order_id": "o", "colour": "red"})).unwrap_err();
    assert!(err.is_invalid_payload());
    assert!(err.to_string().contains("colour"), "{err}");
}

#[test]
fn corrupt_binary_payloads_name_the_field() {
    let schema = order();
    // order_id (field 1, string) with invalid UTF-8.
    let err = schema.validate(&[0x0a, 2, 0xff, 0xfe]).unwrap_err();
    assert!(err.is_invalid_payload());
    assert_eq!(err.violations()[0].path, "/order_id", "{err}");
    // items[0].qty (field 3 -> field 2) sent with the fixed32 wire type.
    let err = schema.validate(&[0x1a, 5, 0x15, 1, 0, 0, 0]).unwrap_err();
    assert_eq!(err.violations()[0].path, "/items/0/qty", "{err}");
    let mut second = vec![0x1a, 0];
    second.extend_from_slice(&[0x1a, 5, 0x15, 1, 0, 0, 0]);
    let err = schema.validate(&second).unwrap_err();
    assert_eq!(err.violations()[0].path, "/items/1/qty", "{err}");
    assert!(err.to_string().contains("wire type 5"), "{err}");
    // Truncated: length 10 with 1 byte left.
    let err = schema.validate(&[0x0a, 10, b'x']).unwrap_err();
    assert_eq!(err.violations()[0].path, "/order_id", "{err}");
    // Unknown fields are kept, as Protobuf readers do.
    schema.validate(&[0x78, 1]).unwrap();
}

const PROTO2: &str = r#"
    syntax = "proto2";
    package legacy;
    message Envelope {
        required Customer customer = 1;
        optional Kind kind = 2;
    }
    message Customer {
        required int64 id = 1;
        optional string name = 2;
    }
    enum Kind { A = 0; B = 1; }
"#;

#[test]
fn proto2_required_fields_are_enforced_with_paths() {
    let schema = Schema::compile(SchemaKind::Protobuf, PROTO2).unwrap();
    let err = schema.encode_from_json(&json!({"customer": {"name": "x"}})).unwrap_err();
    assert_eq!(err.violations()[0].path, "/customer/id", "{err}");
    assert!(err.to_string().contains("required field is missing"), "{err}");
    // Binary: customer present but empty.
    let err = schema.validate(&[0x0a, 0]).unwrap_err();
    assert_eq!(err.violations()[0].path, "/customer/id", "{err}");
    let ok = schema.encode_from_json(&json!({"customer": {"id": "5"}})).unwrap();
    assert_eq!(schema.decode_to_json(&ok).unwrap()["customer"]["id"], json!("5"));
}

#[test]
fn descriptor_sets_raw_and_base64_and_named_messages() {
    let (pool, _) = compile_source(ORDER).unwrap();
    let raw = pool.encode_to_vec();
    let from_raw = Schema::compile_protobuf(&raw, Some("shop.v1.Item")).unwrap();
    assert_eq!(from_raw.protobuf_message(), Some("shop.v1.Item"));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    // The main file of a set is its last file (imports come first).
    let from_b64 = Schema::compile(SchemaKind::Protobuf, b64.as_bytes()).unwrap();
    assert_eq!(from_b64.protobuf_message(), Some("shop.v1.Order"));
    let bytes = from_b64.encode_from_json(&full_order()).unwrap();
    assert_eq!(order().decode_to_json(&bytes).unwrap(), full_order());

    let err = Schema::compile_protobuf(ORDER.as_bytes(), Some("shop.v1.Nope")).unwrap_err();
    assert!(err.is_invalid_definition());
    assert!(err.to_string().contains("shop.v1.Item"), "{err}");
}

#[test]
fn invalid_definitions_are_refused() {
    for def in [
        "syntax = \"proto3\"; message A { strin x = 1; }",
        "syntax = \"proto3\"; import \"other.proto\"; message A {}",
        "syntax = \"proto3\";",
        "\u{1}\u{2}garbage",
    ] {
        let err = Schema::compile(SchemaKind::Protobuf, def).unwrap_err();
        assert!(err.is_invalid_definition(), "{def}: {err}");
    }
}

fn msg(fields: &str) -> Schema {
    Schema::compile(
        SchemaKind::Protobuf,
        format!("syntax = \"proto3\"; package p; message M {{ {fields} }} message Sub {{ string s = 1; }}"),
    )
    .unwrap()
}

const ALL: [CompatibilityMode; 3] = [CompatibilityMode::Backward, CompatibilityMode::Forward, CompatibilityMode::Full];

#[test]
fn adding_or_removing_optional_fields_and_widening_ints_is_compatible() {
    let v1 = msg("string id = 1; int32 n = 2;");
    let added = msg("string id = 1; int32 n = 2; Sub sub = 3; repeated string tags = 4;");
    let widened = msg("string id = 1; int64 n = 2;");
    let removed = msg("string id = 1;");
    for mode in ALL {
        check_compatible(&v1, &added, mode).unwrap();
        check_compatible(&v1, &widened, mode).unwrap();
        check_compatible(&v1, &removed, mode).unwrap();
    }
}

#[test]
fn changing_a_field_type_or_shape_is_refused() {
    let v1 = msg("string id = 1; int32 n = 2; Sub sub = 3;");
    let retyped = msg("string id = 1; string n = 2; Sub sub = 3;");
    let repeated = msg("string id = 1; repeated int32 n = 2; Sub sub = 3;");
    let zigzag = msg("string id = 1; sint32 n = 2; Sub sub = 3;");
    for mode in ALL {
        let err = check_compatible(&v1, &retyped, mode).unwrap_err();
        assert!(err.to_string().contains("/n: type changed from"), "{err}");
        assert!(err.to_string().contains("int32") && err.to_string().contains("string"), "{err}");
        let err = check_compatible(&v1, &repeated, mode).unwrap_err();
        assert!(err.to_string().contains("/n: field 2 changed from"), "{err}");
        assert!(check_compatible(&v1, &zigzag, mode).unwrap_err().is_incompatible());
    }
    check_compatible(&v1, &retyped, CompatibilityMode::None).unwrap();
    // Nested message fields are compared too.
    let nested = Schema::compile(
        SchemaKind::Protobuf,
        "syntax = \"proto3\"; package p; message M { string id = 1; int32 n = 2; Sub sub = 3; } message Sub { int64 s = 1; }",
    )
    .unwrap();
    let err = check_compatible(&v1, &nested, CompatibilityMode::Backward).unwrap_err();
    assert!(err.to_string().contains("/sub/s: type changed from string to int64"), "{err}");
}

#[test]
fn proto2_required_and_closed_enums_are_directional() {
    let v1 = Schema::compile(SchemaKind::Protobuf, PROTO2).unwrap();
    let with_required = Schema::compile(
        SchemaKind::Protobuf,
        PROTO2.replace("optional Kind kind = 2;", "optional Kind kind = 2; required string region = 3;"),
    )
    .unwrap();
    let err = check_compatible(&v1, &with_required, CompatibilityMode::Backward).unwrap_err();
    assert!(err.to_string().contains("/region: field 3 is required by the reader"), "{err}");
    check_compatible(&v1, &with_required, CompatibilityMode::Forward).unwrap();

    let more_kinds = Schema::compile(SchemaKind::Protobuf, PROTO2.replace("B = 1;", "B = 1; C = 2;")).unwrap();
    check_compatible(&v1, &more_kinds, CompatibilityMode::Backward).unwrap();
    let err = check_compatible(&v1, &more_kinds, CompatibilityMode::Forward).unwrap_err();
    assert!(err.to_string().contains("enum value C (2)"), "{err}");
    assert!(check_compatible(&v1, &more_kinds, CompatibilityMode::Full).is_err());
}
