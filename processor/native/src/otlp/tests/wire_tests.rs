//! Unit tests of the protobuf wire reader and writer (wire.rs), included from wire.rs.

use super::*;

fn varint_bytes(value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, value);
    out
}

#[test]
fn varints_round_trip_at_every_length_boundary() {
    let mut values = vec![0, 1, u64::MAX];
    for bits in 1..64 {
        values.extend([(1u64 << bits) - 1, 1u64 << bits, (1u64 << bits) + 1]);
    }
    for value in values {
        let bytes = varint_bytes(value);
        assert_eq!(bytes.len(), varint_len(value), "length of {value}");
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.varint().unwrap(), value);
        assert!(reader.done());
    }
}

#[test]
fn a_truncated_or_overlong_varint_is_an_error() {
    assert_eq!(
        Reader::new(&[0x80, 0x80]).varint().unwrap_err(),
        "truncated varint"
    );
    assert_eq!(
        Reader::new(&[0xff; 11]).varint().unwrap_err(),
        "varint too long"
    );
}

#[test]
fn tags_give_field_and_wire_type_and_refuse_field_zero_and_out_of_range_numbers() {
    let mut out = Vec::new();
    put_tag(&mut out, 5, LEN);
    put_tag(&mut out, MAX_FIELD_NUMBER as u32, I32);
    let mut reader = Reader::new(&out);
    assert_eq!(reader.tag().unwrap(), (5, LEN));
    assert_eq!(reader.tag().unwrap(), (MAX_FIELD_NUMBER as u32, I32));
    assert_eq!(Reader::new(&[0x02]).tag().unwrap_err(), "field number 0");
    let too_big = varint_bytes((MAX_FIELD_NUMBER + 1) << 3);
    assert!(Reader::new(&too_big)
        .tag()
        .unwrap_err()
        .contains("out of range"));
}

#[test]
fn a_length_past_the_end_is_refused_and_put_len_writes_what_bytes_reads() {
    let mut out = Vec::new();
    put_len(&mut out, 3, b"hello");
    assert_eq!(out.len(), len_field_size(3, 5));
    let mut reader = Reader::new(&out);
    assert_eq!(reader.tag().unwrap(), (3, LEN));
    assert_eq!(reader.bytes().unwrap(), b"hello");
    assert!(reader.done());
    assert_eq!(
        Reader::new(&[0x05, b'a']).bytes().unwrap_err(),
        "truncated length-delimited field"
    );
    assert_eq!(
        Reader::new(&[1, 2, 3]).fixed64().unwrap_err(),
        "truncated fixed64"
    );
}

#[test]
fn skip_passes_every_wire_type_and_nested_groups() {
    let mut out = Vec::new();
    put_tag(&mut out, 1, VARINT);
    put_varint(&mut out, 300);
    put_tag(&mut out, 2, I64);
    out.extend_from_slice(&7u64.to_le_bytes());
    put_len(&mut out, 3, b"abc");
    put_tag(&mut out, 4, I32);
    out.extend_from_slice(&[0; 4]);
    // A group holding a group and a scalar.
    put_tag(&mut out, 6, START_GROUP);
    put_tag(&mut out, 7, START_GROUP);
    put_tag(&mut out, 8, VARINT);
    put_varint(&mut out, 1);
    put_tag(&mut out, 7, END_GROUP);
    put_tag(&mut out, 6, END_GROUP);
    put_len(&mut out, 9, b"after");
    let mut reader = Reader::new(&out);
    let mut fields = Vec::new();
    while !reader.done() {
        let (field, wire) = reader.tag().unwrap();
        fields.push(field);
        if field == 9 {
            assert_eq!(reader.bytes().unwrap(), b"after");
        } else {
            reader.skip(wire).unwrap();
        }
    }
    assert_eq!(fields, [1, 2, 3, 4, 6, 9]);
}

#[test]
fn a_group_ended_by_another_field_or_never_ended_is_an_error() {
    let mut wrong = Vec::new();
    put_tag(&mut wrong, 6, START_GROUP);
    put_tag(&mut wrong, 7, END_GROUP);
    let mut reader = Reader::new(&wrong);
    let (_, wire) = reader.tag().unwrap();
    assert_eq!(reader.skip(wire).unwrap_err(), "group 6 ended by field 7");

    let mut open = Vec::new();
    put_tag(&mut open, 6, START_GROUP);
    let mut reader = Reader::new(&open);
    let (_, wire) = reader.tag().unwrap();
    assert_eq!(reader.skip(wire).unwrap_err(), "truncated group");

    let mut stray = Vec::new();
    put_tag(&mut stray, 6, END_GROUP);
    let mut reader = Reader::new(&stray);
    let (_, wire) = reader.tag().unwrap();
    assert!(reader.skip(wire).is_err());
    assert_eq!(Reader::new(&[]).skip(6).unwrap_err(), "invalid wire type 6");
}
