//! Reads an OTLP export request once and collects what the stages asked for (see lib.rs).

use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::wire::{Reader, WireResult, I64, LEN, VARINT};

#[derive(Clone, Debug)]
enum Scalar {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    /// The raw ArrayValue / KeyValueList message, rendered as JSON only if someone asks.
    Array(Vec<u8>),
    KvList(Vec<u8>),
    Missing,
}

impl Scalar {
    /// The OTLP oneof name, as protobuf's WhichOneof reports it.
    fn kind(&self) -> Option<&'static str> {
        Some(match self {
            Scalar::Str(_) => "string_value",
            Scalar::Bool(_) => "bool_value",
            Scalar::Int(_) => "int_value",
            Scalar::Double(_) => "double_value",
            Scalar::Bytes(_) => "bytes_value",
            Scalar::Array(_) => "array_value",
            Scalar::KvList(_) => "kvlist_value",
            Scalar::Missing => return None,
        })
    }

    /// The text the redaction stage scans; arrays and kvlists are rendered by the caller.
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

    fn render(&self) -> Option<String> {
        match self {
            Scalar::Str(s) => Some(s.clone()),
            Scalar::Bool(b) => Some(if *b { "true" } else { "false" }.to_owned()),
            Scalar::Int(i) => Some(i.to_string()),
            Scalar::Double(d) => Some(python_float_repr(*d)),
            Scalar::Bytes(b) => Some(b.iter().map(|x| format!("{x:02x}")).collect()),
            Scalar::Array(raw) | Scalar::KvList(raw) => {
                let mut out = String::new();
                let rendered = if matches!(self, Scalar::Array(_)) {
                    json_array(raw, &mut out)
                } else {
                    json_kvlist(raw, &mut out)
                };
                rendered.ok().map(|_| out)
            }
            Scalar::Missing => None,
        }
    }
}

