//! Reads an OTLP export request once and collects what the stages asked for (see lib.rs).
//!
//! Values are borrowed from the request bytes while scanning and written once, into the Arrow
//! buffers the Python side turns into polars columns (see arrow.rs).

use std::borrow::Cow;
use std::io::Write;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::fasthash::{FastMap, KeyBytes};
use crate::otlp::arrow::{
    concat_to_py, is_utf8, le_bytes, plain_to_py, push_text, view_in, view_of, view_written,
    Bitmap, View, Views, INLINE,
};
use crate::otlp::wire::{Reader, WireResult, I32, I64, LEN, START_GROUP, VARINT};

/// Which of a key's values a consumer of the values can change (`ValuesFilter::values_needed`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needed {
    Every,
    /// Text, arrays and maps: numbers, booleans and bytes pass every rule unchanged.
    Text,
    None,
}

/// What the scan asks of whoever takes the values (the redactor): which ones to list. A trait, so
/// the wire format does not depend on the stages that read it.
pub(crate) trait ValuesFilter: Sync {
    fn values_needed(&self, key: &[u8]) -> Needed;
    /// Whether any rule can change a text that has no key: a span name, a status message, an
    /// event name, a log body or event name, an unknown field. When none can, the scan lists
    /// none of them.
    fn keyless_needed(&self) -> bool;
}

#[derive(Clone, Copy, Debug)]
enum Scalar<'a> {
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// The raw ArrayValue / KeyValueList message, rendered as JSON only if someone asks.
    Array(&'a [u8]),
    KvList(&'a [u8]),
    Missing,
}

impl Scalar<'_> {
    /// The AnyValue oneof field number (1 string ... 7 bytes); None when no value is set.
    fn kind_code(&self) -> Option<u8> {
        Some(match self {
            Scalar::Str(_) => 1,
            Scalar::Bool(_) => 2,
            Scalar::Int(_) => 3,
            Scalar::Double(_) => 4,
            Scalar::Array(_) => 5,
            Scalar::KvList(_) => 6,
            Scalar::Bytes(_) => 7,
            Scalar::Missing => return None,
        })
    }

    /// The kind a frame column takes from it: arrays, kvlists and unset values are null there.
    fn column_kind(&self) -> Option<u8> {
        match self {
            Scalar::Array(_) | Scalar::KvList(_) | Scalar::Missing => None,
            other => other.kind_code(),
        }
    }

    /// The text the redaction stage scans (processor/core/decode.py `_render`), written into `out`.
    /// False when a nested value cannot be rendered here; the Python side renders it then.
    fn render(&self, out: &mut Vec<u8>) -> bool {
        match *self {
            Scalar::Str(s) => push_text(out, s),
            Scalar::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Scalar::Int(i) => push_int(out, i),
            Scalar::Double(d) => push_float_repr(out, d),
            Scalar::Bytes(b) => push_hex(out, b),
            Scalar::Array(_) | Scalar::KvList(_) => {
                let mut rendered = String::new();
                if json_nested(*self, &mut rendered).is_err() {
                    return false;
                }
                out.extend_from_slice(rendered.as_bytes());
            }
            Scalar::Missing => return false,
        }
        true
    }

    /// Python's `str()` of the value, for a frame column mixing kinds (decode.py `_column`).
    fn python_str(&self, out: &mut Vec<u8>) {
        match *self {
            Scalar::Bool(b) => out.extend_from_slice(if b { b"True" } else { b"False" }),
            Scalar::Bytes(b) => {
                let _ = write!(out, "{:?}", PyBytesRepr(b));
            }
            _ => {
                self.render(out);
            }
        }
    }
}

fn push_hex(out: &mut Vec<u8>, raw: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &byte in raw {
        out.push(DIGITS[(byte >> 4) as usize]);
        out.push(DIGITS[(byte & 15) as usize]);
    }
}

fn hex(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len() * 2);
    push_hex(&mut out, raw);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Decimal digits of an integer, as `{i}` formats it, without the formatting machinery.
fn push_int(out: &mut Vec<u8>, value: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// A fixed buffer `write!` formats into: a double's `{:e}` form is at most 25 bytes.
struct Stack {
    bytes: [u8; 40],
    len: usize,
}

impl std::fmt::Write for Stack {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let end = self.len + text.len();
        self.bytes
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Formats a double the way Python's repr does, so both decoders render values alike.
fn python_float_repr(d: f64) -> String {
    let mut out = Vec::with_capacity(24);
    push_float_repr(&mut out, d);
    String::from_utf8(out).expect("a formatted number is ASCII")
}

/// `python_float_repr`, appended to `out` with no allocation of its own.
fn push_float_repr(out: &mut Vec<u8>, d: f64) {
    if d.is_nan() {
        return out.extend_from_slice(b"nan");
    }
    if d.is_infinite() {
        return out.extend_from_slice(if d > 0.0 { b"inf" } else { b"-inf" });
    }
    if d == 0.0 {
        return out.extend_from_slice(if d.is_sign_negative() {
            b"-0.0"
        } else {
            b"0.0"
        });
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let mut sci = Stack {
        bytes: [0; 40],
        len: 0,
    };
    std::fmt::Write::write_fmt(&mut sci, format_args!("{d:e}")).expect("fits 40 bytes");
    let sci = &sci.bytes[..sci.len];
    let e = sci.iter().position(|&b| b == b'e').unwrap_or(sci.len());
    let (mantissa, exponent) = (&sci[..e], sci.get(e + 1..).unwrap_or(b"0"));
    let exponent: i32 = std::str::from_utf8(exponent)
        .ok()
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let mut digits = [0u8; 24];
    let mut count = 0;
    for &b in mantissa.iter().filter(|b| b.is_ascii_digit()) {
        digits[count] = b;
        count += 1;
    }
    let digits = &digits[..count];
    if mantissa.first() == Some(&b'-') {
        out.push(b'-');
    }
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        if point <= 0 {
            out.extend_from_slice(b"0.");
            out.resize(out.len() + (-point) as usize, b'0');
            out.extend_from_slice(digits);
        } else if point as usize >= digits.len() {
            out.extend_from_slice(digits);
            out.resize(out.len() + point as usize - digits.len(), b'0');
            out.extend_from_slice(b".0");
        } else {
            out.extend_from_slice(&digits[..point as usize]);
            out.push(b'.');
            out.extend_from_slice(&digits[point as usize..]);
        }
    } else {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exponent < 0 { b'-' } else { b'+' });
        let magnitude = exponent.unsigned_abs();
        if magnitude < 10 {
            out.push(b'0');
        }
        push_int(out, magnitude as i64);
    }
}

fn text(raw: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(raw)
}

/// An AnyValue sent as one or more messages (a KeyValue or LogRecord repeating its value field:
/// protobuf merges them as one). Returns the value a protobuf parser keeps (the last field of
/// the oneof) and, when the oneof field appears more than once, every copy in order: the
/// redaction stage has to see the copies a parser drops too, since their bytes go out as sent.
fn any_value_copies<'a>(chunks: &[&'a [u8]]) -> WireResult<(Scalar<'a>, Option<Vec<Scalar<'a>>>)> {
    if let [buf] = chunks {
        if let Some(value) = single_value(buf) {
            return Ok((value, None));
        }
    }
    let mut value = Scalar::Missing;
    let mut copies: Option<Vec<Scalar<'a>>> = None;
    for buf in chunks {
        let mut reader = Reader::new(buf);
        while !reader.done() {
            let (field, wire) = reader.tag()?;
            let next = match (field, wire) {
                (1, LEN) => Scalar::Str(reader.bytes()?),
                (2, VARINT) => Scalar::Bool(reader.varint()? != 0),
                (3, VARINT) => Scalar::Int(reader.varint()? as i64),
                (4, I64) => Scalar::Double(f64::from_bits(reader.fixed64()?)),
                (5, LEN) => Scalar::Array(reader.bytes()?),
                (6, LEN) => Scalar::KvList(reader.bytes()?),
                (7, LEN) => Scalar::Bytes(reader.bytes()?),
                // A declared number with another wire type is an unknown field to protobuf.
                _ => {
                    reader.skip(wire)?;
                    continue;
                }
            };
            if !matches!(value, Scalar::Missing) {
                copies.get_or_insert_with(|| vec![value]).push(next);
            }
            value = next;
        }
    }
    Ok((value, copies))
}

