//! Unit tests of the scanner's value rendering (scan.rs), included from scan.rs. What Python
//! renders for the same values (processor/core/nested_values.py) is the reference: repr of a float,
//! json.dumps(ensure_ascii=False, separators=(",", ":")) of nested values.

use super::*;
use crate::otlp::wire::{put_len, put_tag, put_varint};

fn any_string(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_len(&mut out, 1, text.as_bytes());
    out
}

fn any_int(value: i64) -> Vec<u8> {
    let mut out = Vec::new();
    put_tag(&mut out, 3, VARINT);
    put_varint(&mut out, value as u64);
    out
}

fn any_double(value: f64) -> Vec<u8> {
    let mut out = Vec::new();
    put_tag(&mut out, 4, I64);
    out.extend_from_slice(&value.to_bits().to_le_bytes());
    out
}

fn any_bool(value: bool) -> Vec<u8> {
    let mut out = Vec::new();
    put_tag(&mut out, 2, VARINT);
    put_varint(&mut out, value as u64);
    out
}

fn array(values: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for value in values {
        put_len(&mut out, 1, value);
    }
    out
}

fn kv_message(key: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_len(&mut out, 1, key.as_bytes());
    put_len(&mut out, 2, value);
    out
}

fn kvlist(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in entries {
        put_len(&mut out, 1, &kv_message(key, value));
    }
    out
}

fn rendered(top: Scalar<'_>) -> String {
    let mut out = String::new();
    json_nested(top, &mut out).unwrap();
    out
}