/// Formats a double the way Python's repr does, so both decoders render values alike.
fn python_float_repr(d: f64) -> String {
    if d.is_nan() {
        return "nan".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if d == 0.0 {
        return if d.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{d:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let rest = &digits[1..];
        let mantissa = if rest.is_empty() {
            digits[..1].to_string()
        } else {
            format!("{}.{}", &digits[..1], rest)
        };
        let esign = if exponent < 0 { "-" } else { "+" };
        format!("{sign}{mantissa}e{esign}{:02}", exponent.abs())
    }
}

fn text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

fn any_value(buf: &[u8]) -> WireResult<Scalar> {
    let mut reader = Reader::new(buf);
    let mut value = Scalar::Missing;
    while !reader.done() {
        let (field, wire) = reader.tag()?;
        value = match (field, wire) {
            (1, LEN) => Scalar::Str(text(reader.bytes()?)),
            (2, VARINT) => Scalar::Bool(reader.varint()? != 0),
            (3, VARINT) => Scalar::Int(reader.varint()? as i64),
            (4, I64) => Scalar::Double(f64::from_bits(reader.fixed64()?)),
            (5, LEN) => Scalar::Array(reader.bytes()?.to_vec()),
            (6, LEN) => Scalar::KvList(reader.bytes()?.to_vec()),
            (7, LEN) => Scalar::Bytes(reader.bytes()?.to_vec()),
            (1..=7, _) => return Err(format!("AnyValue field {field} has wire type {wire}")),
            _ => {
                reader.skip(wire)?;
                continue;
            }
        };
    }
    Ok(value)
}

/// Nested values as the JSON text Python's `json.dumps(..., ensure_ascii=False, separators=(",", ":"))`
/// gives for them (processor/decode.py `_render`), so both decoders produce the same text.
fn json_any(buf: &[u8], out: &mut String) -> WireResult<()> {
    match any_value(buf)? {
        Scalar::Missing => out.push_str("null"),
        Scalar::Str(s) => json_string(&s, out),
        Scalar::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Scalar::Int(i) => out.push_str(&i.to_string()),
        // Python renders a non-finite double as the string "inf" / "nan", quoted.
        Scalar::Double(d) if d.is_finite() => out.push_str(&python_float_repr(d)),
        Scalar::Double(d) => json_string(&python_float_repr(d), out),
        Scalar::Bytes(b) => json_string(
            &b.iter().map(|x| format!("{x:02x}")).collect::<String>(),
            out,
        ),
        Scalar::Array(raw) => json_array(&raw, out)?,
        Scalar::KvList(raw) => json_kvlist(&raw, out)?,
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
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut reader = Reader::new(raw);
    while !reader.done() {
        let (field, wire) = reader.tag()?;
        if field == 1 {
            let (key, value) = key_value(reader.expect_len(wire)?)?;
            let key = text(key);
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

/// Where attribute values of a wanted key land: one slot per item or per resource, stored
/// sparsely because most wanted keys are absent from most items.
struct Columns {
    index: HashMap<Vec<u8>, usize>,
    names: Vec<String>,
    values: Vec<Vec<(usize, Scalar)>>,
    rows: usize,
}

impl Columns {
    fn new(keys: Vec<String>) -> Self {
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_bytes().to_vec(), i))
            .collect();
        let values = keys.iter().map(|_| Vec::new()).collect();
        Columns {
            index,
            names: keys,
            values,
            rows: 0,
        }
    }

    fn new_row(&mut self) {
        self.rows += 1;
    }

    fn wants(&self, key: &[u8]) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// The last occurrence of a key in an item wins, as when protobuf merges a map.
    fn set(&mut self, column: usize, value: Scalar) {
        let row = self.rows - 1;
        let cells = &mut self.values[column];
        match cells.last_mut() {
            Some((last, slot)) if *last == row => *slot = value,
            _ => cells.push((row, value)),
        }
    }

    fn dense(&self, column: usize) -> Vec<&Scalar> {
        let mut out = vec![&Scalar::Missing; self.rows];
        for (row, value) in &self.values[column] {
            out[*row] = value;
        }
        out
    }
}

const SCOPE_ATTRIBUTE: u8 = 0;
const SCOPE_EVENT: u8 = 1;
const SCOPE_RESOURCE: u8 = 2;
const SCOPE_BODY: u8 = 3;

/// Every value with its address, in columnar buffers that become Arrow arrays on the Python side
/// without one Python object per value.
struct StringValues {
    scope: Vec<u8>,
    owner: Vec<i64>,
    position: Vec<i64>,
    row: Vec<i64>,
    key_offsets: Vec<i64>,
    key_data: Vec<u8>,
    value_offsets: Vec<i64>,
    value_data: Vec<u8>,
    /// The AnyValue oneof field number (1 string ... 7 bytes).
    kind: Vec<u8>,
    /// Indexes of arrays and kvlists, whose text the Python side renders.
    nested: Vec<usize>,
}

impl Default for StringValues {
    fn default() -> Self {
        StringValues {
            scope: Vec::new(),
            owner: Vec::new(),
            position: Vec::new(),
            row: Vec::new(),
            key_offsets: vec![0],
            key_data: Vec::new(),
            value_offsets: vec![0],
            value_data: Vec::new(),
            kind: Vec::new(),
            nested: Vec::new(),
        }
    }
}

impl StringValues {
    fn push(&mut self, scope: u8, owner: i64, position: i64, row: i64, key: &[u8], value: &Scalar) {
        let Some(kind) = value.kind_code() else {
            return;
        };
        if let Some(text) = value.render() {
            self.value_data.extend_from_slice(text.as_bytes());
        } else {
            self.nested.push(self.scope.len());
        }
        self.scope.push(scope);
        self.owner.push(owner);
        self.position.push(position);
        self.row.push(row);
        self.key_data
            .extend_from_slice(String::from_utf8_lossy(key).as_bytes());
        self.key_offsets.push(self.key_data.len() as i64);
        self.value_offsets.push(self.value_data.len() as i64);
        self.kind.push(kind);
    }

    fn len(&self) -> usize {
        self.scope.len()
    }

    fn append(&mut self, other: &StringValues) {
        let base = self.len();
        let key_base = self.key_data.len() as i64;
        let value_base = self.value_data.len() as i64;
        self.scope.extend_from_slice(&other.scope);
        self.owner.extend_from_slice(&other.owner);
        self.position.extend_from_slice(&other.position);
        self.row.extend_from_slice(&other.row);
        self.key_data.extend_from_slice(&other.key_data);
        self.key_offsets
            .extend(other.key_offsets[1..].iter().map(|o| o + key_base));
        self.value_data.extend_from_slice(&other.value_data);
        self.value_offsets
            .extend(other.value_offsets[1..].iter().map(|o| o + value_base));
        self.kind.extend_from_slice(&other.kind);
        self.nested.extend(other.nested.iter().map(|i| i + base));
    }
}

struct Scan {
    want_strings: bool,
    items: Columns,
    resources: Columns,
    item_resource: Vec<u32>,
    names: Vec<String>,
    starts: Vec<u64>,
    ends: Vec<u64>,
    statuses: Vec<i32>,
    event_rows: Vec<u32>,
    strings: StringValues,
    resource_strings: StringValues,
    event_strings: StringValues,
}

impl Scan {
    fn attributes_of(
        &mut self,
        kv: &[u8],
        target: Target,
        owner: i64,
        position: i64,
        row: i64,
    ) -> WireResult<()> {
        let (key, raw_value) = key_value(kv)?;
        let column = match target {
            Target::Item => self.items.wants(key),
            Target::Resource => self.resources.wants(key),
            Target::Event => None,
        };
        if column.is_none() && !self.want_strings {
            return Ok(());
        }
        let value = any_value(raw_value)?;
        if self.want_strings {
            let (sink, scope) = match target {
                Target::Item => (&mut self.strings, SCOPE_ATTRIBUTE),
                Target::Resource => (&mut self.resource_strings, SCOPE_RESOURCE),
                Target::Event => (&mut self.event_strings, SCOPE_EVENT),
            };
            sink.push(scope, owner, position, row, key, &value);
        }
        if let Some(column) = column {
            match target {
                Target::Resource => self.resources.set(column, value),
                _ => self.items.set(column, value),
            }
        }
        Ok(())
    }

    fn resource(&mut self, buf: &[u8], resource_index: i64) -> WireResult<()> {
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

    fn span(&mut self, buf: &[u8], row: i64) -> WireResult<()> {
        let mut reader = Reader::new(buf);
        let (mut name, mut start, mut end, mut status) = (String::new(), 0u64, 0u64, 0i32);
        let mut position = 0;
        while !reader.done() {
            let (field, wire) = reader.tag()?;
            match field {
                5 => name = text(reader.expect_len(wire)?),
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
        self.names.push(name);
        self.starts.push(start);
        self.ends.push(end);
        self.statuses.push(status);
        Ok(())
    }

    fn log_record(&mut self, buf: &[u8], row: i64) -> WireResult<()> {
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
            self.strings.push(SCOPE_BODY, row, -1, row, b"", &body);
        }
        Ok(())
    }

    /// ResourceSpans / ResourceLogs: resource = 1, scope container = 2, item inside scope = 2.
    fn resource_group(&mut self, buf: &[u8], resource_index: i64, logs: bool) -> WireResult<()> {
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

fn scalar_to_py(py: Python<'_>, value: &Scalar) -> PyResult<Py<PyAny>> {
    Ok(match value {
        Scalar::Str(s) => s.into_pyobject(py)?.into_any().unbind(),
        Scalar::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Scalar::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        Scalar::Double(d) => d.into_pyobject(py)?.into_any().unbind(),
        Scalar::Bytes(b) => pyo3::types::PyBytes::new(py, b).into_any().unbind(),
        Scalar::Array(_) | Scalar::KvList(_) | Scalar::Missing => py.None(),
    })
}

/// Each column as (kind, values): kind "null" (no item has the key; values is None), a single
/// OTLP kind ("string_value", "int_value", ...) with None where absent, or "mixed", in which case
/// the values are rendered as text, the rule processor/decode.py applies to its own columns.
fn columns_to_py<'py>(py: Python<'py>, columns: &Columns) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for (index, name) in columns.names.iter().enumerate() {
        let values = columns.dense(index);
        let mut kind: Option<&'static str> = None;
        let mut mixed = false;
        for value in values.iter().copied() {
            let this = match value {
                Scalar::Array(_) | Scalar::KvList(_) | Scalar::Missing => None,
                other => other.kind(),
            };
            if let Some(this) = this {
                match kind {
                    None => kind = Some(this),
                    Some(seen) if seen != this => mixed = true,
                    _ => {}
                }
            }
        }
        let Some(kind) = kind else {
            out.set_item(name, ("null", py.None()))?;
            continue;
        };
        let list = PyList::empty(py);
        for value in values.iter().copied() {
            if mixed {
                match value {
                    Scalar::Array(_) | Scalar::KvList(_) | Scalar::Missing => {
                        list.append(py.None())?
                    }
                    Scalar::Bytes(b) => list.append(format!("{:?}", PyBytesRepr(b)))?,
                    Scalar::Bool(b) => list.append(if *b { "True" } else { "False" })?,
                    other => list.append(other.render())?,
                }
            } else {
                list.append(scalar_to_py(py, value)?)?;
            }
        }
        out.set_item(name, (if mixed { "mixed" } else { kind }, list))?;
    }
    Ok(out)
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

fn le_bytes<T: Copy, const N: usize>(values: &[T], to_bytes: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|v| to_bytes(*v)).collect()
}

fn strings_to_py<'py>(py: Python<'py>, parts: [&StringValues; 3]) -> PyResult<Bound<'py, PyDict>> {
    let mut all = StringValues::default();
    for part in parts {
        all.append(part);
    }
    let out = PyDict::new(py);
    out.set_item("n", all.len())?;
    out.set_item("scope", PyBytes::new(py, &all.scope))?;
    out.set_item("kind", PyBytes::new(py, &all.kind))?;
    for (name, values) in [
        ("owner", &all.owner),
        ("position", &all.position),
        ("row", &all.row),
    ] {
        out.set_item(name, PyBytes::new(py, &le_bytes(values, i64::to_le_bytes)))?;
    }
    out.set_item(
        "key_offsets",
        PyBytes::new(py, &le_bytes(&all.key_offsets, i64::to_le_bytes)),
    )?;
    out.set_item("key_data", PyBytes::new(py, &all.key_data))?;
    out.set_item(
        "value_offsets",
        PyBytes::new(py, &le_bytes(&all.value_offsets, i64::to_le_bytes)),
    )?;
    out.set_item("value_data", PyBytes::new(py, &all.value_data))?;
    out.set_item("nested", all.nested)?;
    Ok(out)
}

/// Scans a serialised ExportTraceServiceRequest (logs=False) or ExportLogsServiceRequest.
#[pyfunction]
#[pyo3(signature = (raw, item_keys, resource_keys, want_strings, logs=false))]
pub fn scan<'py>(
    py: Python<'py>,
    raw: &[u8],
    item_keys: Vec<String>,
    resource_keys: Vec<String>,
    want_strings: bool,
    logs: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let mut state = Scan {
        want_strings,
        items: Columns::new(item_keys),
        resources: Columns::new(resource_keys),
        item_resource: Vec::new(),
        names: Vec::new(),
        starts: Vec::new(),
        ends: Vec::new(),
        statuses: Vec::new(),
        event_rows: Vec::new(),
        strings: StringValues::default(),
        resource_strings: StringValues::default(),
        event_strings: StringValues::default(),
    };
    let walk = |state: &mut Scan| -> WireResult<()> {
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
    };
    py.detach(|| walk(&mut state))
        .map_err(PyValueError::new_err)?;
    let out = PyDict::new(py);
    out.set_item("item_resource", &state.item_resource)?;
    out.set_item("names", &state.names)?;
    out.set_item("starts", &state.starts)?;
    out.set_item("ends", &state.ends)?;
    out.set_item("statuses", &state.statuses)?;
    out.set_item("event_rows", &state.event_rows)?;
    out.set_item("items", columns_to_py(py, &state.items)?)?;
    out.set_item("resources", columns_to_py(py, &state.resources)?)?;
    if want_strings {
        // Same order as the Python collector: resources, then items (and log bodies), then events.
        out.set_item(
            "strings",
            strings_to_py(
                py,
                [
                    &state.resource_strings,
                    &state.strings,
                    &state.event_strings,
                ],
            )?,
        )?;
    }
    Ok(out)
}
