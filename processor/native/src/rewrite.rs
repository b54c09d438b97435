//! Writes stage changes into an OTLP export request without decoding it into messages.
//!
//! Items (spans or log records) nobody changed are copied as the bytes they arrived as; a changed
//! item is re-emitted field by field with its attribute values replaced, dropped or appended; only
//! the length prefixes of its enclosing messages are recomputed. The result is semantically the
//! same request the Python encoder (processor/encode.py) produces through the lean protobuf view;
//! tests/test_native_encode.py checks both agree.

use std::collections::{HashMap, HashSet};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::wire::{put_len, put_tag, put_varint, Reader, WireResult, I64, LEN, VARINT};

/// AnyValue message content for one Python value; None for Python None.
fn encode_any(value: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<()> {
    // bool before int: a Python bool is an int, but a distinct OTLP kind.
    if value.is_instance_of::<PyBool>() {
        put_tag(out, 2, VARINT);
        put_varint(out, value.extract::<bool>()? as u64);
    } else if value.is_instance_of::<PyInt>() {
        put_tag(out, 3, VARINT);
        put_varint(out, value.extract::<i64>()? as u64);
    } else if value.is_instance_of::<PyFloat>() {
        put_tag(out, 4, I64);
        out.extend_from_slice(&value.extract::<f64>()?.to_le_bytes());
    } else if let Ok(text) = value.cast::<PyString>() {
        put_len(out, 1, text.to_str()?.as_bytes());
    } else if let Ok(raw) = value.cast::<PyBytes>() {
        put_len(out, 7, raw.as_bytes());
    } else if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let mut array = Vec::new();
        for element in value.try_iter()? {
            let mut item = Vec::new();
            encode_any(&element?, &mut item)?;
            put_len(&mut array, 1, &item);
        }
        put_len(out, 5, &array);
    } else {
        return Err(PyTypeError::new_err(format!(
            "cannot write a {} as an OTLP attribute value",
            value.get_type().name()?
        )));
    }
    Ok(())
}

fn key_value(key: &[u8], any_value: &[u8]) -> Vec<u8> {
    let mut kv = Vec::with_capacity(key.len() + any_value.len() + 6);
    put_len(&mut kv, 1, key);
    put_len(&mut kv, 2, any_value);
    kv
}

fn key_of(kv: &[u8]) -> WireResult<&[u8]> {
    let mut reader = Reader::new(kv);
    let mut key: &[u8] = b"";
    while !reader.done() {
        let (field, wire) = reader.tag()?;
        if field == 1 {
            key = reader.expect_len(wire)?;
        } else {
            reader.skip(wire)?;
        }
    }
    Ok(key)
}

/// Address of an attribute value: (owner, position in the owner's attribute list).
type Address = (usize, usize);
/// New string value, or None to drop the attribute.
type Replacement = Option<Vec<u8>>;

#[derive(Default)]
struct Edits {
    keys: Vec<Vec<u8>>,
    key_index: HashMap<Vec<u8>, usize>,
    /// column -> row -> AnyValue content
    values: Vec<Vec<Option<Vec<u8>>>>,
    item: HashMap<Address, Replacement>,
    event: HashMap<Address, Replacement>,
    resource: HashMap<Address, Replacement>,
    body: HashMap<usize, Replacement>,
    /// row -> serialised Span.Event messages to append
    new_events: HashMap<usize, Vec<Vec<u8>>>,
    touched_rows: HashSet<usize>,
    touched_events: HashSet<usize>,
    touched_resources: HashSet<usize>,
}

struct Counters {
    resource: usize,
    row: usize,
    event: usize,
}

impl Edits {
    fn item_attribute(
        &self,
        row: usize,
        position: usize,
        kv: &[u8],
        done: &mut [bool],
        out: &mut Vec<u8>,
        field: u32,
    ) -> WireResult<()> {
        let rewrite = self.item.get(&(row, position));
        if let Some(None) = rewrite {
            // Dropped: a stage setting the same key appends it anew at the end, as in Python.
            return Ok(());
        }
        let key = key_of(kv)?;
        // A stage's set_attributes applies after the rewrites, as in the Python encoder.
        if let Some(&column) = self.key_index.get(key) {
            if !done[column] {
                if let Some(value) = &self.values[column][row] {
                    done[column] = true;
                    put_len(out, field, &key_value(key, value));
                    return Ok(());
                }
            }
        }
        match rewrite {
            None => put_len(out, field, kv),
            Some(None) => {}
            Some(Some(text)) => put_len(out, field, &key_value(key, &string_any(text))),
        }
        Ok(())
    }

