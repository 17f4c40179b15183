//! Fuzzing the pgoutput decoder: arbitrary input is an error or a message, never a panic.

use bytes::Bytes;
use danube_postgres_cdc::pgoutput::{decode, Message, TupleValue};
use danube_postgres_cdc::value::to_json;
use proptest::prelude::*;

fn tuple_bytes(values: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = (values.len() as i16).to_be_bytes().to_vec();
    for value in values {
        match value {
            None => out.push(b'n'),
            Some(bytes) => {
                out.push(b't');
                out.extend((bytes.len() as i32).to_be_bytes());
                out.extend(bytes);
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&Bytes::from(data));
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_tag_never_panic(
        tag in proptest::sample::select(b"BCORYIUDTM".to_vec()),
        rest in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut data = vec![tag];
        data.extend(rest);
        let _ = decode(&Bytes::from(data));
    }

    #[test]
    fn inserts_round_trip(relation in any::<u32>(), values in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)), 0..20)) {
        let mut data = vec![b'I'];
        data.extend(relation.to_be_bytes());
        data.push(b'N');
        data.extend(tuple_bytes(&values));
        let decoded = decode(&Bytes::from(data.clone())).expect("valid insert");
        let expected: Vec<TupleValue> = values
            .iter()
            .map(|v| v.as_ref().map_or(TupleValue::Null, |b| TupleValue::Text(Bytes::from(b.clone()))))
            .collect();
        prop_assert_eq!(decoded, Message::Insert { relation, new: expected });
        // Any truncation of a valid message is an error.
        for len in 0..data.len() {
            prop_assert!(decode(&Bytes::from(data[..len].to_vec())).is_err());
        }
    }

    #[test]
    fn text_values_of_any_type_never_panic(oid in proptest::sample::select(vec![16u32, 17, 20, 21, 23, 114, 700, 701, 1007, 1009, 1114, 1184, 1266, 1700, 3802, 2950, 1231, 3807]), text in ".{0,40}") {
        let _ = to_json(oid, &text);
    }
}
