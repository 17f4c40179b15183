use super::json::{format_decimal, parse_decimal};
use super::*;
use crate::schema::{check_compatible, CompatibilityMode, Schema};
use num_bigint::BigInt;
use serde_json::json;

const ORDER: &str = r#"{
    "type": "record", "name": "Order", "namespace": "shop.v1",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "qty", "type": "int"},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "SHIPPED"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "attrs", "type": {"type": "map", "values": "double"}, "default": {}},
        {"name": "note", "type": ["null", "string"], "default": null},
        {"name": "address", "type": ["null", {"type": "record", "name": "Address", "fields": [
            {"name": "city", "type": "string"},
            {"name": "zip", "type": "int"}
        ]}], "default": null},
        {"name": "billing", "type": ["null", "Address"], "default": null},
        {"name": "created", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "token", "type": {"type": "string", "logicalType": "uuid"}, "default": "00000000-0000-0000-0000-000000000000"},
        {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}, "default": "\u0000\u0000\u0000\u0000"},
        {"name": "ratio", "type": "float", "default": 0.5}
    ]
}"#;

fn order() -> Schema {
    Schema::compile(SchemaKind::Avro, ORDER).unwrap()
}

fn full_order() -> Value {
    json!({
        "id": 42, "customer": "ann", "qty": 3, "price": "12.30", "status": "PAID",
        "tags": ["a", "b"], "attrs": {"w": 1.5}, "note": "leave at door",
        "address": {"city": "Oslo", "zip": 150},
        "billing": {"city": "Bergen", "zip": 5003},
        "created": 1_700_000_000_000_i64,
        "token": "67e55044-10b1-426f-9247-bb680e5fe0c8",
        "hash": "AQIDBA==", "ratio": 0.1
    })
}

#[test]
fn valid_record_round_trips_through_binary() {
    let schema = order();
    let value = full_order();
    let bytes = schema.encode_from_json(&value).unwrap();
    schema.validate(&bytes).unwrap();
    assert_eq!(schema.decode_to_json(&bytes).unwrap(), value);
}

#[test]
fn missing_fields_take_their_defaults() {
    let schema = order();
    let bytes = schema
        .encode_from_json(&json!({
            "id": 1, "customer": "bo", "qty": 1, "price": 5, "status": "NEW", "created": 0
        }))
        .unwrap();
    let back = schema.decode_to_json(&bytes).unwrap();
    assert_eq!(back["price"], json!("5.00"));
    assert_eq!(back["tags"], json!([]));
    assert_eq!(back["note"], Value::Null);
    assert_eq!(back["ratio"], json!(0.5));
    assert_eq!(back["hash"], json!("AAAAAA=="));
}

#[test]
fn wire_format_is_a_plain_avro_datum() {
    let schema = Schema::compile(
        SchemaKind::Avro,
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"string"},
            {"name":"c","type":["null","long"]}]}"#,
    )
    .unwrap();
    let bytes = schema.encode_from_json(&json!({"a": 1, "b": "x", "c": -1})).unwrap();
    // zigzag(1)=2, len 1 + "x", union branch 1 then zigzag(-1)=1.
    assert_eq!(bytes, vec![2, 2, b'x', 2, 1]);
    assert_eq!(schema.decode_to_json(&[4, 0, 0]).unwrap(), json!({"a": 2, "b": "", "c": null}));
}

#[test]
fn invalid_json_values_name_the_field() {
    let schema = order();
    let mut value = full_order();
    value["qty"] = json!("three");
    value["address"] = json!({"city": "Oslo", "zip": "x"});
    value["status"] = json!("LOST");
    value["extra"] = json!(1);
    let err = schema.encode_from_json(&value).unwrap_err();
    assert!(err.is_invalid_payload(), "{err}");
    let paths: Vec<&str> = err.violations().iter().map(|v| v.path.as_str()).collect();
    assert_eq!(paths, ["/qty", "/status", "/address/zip", "/extra"], "{err}");
    let text = err.to_string();
    assert!(text.contains("/qty: expected an integer, got a string"), "{text}");
    assert!(text.contains("`LOST` is not a symbol of enum `shop.v1.Status`"), "{text}");
    assert!(text.contains("/extra: field is not in record `shop.v1.Order`"), "{text}");
}

