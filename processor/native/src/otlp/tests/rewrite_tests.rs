//! Unit tests of the rewriter's field writers and readers (rewrite.rs), included from rewrite.rs.
//! Each writer is checked against the plain nested encoding (what a protobuf library writes).

use super::*;

/// KeyValue { key, value: AnyValue { string_value: text } } built message by message.
fn nested_key_string(field: u32, key: &[u8], text: &[u8]) -> Vec<u8> {
    let mut kv = Vec::new();
    put_len(&mut kv, 1, key);
    put_len(&mut kv, 2, &string_any(text));
    let mut out = Vec::new();
    put_len(&mut out, field, &kv);
    out
}

#[test]
fn a_key_value_written_in_one_pass_is_the_nested_encoding() {
    for (key, text) in [
        (&b"k"[..], &b"v"[..]),
        (b"", b""),
        (b"genops.cost.model", &[b'x'; 200][..]),
        (&[b'k'; 130][..], &[b'y'; 20_000][..]),
    ] {
        let mut direct = Vec::new();
        put_key_string(&mut direct, 9, key, text);
        assert_eq!(
            direct,
            nested_key_string(9, key, text),
            "key {} bytes, text {} bytes",
            key.len(),
            text.len()
        );

        let mut with_any = Vec::new();
        put_key_value(&mut with_any, 9, key, &string_any(text));
        assert_eq!(with_any, direct);
    }
}

#[test]
fn the_key_is_found_in_any_field_order_and_beside_unknown_fields() {
    let plain = &nested_key_string(1, b"model", b"gpt")[2..];
    assert_eq!(plain_key(plain), Some(&b"model"[..]));
    assert_eq!(key_of(plain).unwrap(), b"model");

    let mut shuffled = Vec::new();
    put_len(&mut shuffled, 2, &string_any(b"gpt"));
    put_tag(&mut shuffled, 7, VARINT);
    put_varint(&mut shuffled, 1);
    put_len(&mut shuffled, 1, b"model");
    assert_eq!(plain_key(&shuffled), None);
    assert_eq!(key_of(&shuffled).unwrap(), b"model");

    // No key field: the empty key, as protobuf reads it.
    assert_eq!(key_of(&string_any(b"x")[..0]).unwrap(), b"");
    // Malformed bytes are an error, not a key.
    assert!(key_of(&[0x0a, 0x05, b'a']).is_err());
}

#[test]
fn only_fields_of_the_number_and_length_type_are_counted() {
    let mut buf = Vec::new();
    put_len(&mut buf, 1, b"a");
    put_len(&mut buf, 2, b"b");
    put_len(&mut buf, 1, b"c");
    // Field 1 as a varint is an unknown field to protobuf, not a repeated message.
    put_tag(&mut buf, 1, VARINT);
    put_varint(&mut buf, 3);
    assert_eq!(count_field(&buf, 1).unwrap(), 2);
    assert_eq!(count_field(&buf, 2).unwrap(), 1);
    assert_eq!(count_field(&buf, 3).unwrap(), 0);
    assert!(count_field(&[0x0a, 0x09], 1).is_err());
}

#[test]
fn a_field_is_canonical_only_with_the_shortest_length_prefix() {
    let mut short = Vec::new();
    put_len(&mut short, 1, b"abc");
    assert!(canonical(&short, 0, &short[2..]));
    // The same content behind a two-byte length (0x83 0x00): valid protobuf, not canonical.
    let padded = [0x0a, 0x83, 0x00, b'a', b'b', b'c'];
    assert!(!canonical(&padded, 0, &padded[3..]));
}

fn field(number: u32, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_len(&mut out, number, content);
    out
}

#[test]
fn a_dropped_field_takes_its_bytes_and_every_enclosing_length_with_it() {
    let unknown = field(99, b"secret");
    let kept = field(1, b"kept");
    let inner = [kept.clone(), unknown.clone()].concat();
    let raw = [field(1, &field(2, &inner)), field(1, b"other")].concat();
    let at = raw
        .windows(unknown.len())
        .position(|w| w == unknown)
        .unwrap();
    let dropped = at..at + unknown.len();
    let stripped = strip(&raw, &mut vec![dropped]).unwrap();
    assert_eq!(
        stripped,
        [field(1, &field(2, &kept)), field(1, b"other")].concat()
    );
}

#[test]
fn a_field_nested_twenty_thousand_deep_is_dropped_without_recursion() {
    // Far past what recursion fits in a 128 KiB stack.
    let depth = 20_000;
    let unknown = field(99, b"secret");
    let mut raw = [field(1, b"x"), unknown.clone()].concat();
    let mut expected = field(1, b"x");
    for _ in 0..depth {
        raw = field(5, &raw);
        expected = field(5, &expected);
    }
    let at = raw
        .windows(unknown.len())
        .rposition(|w| w == unknown)
        .unwrap();
    let dropped = at..at + unknown.len();
    let small_stack = std::thread::Builder::new().stack_size(128 * 1024);
    let stripped = small_stack
        .spawn(move || strip(&raw, &mut vec![dropped]))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(stripped.unwrap(), expected);
}