    fn item(
        &self,
        buf: &[u8],
        row: usize,
        logs: bool,
        counters: &mut Counters,
        out: &mut Vec<u8>,
    ) -> WireResult<()> {
        let attribute_field = if logs { 6 } else { 9 };
        let count_events = !logs && !self.touched_events.is_empty();
        if !self.touched_rows.contains(&row) {
            if count_events {
                counters.event += count_field(buf, 11)?;
            }
            put_len(out, 2, buf);
            return Ok(());
        }
        let mut item = Vec::with_capacity(buf.len() + 128);
        let mut done = vec![false; self.keys.len()];
        let mut position = 0;
        let mut reader = Reader::new(buf);
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            if field == attribute_field && wire == LEN {
                let kv = reader.bytes()?;
                self.item_attribute(row, position, kv, &mut done, &mut item, attribute_field)?;
                position += 1;
            } else if !logs && field == 11 && wire == LEN {
                let event = reader.bytes()?;
                let index = counters.event;
                counters.event += 1;
                if self.touched_events.contains(&index) {
                    put_len(
                        &mut item,
                        11,
                        &rewrite_attributes(event, 3, index, &self.event)?,
                    );
                } else {
                    put_len(&mut item, 11, event);
                }
            } else if logs && field == 5 && wire == LEN && self.body.contains_key(&row) {
                reader.bytes()?;
                if let Some(Some(text)) = self.body.get(&row) {
                    put_len(&mut item, 5, &string_any(text));
                }
            } else {
                reader.skip(wire)?;
                item.extend_from_slice(&buf[start..reader.pos]);
            }
        }
        for (column, key) in self.keys.iter().enumerate() {
            if !done[column] {
                if let Some(value) = &self.values[column][row] {
                    put_len(&mut item, attribute_field, &key_value(key, value));
                }
            }
        }
        if let Some(events) = self.new_events.get(&row) {
            for event in events {
                put_len(&mut item, 11, event);
            }
        }
        put_len(out, 2, &item);
        Ok(())
    }

    /// ScopeSpans / ScopeLogs: items are field 2.
    fn scope(
        &self,
        buf: &[u8],
        logs: bool,
        counters: &mut Counters,
        out: &mut Vec<u8>,
    ) -> WireResult<()> {
        let mut scope = Vec::with_capacity(buf.len() + 256);
        let mut reader = Reader::new(buf);
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            if field == 2 && wire == LEN {
                let item = reader.bytes()?;
                self.item(item, counters.row, logs, counters, &mut scope)?;
                counters.row += 1;
            } else {
                reader.skip(wire)?;
                scope.extend_from_slice(&buf[start..reader.pos]);
            }
        }
        put_len(out, 2, &scope);
        Ok(())
    }

    /// ResourceSpans / ResourceLogs: resource is field 1, scopes field 2.
    fn group(
        &self,
        buf: &[u8],
        logs: bool,
        counters: &mut Counters,
        out: &mut Vec<u8>,
    ) -> WireResult<()> {
        let resource_index = counters.resource;
        counters.resource += 1;
        let mut group = Vec::with_capacity(buf.len() + 1024);
        let mut reader = Reader::new(buf);
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            if field == 1 && wire == LEN && self.touched_resources.contains(&resource_index) {
                let resource = reader.bytes()?;
                put_len(
                    &mut group,
                    1,
                    &rewrite_attributes(resource, 1, resource_index, &self.resource)?,
                );
            } else if field == 2 && wire == LEN {
                let scope = reader.bytes()?;
                self.scope(scope, logs, counters, &mut group)?;
            } else {
                reader.skip(wire)?;
                group.extend_from_slice(&buf[start..reader.pos]);
            }
        }
        put_len(out, 1, &group);
        Ok(())
    }
}

fn string_any(text: &[u8]) -> Vec<u8> {
    let mut any = Vec::with_capacity(text.len() + 4);
    put_len(&mut any, 1, text);
    any
}

fn count_field(buf: &[u8], wanted: u32) -> WireResult<usize> {
    let mut reader = Reader::new(buf);
    let mut count = 0;
    while !reader.done() {
        let (field, wire) = reader.tag()?;
        if field == wanted {
            count += 1;
        }
        reader.skip(wire)?;
    }
    Ok(count)
}