#[test]
fn missing_field_without_default_and_out_of_range_int_are_refused() {
    let schema = order();
    let mut value = full_order();
    value.as_object_mut().unwrap().remove("customer");
    value["qty"] = json!(i64::from(i32::MAX) + 1);
    let err = schema.encode_from_json(&value).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/customer: required field is missing"), "{text}");
    assert!(text.contains("/qty: 2147483648 is out of range"), "{text}");
}

#[test]
fn decimals_keep_scale_and_refuse_lost_digits() {
    let schema = order();
    let mut value = full_order();
    value["price"] = json!("-0.05");
    let bytes = schema.encode_from_json(&value).unwrap();
    assert_eq!(schema.decode_to_json(&bytes).unwrap()["price"], json!("-0.05"));
    for bad in [json!("1.234"), json!("1234567890"), json!("1e3"), json!("abc")] {
        value["price"] = bad.clone();
        let err = schema.encode_from_json(&value).unwrap_err();
        assert_eq!(err.violations()[0].path, "/price", "{bad}: {err}");
    }
    assert_eq!(format_decimal(&BigInt::from(-5), 3), "-0.005");
    assert_eq!(parse_decimal("007.10", 2, 9).unwrap(), BigInt::from(710));
}

#[test]
fn unions_accept_plain_and_tagged_values() {
    let schema = order();
    let mut value = full_order();
    value["note"] = json!({"string": "tagged"});
    let bytes = schema.encode_from_json(&value).unwrap();
    assert_eq!(schema.decode_to_json(&bytes).unwrap()["note"], json!("tagged"));
    value["note"] = json!(12);
    let err = schema.encode_from_json(&value).unwrap_err();
    assert!(err.to_string().contains("/note: expected a string, got a number"), "{err}");
}

#[test]
fn non_finite_doubles_use_strings() {
    let schema = order();
    let mut value = full_order();
    value["attrs"] = json!({"nan": "NaN", "inf": "-Infinity"});
    let bytes = schema.encode_from_json(&value).unwrap();
    let back = schema.decode_to_json(&bytes).unwrap();
    assert_eq!(back["attrs"], json!({"nan": "NaN", "inf": "-Infinity"}));
}

#[test]
fn corrupt_binary_payloads_are_invalid() {
    let schema = order();
    let bytes = schema.encode_from_json(&full_order()).unwrap();
    let err = schema.validate(&bytes[..bytes.len() - 3]).unwrap_err();
    assert!(err.is_invalid_payload(), "{err}");
    let mut longer = bytes.clone();
    longer.push(0);
    let err = schema.validate(&longer).unwrap_err();
    assert!(err.to_string().contains("1 trailing bytes"), "{err}");
    // Enum index 9 of 3 symbols.
    let enum_schema = Schema::compile(SchemaKind::Avro, r#"{"type":"enum","name":"E","symbols":["A"]}"#).unwrap();
    assert!(enum_schema.validate(&[18]).unwrap_err().is_invalid_payload());
    let string_schema = Schema::compile(SchemaKind::Avro, r#""string""#).unwrap();
    assert!(string_schema.validate(&[4, 0xff, 0xfe]).unwrap_err().is_invalid_payload());
}

#[test]
fn corrupt_binary_payloads_name_the_field() {
    let schema = Schema::compile(
        SchemaKind::Avro,
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},
            {"name":"items","type":{"type":"array","items":{"type":"record","name":"I",
              "fields":[{"name":"s","type":"string"}]}}},
            {"name":"m","type":{"type":"map","values":["null","boolean"]}}]}"#,
    )
    .unwrap();
    // items[1].s has invalid UTF-8.
    let err = schema.decode_to_json(&[2, 4, 2, b'x', 2, 0xff, 0, 0]).unwrap_err();
    assert_eq!(err.violations()[0].path, "/items/1/s", "{err}");
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    // m["k"] selects union branch 5 of 2.
    let err = schema.validate(&[2, 0, 2, 2, b'k', 10, 0]).unwrap_err();
    assert_eq!(err.violations()[0].path, "/m/k", "{err}");
    assert!(err.to_string().contains("union branch 5 is out of range"), "{err}");
    // m["k"] = boolean byte 7.
    let err = schema.validate(&[2, 0, 2, 2, b'k', 2, 7, 0]).unwrap_err();
    assert!(err.to_string().contains("/m/k: invalid boolean byte 7"), "{err}");
    // a does not fit an int.
    let err = schema.validate(&[0x80, 0x80, 0x80, 0x80, 0x20, 0, 0]).unwrap_err();
    assert_eq!(err.violations()[0].path, "/a", "{err}");
}