/// The usual AnyValue, one string, int, double or bool field and nothing else, read without the
/// field loop (which gives the same value for it); None for any other shape.
#[inline]
fn single_value(buf: &[u8]) -> Option<Scalar<'_>> {
    let mut reader = Reader::new(buf);
    reader.pos = 1;
    let value = match *buf.first()? {
        0x0a => Scalar::Str(reader.bytes().ok()?),
        0x18 => Scalar::Int(reader.varint().ok()? as i64),
        0x21 => Scalar::Double(f64::from_bits(reader.fixed64().ok()?)),
        0x10 => Scalar::Bool(reader.varint().ok()? != 0),
        _ => return None,
    };
    reader.done().then_some(value)
}

/// Deepest nesting of arrays and kvlists inside one value that is rendered for the redaction
/// stage. Both walks here are iterative, so the limit bounds memory (about 40 bytes a level),
/// not the stack; it is ten times protobuf-go's default recursion limit (10,000). A deeper value
/// is not rendered here, and processor/core/decode.py refuses it (see `MAX_NESTING` there).
pub const MAX_NESTING: usize = 100_000;

/// One open level of `json_nested`: the rest of an array, a kvlist's entries, or the copies of
/// a value whose oneof field was repeated.
enum Level<'a> {
    Array(Reader<'a>),
    KvList(std::vec::IntoIter<(String, KvValue<'a>)>),
    Copies(std::vec::IntoIter<Scalar<'a>>),
}

/// What the innermost open level gives next.
enum Next<'a> {
    Chunks(KvValue<'a>),
    Value(Scalar<'a>),
    Close,
}

/// Nested values as the JSON text Python's `json.dumps(..., ensure_ascii=False, separators=(",", ":"))`
/// gives for them (processor/core/decode.py `render_nested` builds the same text), walked with a
/// stack of levels instead of recursion. Copies of a repeated oneof field are written in order,
/// separated by commas.
fn json_nested(top: Scalar<'_>, out: &mut String) -> WireResult<()> {
    // Each open level and whether it has written nothing yet (no comma before its first value).
    let mut levels: Vec<(Level<'_>, bool)> = Vec::new();
    let mut depth = 0;
    let mut pending = Some(top);
    loop {
        if let Some(value) = pending.take() {
            let level = match value {
                Scalar::Array(raw) => {
                    out.push('[');
                    Level::Array(Reader::new(raw))
                }
                Scalar::KvList(raw) => {
                    out.push('{');
                    Level::KvList(kv_entries(raw)?.into_iter())
                }
                scalar => {
                    json_scalar(scalar, out);
                    Level::Copies(Vec::new().into_iter())
                }
            };
            if !matches!(level, Level::Copies(_)) {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!("a value nested deeper than {MAX_NESTING} levels"));
                }
                levels.push((level, true));
            }
        }
        let Some((level, first)) = levels.last_mut() else {
            return Ok(());
        };
        let next = match level {
            Level::Array(reader) => loop {
                if reader.done() {
                    break Next::Close;
                }
                let (field, wire) = reader.tag()?;
                if (field, wire) == (1, LEN) {
                    break Next::Chunks(KvValue::One(reader.bytes()?));
                }
                reader.skip(wire)?;
            },
            Level::KvList(entries) => match entries.next() {
                Some((key, value)) => {
                    if !*first {
                        out.push(',');
                    }
                    *first = false;
                    json_string(&key, out);
                    out.push(':');
                    Next::Chunks(value)
                }
                None => Next::Close,
            },
            Level::Copies(copies) => copies.next().map_or(Next::Close, Next::Value),
        };
        if matches!(level, Level::Array(_) | Level::Copies(_)) && !matches!(next, Next::Close) {
            if !*first {
                out.push(',');
            }
            *first = false;
        }
        match next {
            Next::Close => {
                match levels.pop() {
                    Some((Level::Array(_), _)) => out.push(']'),
                    Some((Level::KvList(_), _)) => out.push('}'),
                    _ => continue,
                }
                depth -= 1;
            }
            Next::Value(value) => pending = Some(value),
            Next::Chunks(chunks) => match any_value_copies(chunks.chunks())? {
                (value, None) => pending = Some(value),
                (_, Some(copies)) => levels.push((Level::Copies(copies.into_iter()), true)),
            },
        }
    }
}

fn json_scalar(value: Scalar<'_>, out: &mut String) {
    match value {
        Scalar::Missing => out.push_str("null"),
        Scalar::Str(s) => json_string(&text(s), out),
        Scalar::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Scalar::Int(i) => out.push_str(&i.to_string()),
        // Python renders a non-finite double as the string "inf" / "nan", quoted.
        Scalar::Double(d) if d.is_finite() => out.push_str(&python_float_repr(d)),
        Scalar::Double(d) => json_string(&python_float_repr(d), out),
        Scalar::Bytes(b) => json_string(&hex(b), out),
        Scalar::Array(_) | Scalar::KvList(_) => unreachable!("nested values open a level"),
    }
}

/// A kvlist's entries: a repeated key keeps its first place and its last value, like a Python
/// dict built in order.
fn kv_entries(raw: &[u8]) -> WireResult<Vec<(String, KvValue<'_>)>> {
    let mut entries: Vec<(String, KvValue<'_>)> = Vec::new();
    let mut index: FastMap<String, usize> = FastMap::default();
    let mut reader = Reader::new(raw);
    while !reader.done() {
        let (field, wire) = reader.tag()?;
        if (field, wire) != (1, LEN) {
            reader.skip(wire)?;
            continue;
        }
        let (key, value) = key_value(reader.bytes()?)?;
        let key = text(key).into_owned();
        match index.get(&key) {
            Some(&at) => entries[at].1 = value,
            None => {
                index.insert(key.clone(), entries.len());
                entries.push((key, value));
            }
        }
    }
    Ok(entries)
}

fn json_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The AnyValue of a KeyValue as sent: usually one message, several when the value field is
/// repeated (protobuf merges them).
#[derive(Clone)]
enum KvValue<'a> {
    One(&'a [u8]),
    Many(Vec<&'a [u8]>),
}

impl<'a> KvValue<'a> {
    fn chunks(&self) -> &[&'a [u8]] {
        match self {
            KvValue::One(one) => std::slice::from_ref(one),
            KvValue::Many(many) => many,
        }
    }
}

/// A KeyValue's key and the raw bytes of its AnyValue (decoded only when someone wants it).
fn key_value(buf: &[u8]) -> WireResult<(&[u8], KvValue<'_>)> {
    if let Some((key, value)) = plain_key_value(buf) {
        return Ok((key, KvValue::One(value)));
    }
    let mut reader = Reader::new(buf);
    let mut key: &[u8] = b"";
    let mut values: Vec<&[u8]> = Vec::new();
    while !reader.done() {
        let (field, wire) = reader.tag()?;
        match (field, wire) {
            (1, LEN) => key = reader.bytes()?,
            (2, LEN) => values.push(reader.bytes()?),
            _ => reader.skip(wire)?,
        }
    }
    let value = match values.len() {
        0 => KvValue::One(b""),
        1 => KvValue::One(values[0]),
        _ => KvValue::Many(values),
    };
    Ok((key, value))
}

/// A KeyValue laid out as key (field 1) then value (field 2) and nothing else, read without the
/// field loop (which gives the same pair for it); None for any other shape.
#[inline]
fn plain_key_value(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    if buf.first() != Some(&0x0a) {
        return None;
    }
    let mut reader = Reader::new(buf);
    reader.pos = 1;
    let key = reader.bytes().ok()?;
    if reader.done() {
        return Some((key, b""));
    }
    if buf[reader.pos] != 0x12 {
        return None;
    }
    reader.pos += 1;
    let value = reader.bytes().ok()?;
    reader.done().then_some((key, value))
}

/// Where attribute values of a wanted key land: one slot per item or per resource, stored
/// sparsely because most wanted keys are absent from most items.
struct Columns<'a> {
    index: FastMap<Vec<u8>, usize>,
    values: Vec<Vec<(usize, Scalar<'a>)>>,
    rows: usize,
}

impl<'a> Columns<'a> {
    fn new(keys: &[String]) -> Self {
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_bytes().to_vec(), i))
            .collect();
        Columns {
            index,
            values: keys.iter().map(|_| Vec::new()).collect(),
            rows: 0,
        }
    }

    fn new_row(&mut self) {
        self.rows += 1;
    }

    #[inline]
    fn wants(&self, key: &[u8]) -> Option<usize> {
        if self.index.is_empty() {
            return None;
        }
        self.index.get(key).copied()
    }

    /// The last occurrence of a key in an item wins, as when protobuf merges a map.
    fn set(&mut self, column: usize, value: Scalar<'a>) {
        let row = self.rows - 1;
        let cells = &mut self.values[column];
        match cells.last_mut() {
            Some((last, slot)) if *last == row => *slot = value,
            _ => cells.push((row, value)),
        }
    }

    fn dense(&self, column: usize) -> Vec<Scalar<'a>> {
        let mut out = vec![Scalar::Missing; self.rows];
        for (row, value) in &self.values[column] {
            out[*row] = *value;
        }
        out
    }
}

/// One frame column as (kind, validity, buffer, buffer): kind "null" (no item has a value),
/// "string"/"binary" (views, data), "int"/"double" (values, None), "bool" (value bits, None).
/// A column mixing kinds becomes text, the rule processor/core/decode.py `_column` applies.
fn column_to_py<'py>(py: Python<'py>, values: &[Scalar<'_>]) -> PyResult<Bound<'py, PyTuple>> {
    let mut kind: Option<u8> = None;
    let mut mixed = false;
    for value in values {
        if let Some(this) = value.column_kind() {
            match kind {
                None => kind = Some(this),
                Some(seen) if seen != this => mixed = true,
                _ => {}
            }
        }
    }
    let n = values.len();
    let none = py.None();
    let Some(kind) = kind else {
        return PyTuple::new(
            py,
            [
                ("null".into_pyobject(py)?.into_any()),
                none.bind(py).clone(),
                none.bind(py).clone(),
                none.bind(py).clone(),
            ],
        );
    };
    if mixed || kind == 1 || kind == 7 {
        let mut views = Views::with_capacity(n);
        if !mixed {
            // The long values' bytes (short ones sit in their views), before any is copied.
            let long: usize = values
                .iter()
                .map(|value| match value {
                    Scalar::Str(raw) | Scalar::Bytes(raw) if raw.len() > INLINE => raw.len(),
                    _ => 0,
                })
                .sum();
            views.reserve_data(long);
        }
        for value in values {
            match value {
                _ if value.column_kind().is_none() => views.push_null(),
                Scalar::Str(s) if !mixed => views.push_text(s),
                Scalar::Bytes(b) if !mixed => views.push(b),
                other => views.push_with(|out| other.python_str(out)),
            }
        }
        let (validity, view_bytes, data) = views.to_py(py)?;
        let name = if kind == 7 && !mixed {
            "binary"
        } else {
            "string"
        };
        return (name, validity, view_bytes, data).into_pyobject(py);
    }
    let mut validity = Bitmap::with_capacity(n);
    for value in values {
        validity.push(value.column_kind().is_some());
    }
    let validity_bytes = validity.validity_to_py(py);
    match kind {
        2 => {
            let mut bits = Bitmap::with_capacity(n);
            for value in values {
                bits.push(matches!(value, Scalar::Bool(true)));
            }
            ("bool", validity_bytes, bits.to_py(py), none).into_pyobject(py)
        }
        3 => {
            let ints: Vec<i64> = values
                .iter()
                .map(|v| if let Scalar::Int(i) = v { *i } else { 0 })
                .collect();
            ("int", validity_bytes, le_bytes(py, &ints)?, none).into_pyobject(py)
        }
        _ => {
            let doubles: Vec<f64> = values
                .iter()
                .map(|v| if let Scalar::Double(d) = v { *d } else { 0.0 })
                .collect();
            ("double", validity_bytes, le_bytes(py, &doubles)?, none).into_pyobject(py)
        }
    }
}

const SCOPE_ATTRIBUTE: u8 = 0;
const SCOPE_EVENT: u8 = 1;
const SCOPE_RESOURCE: u8 = 2;
const SCOPE_BODY: u8 = 3;
const SCOPE_SPAN_NAME: u8 = 4;
const SCOPE_STATUS: u8 = 5;
const SCOPE_EVENT_NAME: u8 = 6;
const SCOPE_LINK: u8 = 7;
const SCOPE_SCOPE: u8 = 8;
const SCOPE_UNKNOWN: u8 = 9;
const SCOPE_LOG_EVENT: u8 = 10;

// At most 12 bytes each: inline views (see `to_py`). processor/core/decode.py spells the same names.
const SCOPE_NAMES: [&str; 11] = [
    "attribute",
    "event",
    "resource",
    "body",
    "span_name",
    "status",
    "event_name",
    "link",
    "scope",
    "unknown",
    "log_event",
];
const KIND_NAMES: [&str; 8] = [
    "",
    "string_value",
    "bool_value",
    "int_value",
    "double_value",
    "array_value",
    "kvlist_value",
    "bytes_value",
];

/// Values of one scope group (resources, items, events), in the order they were met.
#[derive(Default)]
struct Part {
    scope: Vec<u8>,
    owner: Vec<i64>,
    position: Vec<i64>,
    row: Vec<i64>,
    key: Vec<View>,
    value: Vec<View>,
    kind: Vec<u8>,
    /// Indexes (in this part) of nested values the scan could not render; Python renders them.
    nested: Vec<usize>,
}

/// Where a listed value belongs (TelemetryBatch.string_values columns) and its part.
#[derive(Clone, Copy)]
struct Address {
    part: usize,
    scope: u8,
    owner: i64,
    position: i64,
    row: i64,
}

/// Every value with its address (TelemetryBatch.string_values), as Arrow buffers. The three
/// parts share the data buffers, so putting them in order only concatenates their views.
struct StringValues {
    parts: [Part; 3],
    /// Keys repeat across items: each distinct key is validated and stored once (Scan::learn).
    key_data: Vec<u8>,
    value_data: Vec<u8>,
    /// Address of the request bytes, which string values point into.
    request: usize,
}

// Python's order: resources, then items (and log bodies), then events.
const PART_RESOURCE: usize = 0;
const PART_ITEM: usize = 1;
const PART_EVENT: usize = 2;

impl StringValues {
    fn with_capacity(values: usize, bytes: usize, request: &[u8]) -> Self {
        let mut parts: [Part; 3] = Default::default();
        let items = &mut parts[PART_ITEM];
        items.scope.reserve(values);
        items.owner.reserve(values);
        items.position.reserve(values);
        items.row.reserve(values);
        items.key.reserve(values);
        items.value.reserve(values);
        items.kind.reserve(values);
        StringValues {
            parts,
            key_data: Vec::new(),
            value_data: Vec::with_capacity(bytes),
            request: request.as_ptr() as usize,
        }
    }

    fn push(&mut self, address: Address, key_view: View, value: &Scalar<'_>) {
        let Some(kind) = value.kind_code() else {
            return;
        };
        let Address {
            part,
            scope,
            owner,
            position,
            row,
        } = address;
        let mut rendered = true;
        let value_view = match value {
            // Most of a request's bytes are string values: the view points into the request
            // itself (data buffer 1 on the Python side) instead of copying them.
            Scalar::Str(text) if text.len() > INLINE && is_utf8(text) => {
                view_in(text, 1, text.as_ptr() as usize - self.request)
            }
            // A short text is its view: nothing to write.
            Scalar::Str(text) if is_utf8(text) => view_of(text, &mut self.value_data),
            _ => view_written(&mut self.value_data, |out| rendered = value.render(out)),
        };
        let part = &mut self.parts[part];
        if !rendered {
            part.nested.push(part.scope.len());
        }
        part.scope.push(scope);
        part.owner.push(owner);
        part.position.push(position);
        part.row.push(row);
        part.key.push(key_view);
        part.value.push(value_view);
        part.kind.push(kind);
    }

    /// A value whose text `write` writes, of kind `kind` (an AnyValue oneof number).
    fn push_written(&mut self, address: Address, kind: u8, write: impl FnOnce(&mut Vec<u8>)) {
        let value_view = view_written(&mut self.value_data, write);
        let part = &mut self.parts[address.part];
        part.scope.push(address.scope);
        part.owner.push(address.owner);
        part.position.push(address.position);
        part.row.push(address.row);
        part.key.push([0u8; 16]);
        part.value.push(value_view);
        part.kind.push(kind);
    }

    /// A value whose oneof field came more than once: its text is every copy's rendering, one a
    /// line, so a secret in a copy a protobuf parser drops is still found (and the whole value
    /// rewritten). Its kind is the last text copy's, so the stages that scan only text see it
    /// (the last copy's when none is text).
    fn push_copies(&mut self, address: Address, key_view: View, copies: &[Scalar<'_>]) {
        let text = copies
            .iter()
            .rev()
            .find(|copy| matches!(copy, Scalar::Str(_) | Scalar::Array(_) | Scalar::KvList(_)));
        let Some(kind) = text.or(copies.last()).and_then(Scalar::kind_code) else {
            return;
        };
        let mut rendered = true;
        let value_view = view_written(&mut self.value_data, |out| {
            for (i, copy) in copies.iter().enumerate() {
                if i > 0 {
                    out.push(b'\n');
                }
                rendered &= matches!(copy, Scalar::Missing) || copy.render(out);
            }
        });
        let part = &mut self.parts[address.part];
        if !rendered {
            part.nested.push(part.scope.len());
        }
        part.scope.push(address.scope);
        part.owner.push(address.owner);
        part.position.push(address.position);
        part.row.push(address.row);
        part.key.push(key_view);
        part.value.push(value_view);
        part.kind.push(kind);
    }

    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let [a, b, c] = &self.parts;
        let n = a.scope.len() + b.scope.len() + c.scope.len();
        let mut nested = Vec::new();
        let mut base = 0;
        for part in [a, b, c] {
            nested.extend(part.nested.iter().map(|i| i + base));
            base += part.scope.len();
        }
        let mut is_string = Bitmap::with_capacity(n);
        for part in [a, b, c] {
            for &kind in &part.kind {
                is_string.push(kind == 1);
            }
        }
        // The names are at most 12 bytes: inline views, no data buffer.
        let scope_views = SCOPE_NAMES.map(|name| view_of(name.as_bytes(), &mut Vec::new()));
        let kind_views = KIND_NAMES.map(|name| view_of(name.as_bytes(), &mut Vec::new()));
        let empty = PyBytes::new(py, b"");
        let views = |parts: [&[View]; 3]| plain_to_py(py, &parts);
        let out = PyDict::new(py);
        out.set_item("n", n)?;
        let scopes = concat_to_py(py, &[&a.scope, &b.scope, &c.scope], |code| {
            scope_views[code as usize]
        })?;
        out.set_item("scope", (py.None(), scopes, &empty))?;
        out.set_item("owner", plain_to_py(py, &[&a.owner, &b.owner, &c.owner])?)?;
        let positions = plain_to_py(py, &[&a.position, &b.position, &c.position])?;
        out.set_item("position", positions)?;
        out.set_item("row", plain_to_py(py, &[&a.row, &b.row, &c.row])?)?;
        let keys = views([&a.key, &b.key, &c.key])?;
        out.set_item("key", (py.None(), keys, PyBytes::new(py, &self.key_data)))?;
        let values = views([&a.value, &b.value, &c.value])?;
        out.set_item(
            "value",
            (py.None(), values, PyBytes::new(py, &self.value_data)),
        )?;
        out.set_item("is_string", is_string.to_py(py))?;
        let kinds = concat_to_py(py, &[&a.kind, &b.kind, &c.kind], |code| {
            kind_views[code as usize]
        })?;
        out.set_item("kind", (py.None(), kinds, &empty))?;
        out.set_item("nested", nested)?;
        Ok(out)
    }
}

/// Every value of a request with its address, flattened in Python's order (resources, items,
/// events), for the native redactor: what `StringValues::to_py` hands to Python, kept in Rust.
pub(crate) struct FlatValues {
    pub scope: Vec<View>,
    pub key: Vec<View>,
    /// Views into `value_data` (buffer 0) or into the request bytes (buffer 1).
    pub value: Vec<View>,
    pub kind: Vec<View>,
    pub owner: Vec<i64>,
    pub position: Vec<i64>,
    pub row: Vec<i64>,
    pub key_data: Vec<u8>,
    pub value_data: Vec<u8>,
    /// The resource of each item.
    pub item_resource: Vec<i64>,
    /// Some value could not be rendered here (malformed nesting): Python has to render it.
    pub nested: bool,
}

/// The values a scan listed, handed to the native redactor instead of to Python.
pub(crate) struct ScannedValues {
    strings: StringValues,
    item_resource: Vec<u32>,
}

impl ScannedValues {
    pub(crate) fn flatten(self) -> FlatValues {
        let ScannedValues {
            strings: values,
            item_resource,
        } = self;
        values.flatten(&item_resource)
    }
}

impl StringValues {
    fn flatten(self, item_resource: &[u32]) -> FlatValues {
        let scope_views = SCOPE_NAMES.map(|name| view_of(name.as_bytes(), &mut Vec::new()));
        let kind_views = KIND_NAMES.map(|name| view_of(name.as_bytes(), &mut Vec::new()));
        let n: usize = self.parts.iter().map(|p| p.scope.len()).sum();
        let mut flat = FlatValues {
            scope: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            value: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            owner: Vec::with_capacity(n),
            position: Vec::with_capacity(n),
            row: Vec::with_capacity(n),
            key_data: self.key_data,
            value_data: self.value_data,
            item_resource: item_resource.iter().map(|&r| i64::from(r)).collect(),
            nested: self.parts.iter().any(|p| !p.nested.is_empty()),
        };
        for part in &self.parts {
            flat.scope
                .extend(part.scope.iter().map(|&code| scope_views[code as usize]));
            flat.key.extend_from_slice(&part.key);
            flat.value.extend_from_slice(&part.value);
            flat.kind
                .extend(part.kind.iter().map(|&code| kind_views[code as usize]));
            flat.owner.extend_from_slice(&part.owner);
            flat.position.extend_from_slice(&part.position);
            flat.row.extend_from_slice(&part.row);
        }
        flat
    }
}

/// The OTLP messages the scan walks, for telling their declared fields from unknown ones: a
/// field whose (number, wire type) pair is not declared is kept by protobuf parsers as unknown
/// bytes and forwarded, so the redaction stage has to see what it holds (see `Scan::unknown`).
#[derive(Clone, Copy)]
enum Schema {
    Request,
    ResourceGroup,
    Resource,
    ScopeGroup,
    Scope,
    Span,
    Event,
    Link,
    Status,
    LogRecord,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

impl Schema {
    /// Whether the message declares the field with this wire type (opentelemetry-proto 1.x).
    fn declares(self, field: u32, wire: u8) -> bool {
        match self {
            Schema::Request => matches!((field, wire), (1, LEN)),
            Schema::ResourceGroup | Schema::ScopeGroup => matches!((field, wire), (1..=3, LEN)),
            Schema::Resource => matches!((field, wire), (1 | 3, LEN) | (2, VARINT)),
            Schema::Scope => matches!((field, wire), (1..=3, LEN) | (4, VARINT)),
            Schema::Span => matches!(
                (field, wire),
                (1..=5 | 9 | 11 | 13 | 15, LEN)
                    | (6 | 10 | 12 | 14, VARINT)
                    | (7 | 8, I64)
                    | (16, I32)
            ),
            Schema::Event => matches!((field, wire), (1, I64) | (2 | 3, LEN) | (4, VARINT)),
            Schema::Link => matches!((field, wire), (1..=4, LEN) | (5, VARINT) | (6, I32)),
            Schema::Status => matches!((field, wire), (2, LEN) | (3, VARINT)),
            Schema::LogRecord => matches!(
                (field, wire),
                (1 | 11, I64) | (2 | 7, VARINT) | (3 | 5 | 6 | 9 | 10 | 12, LEN) | (8, I32)
            ),
            Schema::KeyValue => matches!((field, wire), (1 | 2, LEN)),
            Schema::AnyValue => {
                matches!(
                    (field, wire),
                    (1 | 5 | 6 | 7, LEN) | (2 | 3, VARINT) | (4, I64)
                )
            }
            Schema::ArrayValue | Schema::KeyValueList => matches!((field, wire), (1, LEN)),
        }
    }

    /// The message a declared length-delimited field of a value holds, for `unknown_inside`.
    fn child(self, field: u32) -> Option<Schema> {
        match (self, field) {
            (Schema::KeyValue, 2) | (Schema::ArrayValue, 1) => Some(Schema::AnyValue),
            (Schema::AnyValue, 5) => Some(Schema::ArrayValue),
            (Schema::AnyValue, 6) => Some(Schema::KeyValueList),
            (Schema::KeyValueList, 1) => Some(Schema::KeyValue),
            _ => None,
        }
    }
}

/// Whether protobuf keeps a field of this wire type that the schema does not declare as bytes a
/// secret can sit in (a length-delimited field or a group; numbers cannot hold text).
#[inline]
fn holds_bytes(wire: u8) -> bool {
    wire == LEN || wire == START_GROUP
}

/// Every unknown length-delimited field or group inside a value message (a KeyValue or an
/// AnyValue), at any depth of its arrays and kvlists, walked with a stack rather than recursion.
fn unknown_inside<'a>(buf: &'a [u8], schema: Schema, found: &mut Vec<&'a [u8]>) -> WireResult<()> {
    let mut open = vec![(Reader::new(buf), buf, schema)];
    while let Some((reader, buf, schema)) = open.last_mut() {
        if reader.done() {
            open.pop();
            continue;
        }
        let (schema, buf) = (*schema, *buf);
        let start = reader.pos;
        let (field, wire) = reader.tag()?;
        if wire == LEN && schema.declares(field, wire) {
            let content = reader.bytes()?;
            if let Some(child) = schema.child(field) {
                open.push((Reader::new(content), content, child));
            }
            continue;
        }
        reader.skip(wire)?;
        if holds_bytes(wire) && !schema.declares(field, wire) {
            found.push(&buf[start..reader.pos]);
        }
    }
    Ok(())
}

/// The bytes an unknown field (tag included, as `unknown_inside` and `Scan::pass` give it)
/// carries: a length-delimited field's content, the fields between a group's start and end tags.
fn unknown_content(whole: &[u8]) -> &[u8] {
    let mut reader = Reader::new(whole);
    match reader.tag() {
        Ok((_, LEN)) => reader.bytes().unwrap_or(whole),
        Ok((field, _)) => {
            let end_tag = crate::otlp::wire::varint_len(((field as u64) << 3) | 4);
            whole
                .get(reader.pos..whole.len().saturating_sub(end_tag))
                .unwrap_or(whole)
        }
        Err(_) => whole,
    }
}

/// Levels of messages inside an unknown field whose strings `unknown_text` lists on their own.
const UNKNOWN_DEPTH: usize = 8;

/// The text the value rules see for an unknown field: its bytes, then, when they read as protobuf
/// fields, the content of each length-delimited one, one a line, to `UNKNOWN_DEPTH` levels. A
/// string inside is then seen apart from the length byte before it (a length of 56 is the byte
/// "8", which would glue itself to an "sk-..." key and hide it from a rule wanting a boundary).
/// processor/core/unknown_fields.py `text` gives the same text.
fn unknown_text(content: &[u8], out: &mut Vec<u8>) {
    let mut pending: Vec<(&[u8], usize)> = vec![(content, 0)];
    let mut first = true;
    while let Some((buf, depth)) = pending.pop() {
        if !first {
            out.push(b'\n');
        }
        first = false;
        push_text(out, buf);
        if depth < UNKNOWN_DEPTH {
            if let Some(parts) = length_delimited_parts(buf) {
                pending.extend(parts.into_iter().rev().map(|part| (part, depth + 1)));
            }
        }
    }
}

/// The contents of the length-delimited fields of `buf` when all of it reads as protobuf fields.
fn length_delimited_parts(buf: &[u8]) -> Option<Vec<&[u8]>> {
    let mut reader = Reader::new(buf);
    let mut parts = Vec::new();
    while !reader.done() {
        let (_, wire) = reader.tag().ok()?;
        if wire == LEN {
            parts.push(reader.bytes().ok()?);
        } else {
            reader.skip(wire).ok()?;
        }
    }
    Some(parts)
}

/// Whether a KeyValue is the usual key plus one scalar value, which has no field to be unknown.
#[inline]
fn plain_scalar_kv(kv: &[u8]) -> bool {
    plain_key_value(kv).is_some_and(|(_, value)| value.is_empty() || single_value(value).is_some())
}

struct Scan<'a> {
    want_strings: bool,
    items: Columns<'a>,
    resources: Columns<'a>,
    item_resource: Vec<u32>,
    names: Views,
    starts: Vec<u64>,
    ends: Vec<u64>,
    statuses: Vec<i32>,
    event_rows: Vec<u32>,
    strings: StringValues,
    /// No wanted key and no value frame (pass-through): attributes are skipped unread.
    wants_nothing: bool,
    /// The texts without a key (`ValuesFilter::keyless_needed`) are listed.
    want_keyless: bool,
    /// Every distinct attribute key of the request: one lookup per attribute finds all it needs.
    keys: FastMap<KeyBytes<'a>, KnownKey>,
    /// The redactor the values go to: only the values its rules can change are listed.
    values_for: Option<&'a dyn ValuesFilter>,
    /// InstrumentationScopes met so far: a scope attribute's owner is its scope's index.
    scopes: i64,
}

#[derive(Clone, Copy)]
struct KnownKey {
    item: Option<usize>,
    resource: Option<usize>,
    view: View,
    needed: Needed,
}

impl<'a> Scan<'a> {
    /// A key met for the first time: its columns, and its text stored once for the value frame.
    #[cold]
    fn learn(&mut self, key: &'a [u8]) -> KnownKey {
        let view = if self.want_strings {
            view_written(&mut self.strings.key_data, |out| push_text(out, key))
        } else {
            [0u8; 16]
        };
        let known = KnownKey {
            item: self.items.wants(key),
            resource: self.resources.wants(key),
            view,
            needed: self
                .values_for
                .map_or(Needed::Every, |redactor| redactor.values_needed(key)),
        };
        self.keys.insert(KeyBytes(key), known);
        known
    }

    fn attributes_of(
        &mut self,
        kv: &'a [u8],
        target: Target,
        owner: i64,
        position: i64,
        row: i64,
    ) -> WireResult<()> {
        if self.wants_nothing {
            return Ok(());
        }
        let (key, raw_value) = key_value(kv)?;
        if self.want_keyless && !plain_scalar_kv(kv) {
            self.unknown_in_value(kv, Schema::KeyValue, row)?;
        }
        let known = match self.keys.get(&KeyBytes(key)) {
            Some(known) => *known,
            None => self.learn(key),
        };
        let column = match target {
            Target::Item => known.item,
            Target::Resource => known.resource,
            Target::Event | Target::Link | Target::Scope => None,
        };
        if column.is_none() && !self.want_strings {
            return Ok(());
        }
        let (value, copies) = any_value_copies(raw_value.chunks())?;
        let text_like = |value: &Scalar<'_>| {
            matches!(value, Scalar::Str(_) | Scalar::Array(_) | Scalar::KvList(_))
        };
        let listed = match known.needed {
            Needed::Every => true,
            Needed::Text => match &copies {
                None => text_like(&value),
                Some(copies) => copies.iter().any(text_like),
            },
            Needed::None => false,
        };
        if self.want_strings && listed {
            let (part, scope) = match target {
                Target::Item => (PART_ITEM, SCOPE_ATTRIBUTE),
                Target::Resource => (PART_RESOURCE, SCOPE_RESOURCE),
                Target::Event => (PART_EVENT, SCOPE_EVENT),
                Target::Link => (PART_ITEM, SCOPE_LINK),
                Target::Scope => (PART_RESOURCE, SCOPE_SCOPE),
            };
            let address = Address {
                part,
                scope,
                owner,
                position,
                row,
            };
            match &copies {
                None => self.strings.push(address, known.view, &value),
                Some(copies) => self.strings.push_copies(address, known.view, copies),
            }
        }
        if let Some(column) = column {
            match target {
                Target::Resource => self.resources.set(column, value),
                _ => self.items.set(column, value),
            }
        }
        Ok(())
    }

    /// A field the scan does not read: skipped, and listed (scope "unknown", owner and position
    /// its byte range in the request) when `schema` does not declare it and it holds bytes, so the
    /// redaction stage can drop it when it carries a secret (see rewrite.rs `strip`).
    #[inline]
    fn pass(
        &mut self,
        reader: &mut Reader<'a>,
        buf: &'a [u8],
        start: usize,
        (field, wire): (u32, u8),
        schema: Schema,
        row: i64,
    ) -> WireResult<()> {
        reader.skip(wire)?;
        if self.want_keyless && holds_bytes(wire) && !schema.declares(field, wire) {
            self.unknown(&buf[start..reader.pos], row);
        }
        Ok(())
    }

    #[cold]
    fn unknown(&mut self, whole: &'a [u8], row: i64) {
        let at = (whole.as_ptr() as usize - self.strings.request) as i64;
        let address = Address {
            part: PART_ITEM,
            scope: SCOPE_UNKNOWN,
            owner: at,
            position: at + whole.len() as i64,
            row,
        };
        let content = unknown_content(whole);
        self.strings
            .push_written(address, 1, |out| unknown_text(content, out));
    }

    /// Unknown fields inside a value message that is not the plain key-and-scalar shape.
    fn unknown_in_value(&mut self, buf: &'a [u8], schema: Schema, row: i64) -> WireResult<()> {
        let mut found = Vec::new();
        unknown_inside(buf, schema, &mut found)?;
        for whole in found {
            self.unknown(whole, row);
        }
        Ok(())
    }

    /// A place holding one text (a span name, a status message, an event name): listed with no
    /// key, so only the value rules apply to it.
    fn text_place(&mut self, part: usize, scope: u8, owner: i64, row: i64, text: &'a [u8]) {
        if !self.want_keyless || text.is_empty() {
            return;
        }
        let address = Address {
            part,
            scope,
            owner,
            position: -1,
            row,
        };
        self.strings.push(address, [0u8; 16], &Scalar::Str(text));
    }

    /// A message whose repeated KeyValue field `attribute_field` is attributes of `target`;
    /// returns how many it has. Positions count on from `first` (link attributes of a span are
    /// numbered across its links).
    #[allow(clippy::too_many_arguments)]
    fn attribute_message(
        &mut self,
        buf: &'a [u8],
        schema: Schema,
        attribute_field: u32,
        target: Target,
        owner: i64,
        first: i64,
        row: i64,
    ) -> WireResult<i64> {
        let mut reader = Reader::new(buf);
        let mut position = first;
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            if (field, wire) == (attribute_field, LEN) {
                let kv = reader.bytes()?;
                self.attributes_of(kv, target, owner, position, row)?;
                position += 1;
            } else {
                self.pass(&mut reader, buf, start, (field, wire), schema, row)?;
            }
        }
        Ok(position - first)
    }

    fn span(&mut self, buf: &'a [u8], row: i64) -> WireResult<()> {
        let mut reader = Reader::new(buf);
        let (mut name, mut start, mut end, mut status) = (&b""[..], 0u64, 0u64, 0i32);
        let mut position = 0;
        let mut link_position = 0;
        while !reader.done() {
            let field_start = reader.pos;
            let (field, wire) = reader.tag()?;
            // A declared number with another wire type is an unknown field to protobuf: skipped.
            match (field, wire) {
                // Every copy of a repeated name is listed: protobuf keeps the last, all go out.
                (5, LEN) => {
                    name = reader.bytes()?;
                    self.text_place(PART_ITEM, SCOPE_SPAN_NAME, row, row, name);
                }
                (7 | 8, I64) => {
                    let value = reader.fixed64()?;
                    if field == 7 {
                        start = value;
                    } else {
                        end = value;
                    }
                }
                (9, LEN) => {
                    let kv = reader.bytes()?;
                    self.attributes_of(kv, Target::Item, row, position, row)?;
                    position += 1;
                }
                (11, LEN) => {
                    let event = reader.bytes()?;
                    let event_index = self.event_rows.len() as i64;
                    self.event_rows.push(row as u32);
                    let mut inner = Reader::new(event);
                    let mut event_position = 0;
                    while !inner.done() {
                        let inner_start = inner.pos;
                        let (f, w) = inner.tag()?;
                        match (f, w) {
                            (2, LEN) => {
                                let event_name = inner.bytes()?;
                                let (part, scope) = (PART_EVENT, SCOPE_EVENT_NAME);
                                self.text_place(part, scope, event_index, row, event_name);
                            }
                            (3, LEN) => {
                                let kv = inner.bytes()?;
                                self.attributes_of(
                                    kv,
                                    Target::Event,
                                    event_index,
                                    event_position,
                                    row,
                                )?;
                                event_position += 1;
                            }
                            _ => self.pass(
                                &mut inner,
                                event,
                                inner_start,
                                (f, w),
                                Schema::Event,
                                row,
                            )?,
                        }
                    }
                }
                (13, LEN) => {
                    let link = reader.bytes()?;
                    link_position += self.attribute_message(
                        link,
                        Schema::Link,
                        4,
                        Target::Link,
                        row,
                        link_position,
                        row,
                    )?;
                }
                (15, LEN) => {
                    let status_buf = reader.bytes()?;
                    let mut inner = Reader::new(status_buf);
                    while !inner.done() {
                        let inner_start = inner.pos;
                        let (f, w) = inner.tag()?;
                        match (f, w) {
                            (3, VARINT) => status = inner.varint()? as i32,
                            // Every copy of a repeated message is listed, as for the name.
                            (2, LEN) => {
                                let text = inner.bytes()?;
                                self.text_place(PART_ITEM, SCOPE_STATUS, row, row, text);
                            }
                            _ => self.pass(
                                &mut inner,
                                status_buf,
                                inner_start,
                                (f, w),
                                Schema::Status,
                                row,
                            )?,
                        }
                    }
                }
                _ => self.pass(
                    &mut reader,
                    buf,
                    field_start,
                    (field, wire),
                    Schema::Span,
                    row,
                )?,
            }
        }
        self.names.push_text(name);
        self.starts.push(start);
        self.ends.push(end);
        self.statuses.push(status);
        Ok(())
    }

    fn log_record(&mut self, buf: &'a [u8], row: i64) -> WireResult<()> {
        let mut reader = Reader::new(buf);
        let mut position = 0;
        // A repeated body field is one merged AnyValue to protobuf.
        let mut body: Vec<&'a [u8]> = Vec::new();
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            match (field, wire) {
                (5, LEN) => body.push(reader.bytes()?),
                (12, LEN) => {
                    let event_name = reader.bytes()?;
                    self.text_place(PART_ITEM, SCOPE_LOG_EVENT, row, row, event_name);
                }
                (6, LEN) => {
                    let kv = reader.bytes()?;
                    self.attributes_of(kv, Target::Item, row, position, row)?;
                    position += 1;
                }
                _ => self.pass(
                    &mut reader,
                    buf,
                    start,
                    (field, wire),
                    Schema::LogRecord,
                    row,
                )?,
            }
        }
        if self.want_keyless && !body.is_empty() {
            for chunk in &body {
                if single_value(chunk).is_none() {
                    self.unknown_in_value(chunk, Schema::AnyValue, row)?;
                }
            }
            let address = Address {
                part: PART_ITEM,
                scope: SCOPE_BODY,
                owner: row,
                position: -1,
                row,
            };
            match any_value_copies(&body)? {
                (value, None) => self.strings.push(address, [0u8; 16], &value),
                (_, Some(copies)) => self.strings.push_copies(address, [0u8; 16], &copies),
            }
        }
        Ok(())
    }

    /// ResourceSpans / ResourceLogs: resource = 1, scope container = 2, item inside scope = 2.
    fn resource_group(&mut self, buf: &'a [u8], resource_index: i64, logs: bool) -> WireResult<()> {
        self.resources.new_row();
        let mut reader = Reader::new(buf);
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            match (field, wire) {
                (1, LEN) => {
                    let resource = reader.bytes()?;
                    self.attribute_message(
                        resource,
                        Schema::Resource,
                        1,
                        Target::Resource,
                        resource_index,
                        0,
                        -1,
                    )?;
                }
                (2, LEN) => {
                    let group = reader.bytes()?;
                    let mut scope = Reader::new(group);
                    while !scope.done() {
                        let scope_start = scope.pos;
                        let (f, w) = scope.tag()?;
                        match (f, w) {
                            (2, LEN) => {
                                let item = scope.bytes()?;
                                let row = self.item_resource.len() as i64;
                                self.item_resource.push(resource_index as u32);
                                self.items.new_row();
                                if logs {
                                    self.log_record(item, row)?;
                                } else {
                                    self.span(item, row)?;
                                }
                            }
                            (1, LEN) if self.want_strings => {
                                let instrumentation = scope.bytes()?;
                                let index = self.scopes;
                                self.scopes += 1;
                                self.attribute_message(
                                    instrumentation,
                                    Schema::Scope,
                                    3,
                                    Target::Scope,
                                    index,
                                    0,
                                    -1,
                                )?;
                            }
                            _ => self.pass(
                                &mut scope,
                                group,
                                scope_start,
                                (f, w),
                                Schema::ScopeGroup,
                                -1,
                            )?,
                        }
                    }
                }
                _ => self.pass(
                    &mut reader,
                    buf,
                    start,
                    (field, wire),
                    Schema::ResourceGroup,
                    -1,
                )?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Target {
    Item,
    Resource,
    Event,
    Link,
    Scope,
}

/// Python's repr of a bytes object, for the rare column mixing bytes with other kinds.
struct PyBytesRepr<'a>(&'a [u8]);

impl std::fmt::Debug for PyBytesRepr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quote = if self.0.contains(&b'\'') && !self.0.contains(&b'"') {
            '"'
        } else {
            '\''
        };
        write!(f, "b{quote}")?;
        for &byte in self.0 {
            match byte {
                b'\\' => write!(f, "\\\\")?,
                b'\t' => write!(f, "\\t")?,
                b'\n' => write!(f, "\\n")?,
                b'\r' => write!(f, "\\r")?,
                b'\'' if quote == '\'' => write!(f, "\\'")?,
                0x20..=0x7e => write!(f, "{}", byte as char)?,
                _ => write!(f, "\\x{byte:02x}")?,
            }
        }
        write!(f, "{quote}")
    }
}