#[test]
fn doubles_render_as_python_repr_does() {
    let cases = [
        (1.0, "1.0"),
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (1e16, "1e+16"),
        (1234567890123456.0, "1234567890123456.0"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (123456789.125, "123456789.125"),
        (1e300, "1e+300"),
        (-0.0, "-0.0"),
        (0.0, "0.0"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
        (f64::NAN, "nan"),
        (5e-324, "5e-324"),
        (f64::MAX, "1.7976931348623157e+308"),
    ];
    for (value, python) in cases {
        assert_eq!(python_float_repr(value), python, "repr of {value:e}");
    }
}

#[test]
fn integers_render_in_full_including_the_extremes() {
    for value in [0, 7, -7, i64::MAX, i64::MIN] {
        let mut out = Vec::new();
        push_int(&mut out, value);
        assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
    }
}

#[test]
fn the_last_oneof_field_wins_and_every_copy_is_kept_in_order() {
    let one = any_string("only");
    let (value, copies) = any_value_copies(&[&one]).unwrap();
    assert!(matches!(value, Scalar::Str(b"only")));
    assert!(copies.is_none());

    // A string then an int in one message, then a bool in a second chunk: protobuf keeps the bool.
    let mut first = any_string("a");
    first.extend(any_int(-3));
    let second = any_bool(true);
    let (value, copies) = any_value_copies(&[&first, &second]).unwrap();
    assert!(matches!(value, Scalar::Bool(true)));
    let copies = copies.unwrap();
    assert_eq!(copies.len(), 3);
    assert!(matches!(copies[0], Scalar::Str(b"a")));
    assert!(matches!(copies[1], Scalar::Int(-3)));

    // A known number with another wire type is an unknown field: skipped, not a value.
    let mut odd = Vec::new();
    put_tag(&mut odd, 1, VARINT);
    put_varint(&mut odd, 9);
    let (value, copies) = any_value_copies(&[&odd]).unwrap();
    assert!(matches!(value, Scalar::Missing));
    assert!(copies.is_none());
}

#[test]
fn a_single_value_is_read_only_when_it_is_the_whole_message() {
    assert!(matches!(single_value(&any_int(42)), Some(Scalar::Int(42))));
    assert!(matches!(single_value(&any_double(0.5)), Some(Scalar::Double(d)) if d == 0.5));
    let mut two = any_int(1);
    two.extend(any_int(2));
    assert!(single_value(&two).is_none());
    assert!(single_value(&[]).is_none());
}

#[test]
fn nested_values_render_as_compact_json() {
    let inner = array(&[any_int(1), any_double(2.0), any_bool(false)]);
    let mut any_inner = Vec::new();
    put_len(&mut any_inner, 5, &inner);
    let list = kvlist(&[
        ("name", any_string("a \"quoted\"\nline\u{1}")),
        ("n", any_inner),
        ("inf", any_double(f64::INFINITY)),
    ]);
    assert_eq!(
        rendered(Scalar::KvList(&list)),
        r#"{"name":"a \"quoted\"\nline\u0001","n":[1,2.0,false],"inf":"inf"}"#
    );
    assert_eq!(rendered(Scalar::Array(&[])), "[]");
    // An array element without a value renders as null, as Python's renderer does.
    assert_eq!(rendered(Scalar::Array(&array(&[Vec::new()]))), "[null]");
}

#[test]
fn a_repeated_kvlist_key_keeps_its_first_place_and_its_last_value() {
    let list = kvlist(&[("a", any_int(1)), ("b", any_int(2)), ("a", any_int(3))]);
    assert_eq!(rendered(Scalar::KvList(&list)), r#"{"a":3,"b":2}"#);
}

#[test]
fn a_key_value_in_any_field_order_gives_the_same_pair() {
    let plain = kv_message("k", &any_int(5));
    let (key, value) = key_value(&plain).unwrap();
    assert_eq!(key, b"k");
    assert!(matches!(value, KvValue::One(v) if v == any_int(5).as_slice()));

    let mut reversed = Vec::new();
    put_len(&mut reversed, 2, &any_int(5));
    put_len(&mut reversed, 1, b"k");
    assert!(plain_key_value(&reversed).is_none());
    let (key, value) = key_value(&reversed).unwrap();
    assert_eq!(key, b"k");
    assert_eq!(value.chunks(), [any_int(5).as_slice()]);
}

#[test]
fn nesting_deeper_than_the_limit_is_refused_without_recursion() {
    // MAX_NESTING + 1 arrays, each holding the next. Lengths are worked out inside out first, so
    // the bytes are written once, outermost first (wrapping copy by copy would be quadratic).
    let inner = any_int(0);
    let mut lengths = Vec::with_capacity(MAX_NESTING + 1);
    let mut content = inner.len();
    for _ in 0..=MAX_NESTING {
        // ArrayValue { values: [AnyValue of `content` bytes] }, then AnyValue { array_value }.
        let array_len = 1 + crate::otlp::wire::varint_len(content as u64) + content;
        lengths.push((array_len, content));
        content = 1 + crate::otlp::wire::varint_len(array_len as u64) + array_len;
    }
    let mut value = Vec::with_capacity(content);
    for &(array_len, element_len) in lengths.iter().rev() {
        put_tag(&mut value, 5, LEN);
        put_varint(&mut value, array_len as u64);
        put_tag(&mut value, 1, LEN);
        put_varint(&mut value, element_len as u64);
    }
    value.extend_from_slice(&inner);
    let (top, _) = any_value_copies(&[&value]).unwrap();
    let mut out = String::new();
    assert!(json_nested(top, &mut out).is_err());
}

#[test]
fn nesting_a_few_levels_deep_renders_each_level() {
    let mut value = any_int(0);
    for _ in 1..10 {
        let mut any = Vec::new();
        put_len(&mut any, 5, &array(&[value]));
        value = any;
    }
    let (top, _) = any_value_copies(&[&value]).unwrap();
    assert_eq!(
        rendered(top),
        format!("{}0{}", "[".repeat(9), "]".repeat(9))
    );
}

/// A redactor's view for the scan: every value of every key, and keyless texts as `keyless` says.
struct Rules {
    keyless: bool,
}

impl ValuesFilter for Rules {
    fn values_needed(&self, _key: &[u8]) -> Needed {
        Needed::Every
    }

    fn keyless_needed(&self) -> bool {
        self.keyless
    }
}

/// A request of one span named "checkout" with a status message, an event named "retry" and an
/// unknown length-delimited field (number 100), and one attribute.
fn request_with_keyless_texts() -> Vec<u8> {
    let mut span = Vec::new();
    put_len(&mut span, 5, b"checkout");
    put_len(&mut span, 9, &kv_message("user", &any_string("ann")));
    let mut event = Vec::new();
    put_len(&mut event, 2, b"retry");
    put_len(&mut span, 11, &event);
    let mut status = Vec::new();
    put_len(&mut status, 2, b"timed out");
    put_len(&mut span, 15, &status);
    put_len(&mut span, 100, b"hidden");
    let mut scope = Vec::new();
    put_len(&mut scope, 2, &span);
    let mut group = Vec::new();
    put_len(&mut group, 2, &scope);
    let mut request = Vec::new();
    put_len(&mut request, 1, &group);
    request
}

fn listed_scopes(rules: &Rules) -> Vec<u8> {
    let raw = request_with_keyless_texts();
    let mut state = Scan::new(&raw, &[], &[], false, false, Some(rules));
    walk(&mut state, &raw, false).unwrap();
    let mut scopes: Vec<u8> = state
        .strings
        .parts
        .iter()
        .flat_map(|p| p.scope.clone())
        .collect();
    scopes.sort_unstable();
    scopes
}

#[test]
fn texts_without_a_key_are_listed_only_when_a_rule_can_change_them() {
    let every = listed_scopes(&Rules { keyless: true });
    let expected = [
        SCOPE_ATTRIBUTE,
        SCOPE_SPAN_NAME,
        SCOPE_STATUS,
        SCOPE_EVENT_NAME,
        SCOPE_UNKNOWN,
    ];
    let mut expected = expected.to_vec();
    expected.sort_unstable();
    assert_eq!(every, expected);
    assert_eq!(
        listed_scopes(&Rules { keyless: false }),
        vec![SCOPE_ATTRIBUTE]
    );
}