#[test]
fn huge_counts_and_lengths_are_refused_without_allocating() {
    let nulls = Schema::compile(SchemaKind::Avro, r#"{"type":"array","items":"null"}"#).unwrap();
    // Block count 2^40 of zero-byte items.
    let huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0];
    let err = nulls.decode_to_json(&huge).unwrap_err();
    assert!(err.to_string().contains("exceeds the"), "{err}");
    // A small legitimate array of nulls still decodes.
    assert_eq!(nulls.decode_to_json(&[6, 0]).unwrap(), serde_json::json!([null, null, null]));
    let longs = Schema::compile(SchemaKind::Avro, r#"{"type":"array","items":"long"}"#).unwrap();
    assert!(longs.decode_to_json(&[0xfe, 0xff, 0xff, 0x7f, 2, 0]).is_err());
    let bytes = Schema::compile(SchemaKind::Avro, r#""bytes""#).unwrap();
    let err = bytes.decode_to_json(&[0xfe, 0xff, 0xff, 0xff, 0x0f, 1]).unwrap_err();
    assert!(err.to_string().contains("exceeds the 1 remaining bytes"), "{err}");
}

#[test]
fn invalid_definitions_are_refused() {
    for def in [
        "{",
        r#"{"type":"record","name":"R"}"#,
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"nope"}]}"#,
        r#"{"type":"enum","name":"E","symbols":["A","A"]}"#,
    ] {
        let err = Schema::compile(SchemaKind::Avro, def).unwrap_err();
        assert!(err.is_invalid_definition(), "{def}: {err}");
    }
}