fn walk<'a>(state: &mut Scan<'a>, raw: &'a [u8], logs: bool) -> WireResult<()> {
    let mut reader = Reader::new(raw);
    let mut resource_index = 0;
    while !reader.done() {
        let start = reader.pos;
        let (field, wire) = reader.tag()?;
        if (field, wire) == (1, LEN) {
            let group = reader.bytes()?;
            state.resource_group(group, resource_index, logs)?;
            resource_index += 1;
        } else {
            state.pass(&mut reader, raw, start, (field, wire), Schema::Request, -1)?;
        }
    }
    Ok(())
}

/// Scans a serialised ExportTraceServiceRequest (logs=False) or ExportLogsServiceRequest.
///
/// Returns a dict: rows; item_resource (u32 buffer); columns, one per item key then one per
/// resource key (expanded to one value per item), each as `column_to_py` describes; names
/// (string views), starts, ends (u64), statuses (i32) for spans; event_rows (span row of each
/// event); strings (the string-value columns) when asked for, or with `values_to` (a Redactor)
/// values_job instead: the values go to that redactor's thread (`RedactionJob`), not to Python.
/// With `values_for`, the scanned values come back instead of going into the dict (lib.rs hands
/// them to the redactor's thread).
pub(crate) fn scan_request<'py>(
    py: Python<'py>,
    raw: &[u8],
    item_keys: &[String],
    resource_keys: &[String],
    want_strings: bool,
    logs: bool,
    values_for: Option<&dyn ValuesFilter>,
) -> PyResult<(Bound<'py, PyDict>, Option<ScannedValues>)> {
    let mut state = Scan::new(
        raw,
        item_keys,
        resource_keys,
        want_strings,
        logs,
        values_for,
    );
    py.detach(|| walk(&mut state, raw, logs))
        .map_err(PyValueError::new_err)?;
    scanned_to_py(py, state, raw, item_keys, resource_keys, logs)
}

