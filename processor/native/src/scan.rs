//! Reads an OTLP export request once and collects what the stages asked for (see lib.rs).
//!
//! Values are borrowed from the request bytes while scanning and written once, into the Arrow
//! buffers the Python side turns into polars columns (see arrow.rs).

use std::borrow::Cow;
use std::io::Write;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::arrow::{
    concat_to_py, is_utf8, le_bytes, plain_to_py, push_text, view_in, view_of, view_written,
    Bitmap, View, Views, INLINE,
};
use crate::fasthash::{FastMap, KeyBytes};
use crate::redact::{Needed, Redactor};
use crate::wire::{Reader, WireResult, I64, LEN, VARINT};

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

    /// The text the redaction stage scans (processor/decode.py `_render`), written into `out`.
    /// False when a nested value cannot be rendered here; the Python side renders it then.
    fn render(&self, out: &mut Vec<u8>) -> bool {
        match *self {
            Scalar::Str(s) => push_text(out, s),
            Scalar::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Scalar::Int(i) => push_int(out, i),
            Scalar::Double(d) => push_float_repr(out, d),
            Scalar::Bytes(b) => push_hex(out, b),
            Scalar::Array(raw) | Scalar::KvList(raw) => {
                let mut rendered = String::new();
                let done = if matches!(self, Scalar::Array(_)) {
                    json_array(raw, &mut rendered)
                } else {
                    json_kvlist(raw, &mut rendered)
                };
                if done.is_err() {
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

fn any_value(buf: &[u8]) -> WireResult<Scalar<'_>> {
    if let Some(value) = single_value(buf) {
        return Ok(value);
    }
    let mut reader = Reader::new(buf);
    let mut value = Scalar::Missing;
    while !reader.done() {
        let (field, wire) = reader.tag()?;
        value = match (field, wire) {
            (1, LEN) => Scalar::Str(reader.bytes()?),
            (2, VARINT) => Scalar::Bool(reader.varint()? != 0),
            (3, VARINT) => Scalar::Int(reader.varint()? as i64),
            (4, I64) => Scalar::Double(f64::from_bits(reader.fixed64()?)),
            (5, LEN) => Scalar::Array(reader.bytes()?),
            (6, LEN) => Scalar::KvList(reader.bytes()?),
            (7, LEN) => Scalar::Bytes(reader.bytes()?),
            (1..=7, _) => return Err(format!("AnyValue field {field} has wire type {wire}")),
            _ => {
                reader.skip(wire)?;
                continue;
            }
        };
    }
    Ok(value)
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

/// Nested values as the JSON text Python's `json.dumps(..., ensure_ascii=False, separators=(",", ":"))`
/// gives for them (processor/decode.py `_render`), so both decoders produce the same text.
fn json_any(buf: &[u8], out: &mut String) -> WireResult<()> {
    match any_value(buf)? {
        Scalar::Missing => out.push_str("null"),
        Scalar::Str(s) => json_string(&text(s), out),
        Scalar::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Scalar::Int(i) => out.push_str(&i.to_string()),
        // Python renders a non-finite double as the string "inf" / "nan", quoted.
        Scalar::Double(d) if d.is_finite() => out.push_str(&python_float_repr(d)),
        Scalar::Double(d) => json_string(&python_float_repr(d), out),
        Scalar::Bytes(b) => json_string(&hex(b), out),
        Scalar::Array(raw) => json_array(raw, out)?,
        Scalar::KvList(raw) => json_kvlist(raw, out)?,
    }
    Ok(())
}

fn json_array(raw: &[u8], out: &mut String) -> WireResult<()> {
    out.push('[');
    let mut reader = Reader::new(raw);
    let mut first = true;
    while !reader.done() {
        let (field, wire) = reader.tag()?;
        if field == 1 {
            if !first {
                out.push(',');
            }
            first = false;
            json_any(reader.expect_len(wire)?, out)?;
        } else {
            reader.skip(wire)?;
        }
    }
    out.push(']');
    Ok(())
}

fn json_kvlist(raw: &[u8], out: &mut String) -> WireResult<()> {
    // A repeated key keeps its first place and its last value, like a Python dict built in order.
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut index: FastMap<String, usize> = FastMap::default();
    let mut reader = Reader::new(raw);
    while !reader.done() {
        let (field, wire) = reader.tag()?;
        if field == 1 {
            let (key, value) = key_value(reader.expect_len(wire)?)?;
            let key = text(key).into_owned();
            let mut rendered = String::new();
            json_any(value, &mut rendered)?;
            match index.get(&key) {
                Some(&at) => entries[at].1 = rendered,
                None => {
                    index.insert(key.clone(), entries.len());
                    entries.push((key, rendered));
                }
            }
        } else {
            reader.skip(wire)?;
        }
    }
    out.push('{');
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(key, out);
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    Ok(())
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

/// A KeyValue's key and the raw bytes of its AnyValue (decoded only when someone wants it).
fn key_value(buf: &[u8]) -> WireResult<(&[u8], &[u8])> {
    if let Some(pair) = plain_key_value(buf) {
        return Ok(pair);
    }
    let mut reader = Reader::new(buf);
    let mut key: &[u8] = b"";
    let mut value: &[u8] = b"";
    while !reader.done() {
        let (field, wire) = reader.tag()?;
        match field {
            1 => key = reader.expect_len(wire)?,
            2 => value = reader.expect_len(wire)?,
            _ => reader.skip(wire)?,
        }
    }
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
/// A column mixing kinds becomes text, the rule processor/decode.py `_column` applies.
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
        for value in values {
            match value {
                _ if value.column_kind().is_none() => views.push_null(),
                Scalar::Str(s) if !mixed => views.push_with(|out| push_text(out, s)),
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

const SCOPE_NAMES: [&str; 4] = ["attribute", "event", "resource", "body"];
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

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        part: usize,
        scope: u8,
        owner: i64,
        position: i64,
        row: i64,
        key_view: View,
        value: &Scalar<'_>,
    ) {
        let Some(kind) = value.kind_code() else {
            return;
        };
        let mut rendered = true;
        let value_view = match value {
            // Most of a request's bytes are string values: the view points into the request
            // itself (data buffer 1 on the Python side) instead of copying them.
            Scalar::Str(text) if text.len() > INLINE && is_utf8(text) => {
                view_in(text, 1, text.as_ptr() as usize - self.request)
            }
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
    /// Every distinct attribute key of the request: one lookup per attribute finds all it needs.
    keys: FastMap<KeyBytes<'a>, KnownKey>,
    /// The redactor the values go to: only the values its rules can change are listed.
    values_for: Option<&'a Redactor>,
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
        let known = match self.keys.get(&KeyBytes(key)) {
            Some(known) => *known,
            None => self.learn(key),
        };
        let column = match target {
            Target::Item => known.item,
            Target::Resource => known.resource,
            Target::Event => None,
        };
        if column.is_none() && !self.want_strings {
            return Ok(());
        }
        let value = any_value(raw_value)?;
        let listed = match known.needed {
            Needed::Every => true,
            Needed::Text => matches!(
                value,
                Scalar::Str(_) | Scalar::Array(_) | Scalar::KvList(_)
            ),
            Needed::None => false,
        };
        if self.want_strings && listed {
            let (part, scope) = match target {
                Target::Item => (PART_ITEM, SCOPE_ATTRIBUTE),
                Target::Resource => (PART_RESOURCE, SCOPE_RESOURCE),
                Target::Event => (PART_EVENT, SCOPE_EVENT),
            };
            self.strings
                .push(part, scope, owner, position, row, known.view, &value);
        }
        if let Some(column) = column {
            match target {
                Target::Resource => self.resources.set(column, value),
                _ => self.items.set(column, value),
            }
        }
        Ok(())
    }

    fn resource(&mut self, buf: &'a [u8], resource_index: i64) -> WireResult<()> {
        let mut reader = Reader::new(buf);
        let mut position = 0;
        while !reader.done() {
            let (field, wire) = reader.tag()?;
            if field == 1 {
                let kv = reader.expect_len(wire)?;
                self.attributes_of(kv, Target::Resource, resource_index, position, -1)?;
                position += 1;
            } else {
                reader.skip(wire)?;
            }
        }
        Ok(())
    }

    fn span(&mut self, buf: &'a [u8], row: i64) -> WireResult<()> {
        let mut reader = Reader::new(buf);
        let (mut name, mut start, mut end, mut status) = (&b""[..], 0u64, 0u64, 0i32);
        let mut position = 0;
        while !reader.done() {
            let (field, wire) = reader.tag()?;
            match field {
                5 => name = reader.expect_len(wire)?,
                7 | 8 => {
                    if wire != I64 {
                        return Err(format!("span time field {field} has wire type {wire}"));
                    }
                    let value = reader.fixed64()?;
                    if field == 7 {
                        start = value;
                    } else {
                        end = value;
                    }
                }
                9 => {
                    let kv = reader.expect_len(wire)?;
                    self.attributes_of(kv, Target::Item, row, position, row)?;
                    position += 1;
                }
                11 => {
                    let event = reader.expect_len(wire)?;
                    let event_index = self.event_rows.len() as i64;
                    self.event_rows.push(row as u32);
                    let mut inner = Reader::new(event);
                    let mut event_position = 0;
                    while !inner.done() {
                        let (f, w) = inner.tag()?;
                        if f == 3 {
                            let kv = inner.expect_len(w)?;
                            self.attributes_of(
                                kv,
                                Target::Event,
                                event_index,
                                event_position,
                                row,
                            )?;
                            event_position += 1;
                        } else {
                            inner.skip(w)?;
                        }
                    }
                }
                15 => {
                    let mut inner = Reader::new(reader.expect_len(wire)?);
                    while !inner.done() {
                        let (f, w) = inner.tag()?;
                        if f == 3 && w == VARINT {
                            status = inner.varint()? as i32;
                        } else {
                            inner.skip(w)?;
                        }
                    }
                }
                _ => reader.skip(wire)?,
            }
        }
        self.names.push_with(|out| push_text(out, name));
        self.starts.push(start);
        self.ends.push(end);
        self.statuses.push(status);
        Ok(())
    }

    fn log_record(&mut self, buf: &'a [u8], row: i64) -> WireResult<()> {
        let mut reader = Reader::new(buf);
        let mut position = 0;
        let mut body = Scalar::Missing;
        while !reader.done() {
            let (field, wire) = reader.tag()?;
            match field {
                5 => body = any_value(reader.expect_len(wire)?)?,
                6 => {
                    let kv = reader.expect_len(wire)?;
                    self.attributes_of(kv, Target::Item, row, position, row)?;
                    position += 1;
                }
                _ => reader.skip(wire)?,
            }
        }
        if self.want_strings {
            self.strings
                .push(PART_ITEM, SCOPE_BODY, row, -1, row, [0u8; 16], &body);
        }
        Ok(())
    }

    /// ResourceSpans / ResourceLogs: resource = 1, scope container = 2, item inside scope = 2.
    fn resource_group(&mut self, buf: &'a [u8], resource_index: i64, logs: bool) -> WireResult<()> {
        self.resources.new_row();
        let mut reader = Reader::new(buf);
        while !reader.done() {
            let (field, wire) = reader.tag()?;
            match field {
                1 => {
                    let resource = reader.expect_len(wire)?;
                    self.resource(resource, resource_index)?;
                }
                2 => {
                    let mut scope = Reader::new(reader.expect_len(wire)?);
                    while !scope.done() {
                        let (f, w) = scope.tag()?;
                        if f == 2 {
                            let item = scope.expect_len(w)?;
                            let row = self.item_resource.len() as i64;
                            self.item_resource.push(resource_index as u32);
                            self.items.new_row();
                            if logs {
                                self.log_record(item, row)?;
                            } else {
                                self.span(item, row)?;
                            }
                        } else {
                            scope.skip(w)?;
                        }
                    }
                }
                _ => reader.skip(wire)?,
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
        let (field, wire) = reader.tag()?;
        if field == 1 {
            let group = reader.expect_len(wire)?;
            state.resource_group(group, resource_index, logs)?;
            resource_index += 1;
        } else {
            reader.skip(wire)?;
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
#[pyfunction]
#[pyo3(signature = (raw, item_keys, resource_keys, want_strings, logs=false, values_to=None))]
pub fn scan<'py>(
    py: Python<'py>,
    raw: &Bound<'py, PyBytes>,
    item_keys: Vec<String>,
    resource_keys: Vec<String>,
    want_strings: bool,
    logs: bool,
    values_to: Option<Bound<'py, Redactor>>,
) -> PyResult<Bound<'py, PyDict>> {
    let request = raw;
    let raw = request.as_bytes();
    let want_strings = want_strings || values_to.is_some();
    // A rough guess from the request size; only to avoid most regrowth.
    let guess = raw.len() / 600 + 16;
    let strings_guess = if want_strings { guess * 10 } else { 0 };
    let mut state = Scan {
        want_strings,
        items: Columns::new(&item_keys),
        resources: Columns::new(&resource_keys),
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
        values_for: values_to.as_ref().map(|redactor| redactor.get()),
    };
    py.detach(|| walk(&mut state, raw, logs))
        .map_err(PyValueError::new_err)?;
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
    if let Some(redactor) = values_to.as_ref() {
        let values = ScannedValues {
            strings: std::mem::replace(&mut state.strings, StringValues::with_capacity(0, 0, raw)),
            item_resource: state.item_resource.clone(),
        };
        out.set_item("values_job", Redactor::start(redactor, request, values)?)?;
    } else if want_strings {
        out.set_item("strings", state.strings.to_py(py)?)?;
    }
    Ok(out)
}