#[test]
fn fingerprint_ignores_formatting() {
    let a = Schema::compile(SchemaKind::Avro, r#"{"type":"fixed","name":"F","size":2}"#).unwrap();
    let b = Schema::from_registry("avro", b"{ \"size\": 2, \"name\": \"F\", \"type\": \"fixed\" }").unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
}

fn user(fields: &str) -> Schema {
    Schema::compile(
        SchemaKind::Avro,
        format!(r#"{{"type":"record","name":"User","namespace":"acme","fields":[{fields}]}}"#),
    )
    .unwrap()
}

const V1: &str = r#"{"name":"id","type":"long"},{"name":"name","type":"string"}"#;

#[test]
fn adding_a_field_with_default_is_fully_compatible() {
    let v1 = user(V1);
    let v2 = user(&format!(r#"{V1},{{"name":"email","type":["null","string"],"default":null}}"#));
    for mode in [CompatibilityMode::Backward, CompatibilityMode::Forward, CompatibilityMode::Full] {
        check_compatible(&v1, &v2, mode).unwrap();
    }
    // And the resolution really works: a v1 datum read with v2 gets the default.
    let datum = v1.encode_from_json(&json!({"id": 7, "name": "a"})).unwrap();
    let AvroCodec { schema: w, .. } = &avro_codec(&v1);
    let AvroCodec { schema: r, .. } = &avro_codec(&v2);
    let read = apache_avro::from_avro_datum(w, &mut datum.as_slice(), Some(r)).unwrap();
    assert!(matches!(read, AvroValue::Record(ref f) if f.len() == 3), "{read:?}");
}

fn avro_codec(schema: &Schema) -> AvroCodec {
    AvroCodec::compile(schema.definition()).unwrap().0
}

#[test]
fn adding_a_field_without_default_breaks_backward_only() {
    let v1 = user(V1);
    let v2 = user(&format!(r#"{V1},{{"name":"age","type":"int"}}"#));
    let err = check_compatible(&v1, &v2, CompatibilityMode::Backward).unwrap_err();
    assert!(err.is_incompatible());
    assert!(err.to_string().contains("/age: field is not in the writer and has no default in the reader"), "{err}");
    check_compatible(&v1, &v2, CompatibilityMode::Forward).unwrap();
    assert!(check_compatible(&v1, &v2, CompatibilityMode::Full).is_err());
    check_compatible(&v1, &v2, CompatibilityMode::None).unwrap();
}

#[test]
fn removing_a_field_without_default_breaks_forward_only() {
    let v1 = user(V1);
    let v2 = user(r#"{"name":"id","type":"long"}"#);
    check_compatible(&v1, &v2, CompatibilityMode::Backward).unwrap();
    let err = check_compatible(&v1, &v2, CompatibilityMode::Forward).unwrap_err();
    assert!(err.to_string().contains("/name: field is not in the writer"), "{err}");
    assert!(check_compatible(&v1, &v2, CompatibilityMode::Full).is_err());
}

#[test]
fn a_schema_is_compatible_with_itself_including_named_references() {
    let schema = order();
    for mode in [CompatibilityMode::Backward, CompatibilityMode::Forward, CompatibilityMode::Full] {
        check_compatible(&schema, &order(), mode).unwrap();
    }
    // A change inside the referenced record is seen where it is defined.
    let changed = Schema::compile(
        SchemaKind::Avro,
        ORDER.replace(r#"{"name": "zip", "type": "int"}"#, r#"{"name": "zip", "type": "string"}"#),
    )
    .unwrap();
    let err = check_compatible(&schema, &changed, CompatibilityMode::Backward).unwrap_err();
    assert!(err.to_string().contains("/address/zip: writer type int cannot be read as string"), "{err}");
    assert!(err.to_string().contains("/billing/zip"), "{err}");
}

#[test]
fn float_overflow_is_refused() {
    let float = Schema::compile(SchemaKind::Avro, r#""float""#).unwrap();
    let err = float.encode_from_json(&json!(1e300)).unwrap_err();
    assert!(err.to_string().contains("out of the range of an Avro float"), "{err}");
    let bytes = float.encode_from_json(&json!(0.1)).unwrap();
    assert_eq!(float.decode_to_json(&bytes).unwrap(), json!(0.1));
}

#[test]
fn type_promotion_is_one_way() {
    let v1 = user(r#"{"name":"n","type":"int"}"#);
    let v2 = user(r#"{"name":"n","type":"long"}"#);
    check_compatible(&v1, &v2, CompatibilityMode::Backward).unwrap();
    assert!(check_compatible(&v1, &v2, CompatibilityMode::Forward).unwrap_err().is_incompatible());
    let v3 = user(r#"{"name":"n","type":"string"}"#);
    let err = check_compatible(&v1, &v3, CompatibilityMode::Backward).unwrap_err();
    assert!(err.to_string().contains("/n: writer type int cannot be read as string"), "{err}");
}

#[test]
fn enum_symbols_can_only_grow_for_backward() {
    let e =
        |symbols: &str| user(&format!(r#"{{"name":"s","type":{{"type":"enum","name":"S","symbols":[{symbols}]}}}}"#));
    let v1 = e(r#""A","B""#);
    let v2 = e(r#""A","B","C""#);
    check_compatible(&v1, &v2, CompatibilityMode::Backward).unwrap();
    assert!(check_compatible(&v1, &v2, CompatibilityMode::Forward).is_err());
}

#[test]
fn logical_types_aliases_unions_and_enum_defaults() {
    let dec = |scale: u32, precision: u32| {
        user(&format!(
            r#"{{"name":"p","type":{{"type":"bytes","logicalType":"decimal","precision":{precision},"scale":{scale}}}}}"#
        ))
    };
    check_compatible(&dec(2, 9), &dec(2, 12), CompatibilityMode::Backward).unwrap();
    let err = check_compatible(&dec(2, 9), &dec(3, 9), CompatibilityMode::Backward).unwrap_err();
    assert!(err.to_string().contains("/p: decimal scale changed from 2 to 3"), "{err}");
    let err = check_compatible(&dec(2, 9), &dec(2, 12), CompatibilityMode::Full).unwrap_err();
    assert!(err.to_string().contains("forward: /p: decimal precision shrank from 12 to 9"), "{err}");

    // A renamed field that lists the old name as an alias reads old data.
    let renamed = user(r#"{"name":"id","type":"long"},{"name":"full_name","aliases":["name"],"type":"string"}"#);
    check_compatible(&user(V1), &renamed, CompatibilityMode::Backward).unwrap();

    // Widening to a union is backward compatible, narrowing back is not forward.
    let nullable = user(r#"{"name":"id","type":"long"},{"name":"name","type":["null","string"],"default":null}"#);
    check_compatible(&user(V1), &nullable, CompatibilityMode::Backward).unwrap();
    let err = check_compatible(&user(V1), &nullable, CompatibilityMode::Forward).unwrap_err();
    assert!(err.to_string().contains("/name: writer type null cannot be read as string"), "{err}");

    // An enum reader with a default reads unknown symbols.
    let with_default = user(r#"{"name":"s","type":{"type":"enum","name":"S","symbols":["A","Z"],"default":"Z"}}"#);
    let three = user(r#"{"name":"s","type":{"type":"enum","name":"S","symbols":["A","B","C"]}}"#);
    check_compatible(&three, &with_default, CompatibilityMode::Backward).unwrap();
    let err = check_compatible(&three, &with_default, CompatibilityMode::Forward).unwrap_err();
    assert!(err.to_string().contains("enum symbol `Z`"), "{err}");

    // Fixed keeps its size; timestamps resolve as their long.
    let fixed = |size: u32| user(&format!(r#"{{"name":"f","type":{{"type":"fixed","name":"F","size":{size}}}}}"#));
    let err = check_compatible(&fixed(4), &fixed(8), CompatibilityMode::Backward).unwrap_err();
    assert!(err.to_string().contains("/f: fixed size changed from 4 to 8"), "{err}");
    let ts = user(r#"{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}"#);
    let long = user(r#"{"name":"t","type":"long"}"#);
    check_compatible(&ts, &long, CompatibilityMode::Full).unwrap();
}

#[test]
fn recursive_records_are_checked_without_looping() {
    let list = |extra: &str| {
        Schema::compile(
            SchemaKind::Avro,
            format!(
                r#"{{"type":"record","name":"Node","fields":[{{"name":"v","type":"int"}}{extra},
                {{"name":"next","type":["null","Node"],"default":null}}]}}"#
            ),
        )
        .unwrap()
    };
    check_compatible(&list(""), &list(""), CompatibilityMode::Full).unwrap();
    let grown = list(r#",{"name":"w","type":"int"}"#);
    let err = check_compatible(&list(""), &grown, CompatibilityMode::Backward).unwrap_err();
    assert!(err.to_string().contains("/w: field is not in the writer"), "{err}");
    let bytes = list("").encode_from_json(&json!({"v": 1, "next": {"v": 2}})).unwrap();
    assert_eq!(list("").decode_to_json(&bytes).unwrap(), json!({"v": 1, "next": {"v": 2, "next": null}}));
}

#[test]
fn direct_encoder_matches_apache_avro_byte_for_byte() {
    const LOGICAL: &str = r#"{"type":"record","name":"L","fields":[
        {"name":"d","type":{"type":"fixed","name":"D","size":12,"logicalType":"duration"}},
        {"name":"fd","type":{"type":"fixed","name":"FD","size":8,"logicalType":"decimal","precision":10,"scale":3}},
        {"name":"bd","type":{"type":"bytes","logicalType":"big-decimal"}},
        {"name":"u","type":{"type":"string","logicalType":"uuid"}},
        {"name":"day","type":{"type":"int","logicalType":"date"}},
        {"name":"f","type":"float"},
        {"name":"e","type":{"type":"array","items":"int"}}
    ]}"#;
    let cases = [
        (ORDER, full_order()),
        (
            LOGICAL,
            json!({"d": {"months": 1, "days": 2, "millis": 3}, "fd": "-12.345", "bd": "3.14159",
                   "u": "67e55044-10b1-426f-9247-bb680e5fe0c8", "day": 19000, "f": -2.5, "e": []}),
        ),
    ];
    for (def, value) in cases {
        let schema = Schema::compile(SchemaKind::Avro, def).unwrap();
        let ours = schema.encode_from_json(&value).unwrap();
        let codec = avro_codec(&schema);
        let decoded = apache_avro::from_avro_datum(&codec.schema, &mut ours.as_slice(), None).unwrap();
        let theirs = apache_avro::to_avro_datum(&codec.schema, decoded).unwrap();
        assert_eq!(ours, theirs, "{def}");
        let back = schema.decode_to_json(&ours).unwrap();
        if def == LOGICAL {
            assert_eq!(back["fd"], json!("-12.345"));
            assert_eq!(back["bd"], json!("3.14159"));
            assert_eq!(back["d"], json!({"months": 1, "days": 2, "millis": 3}));
        }
    }
}