impl<'a> Scan<'a> {
    fn new(
        raw: &'a [u8],
        item_keys: &[String],
        resource_keys: &[String],
        want_strings: bool,
        logs: bool,
        values_for: Option<&'a dyn ValuesFilter>,
    ) -> Self {
        let want_strings = want_strings || values_for.is_some();
        // A rough guess from the request size; only to avoid most regrowth.
        let guess = raw.len() / 600 + 16;
        let strings_guess = if want_strings { guess * 10 } else { 0 };
        Scan {
            want_strings,
            items: Columns::new(item_keys),
            resources: Columns::new(resource_keys),
            item_resource: Vec::with_capacity(guess),
            names: Views::with_capacity(if logs { 0 } else { guess }),
            starts: Vec::with_capacity(guess),
            ends: Vec::with_capacity(guess),
            statuses: Vec::with_capacity(guess),
            event_rows: Vec::new(),
            strings: StringValues::with_capacity(
                strings_guess,
                if want_strings { raw.len() / 8 } else { 0 },
                raw,
            ),
            keys: FastMap::default(),
            wants_nothing: item_keys.is_empty() && resource_keys.is_empty() && !want_strings,
            want_keyless: want_strings && values_for.is_none_or(|filter| filter.keyless_needed()),
            values_for,
            scopes: 0,
        }
    }
}