/// A message whose attributes (repeated KeyValue `field`) get value rewrites by position.
fn rewrite_attributes(
    buf: &[u8],
    field_number: u32,
    owner: usize,
    rewrites: &HashMap<Address, Replacement>,
) -> WireResult<Vec<u8>> {
    let mut out = Vec::with_capacity(buf.len() + 64);
    let mut reader = Reader::new(buf);
    let mut position = 0;
    while !reader.done() {
        let start = reader.pos;
        let (field, wire) = reader.tag()?;
        if field == field_number && wire == LEN {
            let kv = reader.bytes()?;
            match rewrites.get(&(owner, position)) {
                None => put_len(&mut out, field, kv),
                Some(None) => {}
                Some(Some(text)) => {
                    put_len(&mut out, field, &key_value(key_of(kv)?, &string_any(text)))
                }
            }
            position += 1;
        } else {
            reader.skip(wire)?;
            out.extend_from_slice(&buf[start..reader.pos]);
        }
    }
    Ok(out)
}

const SCOPE_ATTRIBUTE: u8 = 0;
const SCOPE_EVENT: u8 = 1;
const SCOPE_RESOURCE: u8 = 2;
const SCOPE_BODY: u8 = 3;

/// Applies changes to a serialised trace (logs=False) or logs export request.
///
/// columns: [(key, values)] with one value per item (None: leave the item alone); values are
/// written over an attribute of the same key or appended. rewrites: parallel lists addressing
/// values as decode.string_values() does (scope code 0 item attribute, 1 event, 2 resource,
/// 3 log body; owner; position; row of the item it belongs to; new string or None to drop).
/// events: (row, serialised Span.Event) to append to spans.
#[pyfunction]
#[pyo3(signature = (raw, columns, scopes, owners, positions, rows, new_values, events=Vec::new(), logs=false))]
#[allow(clippy::too_many_arguments)]
pub fn rewrite<'py>(
    py: Python<'py>,
    raw: &[u8],
    columns: Vec<(String, Bound<'py, PyList>)>,
    scopes: Vec<u8>,
    owners: Vec<usize>,
    positions: Vec<i64>,
    rows: Vec<usize>,
    new_values: Vec<Option<String>>,
    events: Vec<(usize, Vec<u8>)>,
    logs: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut edits = Edits::default();
    if logs && !events.is_empty() {
        return Err(PyValueError::new_err("log records have no events"));
    }
    for (row, event) in events {
        edits.new_events.entry(row).or_default().push(event);
        edits.touched_rows.insert(row);
    }
    for (key, values) in columns {
        let column = edits.keys.len();
        let mut encoded = Vec::with_capacity(values.len());
        for (row, value) in values.iter().enumerate() {
            if value.is_none() {
                encoded.push(None);
            } else {
                let mut any = Vec::new();
                encode_any(&value, &mut any)?;
                encoded.push(Some(any));
                edits.touched_rows.insert(row);
            }
        }
        edits
            .key_index
            .entry(key.as_bytes().to_vec())
            .or_insert(column);
        edits.keys.push(key.into_bytes());
        edits.values.push(encoded);
    }
    let n = scopes.len();
    if [owners.len(), positions.len(), rows.len(), new_values.len()]
        .iter()
        .any(|&len| len != n)
    {
        return Err(PyValueError::new_err("rewrite lists differ in length"));
    }
    for i in 0..n {
        let replacement = new_values[i].as_ref().map(|text| text.as_bytes().to_vec());
        let position = positions[i].max(0) as usize;
        match scopes[i] {
            SCOPE_ATTRIBUTE => {
                edits.item.insert((owners[i], position), replacement);
                edits.touched_rows.insert(rows[i]);
            }
            SCOPE_EVENT => {
                edits.event.insert((owners[i], position), replacement);
                edits.touched_events.insert(owners[i]);
                edits.touched_rows.insert(rows[i]);
            }
            SCOPE_RESOURCE => {
                edits.resource.insert((owners[i], position), replacement);
                edits.touched_resources.insert(owners[i]);
            }
            SCOPE_BODY => {
                edits.body.insert(owners[i], replacement);
                edits.touched_rows.insert(rows[i]);
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown rewrite scope {other}"
                )))
            }
        }
    }
    let walk = || -> WireResult<Vec<u8>> {
        let mut out = Vec::with_capacity(raw.len() + raw.len() / 4);
        let mut counters = Counters {
            resource: 0,
            row: 0,
            event: 0,
        };
        let mut reader = Reader::new(raw);
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            if field == 1 && wire == LEN {
                let group = reader.bytes()?;
                edits.group(group, logs, &mut counters, &mut out)?;
            } else {
                reader.skip(wire)?;
                out.extend_from_slice(&raw[start..reader.pos]);
            }
        }
        Ok(out)
    };
    let out = py.detach(walk).map_err(PyValueError::new_err)?;
    Ok(PyBytes::new(py, &out))
}