/// The dict `scan_request` returns, and the values for the redactor when it has one.
fn scanned_to_py<'py>(
    py: Python<'py>,
    mut state: Scan<'_>,
    raw: &[u8],
    item_keys: &[String],
    resource_keys: &[String],
    logs: bool,
) -> PyResult<(Bound<'py, PyDict>, Option<ScannedValues>)> {
    let values_for = state.values_for;
    let want_strings = state.want_strings;
    let out = PyDict::new(py);
    out.set_item("rows", state.item_resource.len())?;
    out.set_item("item_resource", le_bytes(py, &state.item_resource)?)?;
    let columns = pyo3::types::PyList::empty(py);
    let null_column = column_to_py(py, &[])?;
    for column in 0..item_keys.len() {
        if state.items.values[column].is_empty() {
            columns.append(&null_column)?;
        } else {
            columns.append(column_to_py(py, &state.items.dense(column))?)?;
        }
    }
    for column in 0..resource_keys.len() {
        if state.resources.values[column].is_empty() {
            columns.append(&null_column)?;
            continue;
        }
        // Typed per item, not per resource: a resource no span points at must not sway the type.
        let per_resource = state.resources.dense(column);
        let per_item: Vec<Scalar<'_>> = state
            .item_resource
            .iter()
            .map(|&r| per_resource[r as usize])
            .collect();
        columns.append(column_to_py(py, &per_item)?)?;
    }
    out.set_item("columns", columns)?;
    if !logs {
        out.set_item("names", state.names.to_py(py)?)?;
        out.set_item("starts", le_bytes(py, &state.starts)?)?;
        out.set_item("ends", le_bytes(py, &state.ends)?)?;
        out.set_item("statuses", le_bytes(py, &state.statuses)?)?;
    }
    out.set_item("event_rows", &state.event_rows)?;
    if values_for.is_some() {
        let values = ScannedValues {
            strings: std::mem::replace(&mut state.strings, StringValues::with_capacity(0, 0, raw)),
            item_resource: state.item_resource.clone(),
        };
        return Ok((out, Some(values)));
    }
    if want_strings {
        out.set_item("strings", state.strings.to_py(py)?)?;
    }
    Ok((out, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::wire::put_len;

    fn field(number: u32, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_len(&mut out, number, content);
        out
    }

    fn deep_array(depth: usize) -> Vec<u8> {
        let mut value = field(1, b"x");
        for _ in 0..depth {
            value = field(5, &field(1, &value));
        }
        value
    }

    fn rendered(any_value: &[u8]) -> WireResult<String> {
        let mut out = String::new();
        let (value, _) = any_value_copies(&[any_value])?;
        json_nested(value, &mut out)?;
        Ok(out)
    }

    #[test]
    fn values_nested_to_the_limit_render_without_recursion() {
        let raw = deep_array(MAX_NESTING);
        let small_stack = std::thread::Builder::new().stack_size(256 * 1024);
        let text = small_stack
            .spawn(move || rendered(&raw))
            .unwrap()
            .join()
            .unwrap();
        let text = text.expect("within the limit");
        assert_eq!(text.len(), 2 * MAX_NESTING + 3);
        assert!(text.starts_with("[[[") && text.contains("[\"x\"]") && text.ends_with("]]]"));
    }

    #[test]
    fn a_value_past_the_limit_is_an_error() {
        let error = rendered(&deep_array(MAX_NESTING + 1)).unwrap_err();
        assert!(error.contains("nested deeper than"), "{error}");
    }

    #[test]
    fn kvlists_render_as_python_dicts() {
        let entry = |key: &[u8], value: &[u8]| field(1, &[field(1, key), field(2, value)].concat());
        let list = [
            entry(b"a", &field(1, b"1")),
            entry(b"b", b"\x18\x02"),
            entry(b"a", &field(5, &field(1, b"\x10\x01"))),
        ]
        .concat();
        assert_eq!(rendered(&field(6, &list)).unwrap(), r#"{"a":[true],"b":2}"#);
    }

    #[test]
    fn wrong_wire_types_are_unknown_fields_and_copies_are_kept() {
        // string_value as a varint (unknown), then two string values.
        let raw = [b"\x08\x01".to_vec(), field(1, b"first"), field(1, b"last")].concat();
        let (value, copies) = any_value_copies(&[&raw]).unwrap();
        assert!(matches!(value, Scalar::Str(b"last")));
        assert_eq!(copies.map(|c| c.len()), Some(2));
        let in_array = field(5, &field(1, &raw));
        assert_eq!(rendered(&in_array).unwrap(), r#"["first","last"]"#);
    }
}

#[cfg(test)]
#[path = "tests/scan_tests.rs"]
mod scan_tests;
