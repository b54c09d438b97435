//! Writes stage changes into an OTLP export request without decoding it into messages.
//!
//! Items (spans or log records) nobody changed are copied as the bytes they arrived as; a changed
//! item is re-emitted field by field with its attribute values replaced, dropped or appended; only
//! the length prefixes of its enclosing messages are recomputed. The result is semantically the
//! same request the Python encoder (processor/core/encode.py) produces through the lean protobuf view;
//! tests/core/test_native_encode.py checks both agree.

use std::ops::Range;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::fasthash::{FastMap, FastSet, KeyBytes};
use crate::otlp::arrow::{bytes_written, ArrowIn, Kind, Out};
use crate::otlp::wire::{
    len_field_size, put_len, put_tag, put_varint, varint_len, Reader, WireResult, I64, LEN, VARINT,
};

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
        return Err(cannot_write(&value.get_type().name()?.to_string()));
    }
    Ok(())
}

fn cannot_write(type_name: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "cannot write a {type_name} as an OTLP attribute value"
    ))
}

/// AnyValue content for row `row` of an Arrow column (valid rows only), as `encode_any` writes
/// the Python value polars' `to_list` would give for it.
fn encode_arrow(column: &ArrowIn, row: usize, out: &mut Vec<u8>) -> PyResult<()> {
    match column.kind {
        Kind::Bool => {
            put_tag(out, 2, VARINT);
            put_varint(out, column.bool_at(row) as u64);
        }
        Kind::I64 => {
            put_tag(out, 3, VARINT);
            put_varint(out, column.i64_at(row) as u64);
        }
        Kind::F64 => {
            put_tag(out, 4, I64);
            out.extend_from_slice(&column.f64_at(row).to_le_bytes());
        }
        Kind::String => put_len(out, 1, column.view_at(row)?),
        Kind::Binary => put_len(out, 7, column.view_at(row)?),
        Kind::List => {
            let child = column
                .child
                .as_deref()
                .ok_or_else(|| PyValueError::new_err("list without values"))?;
            let field = match child.kind {
                Kind::String => 1,
                Kind::Binary => 7,
                _ => return Err(PyValueError::new_err("lists of strings or bytes only")),
            };
            let range = column.list_range(row);
            let mut content = 0;
            for index in range.clone() {
                if !child.is_valid(index) {
                    return Err(cannot_write("NoneType"));
                }
                content += len_field_size(1, len_field_size(field, child.view_at(index)?.len()));
            }
            put_tag(out, 5, LEN);
            put_varint(out, content as u64);
            for index in range {
                let element = child.view_at(index)?;
                put_tag(out, 1, LEN);
                put_varint(out, len_field_size(field, element.len()) as u64);
                put_len(out, field, element);
            }
        }
    }
    Ok(())
}

/// (name, rows, times, [(key, values)]) as the Python side passes a group of events.
type EventGroup<'py> = (
    String,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Vec<(String, Bound<'py, PyAny>)>,
);

/// Appends a group of events given as columns, (name, rows, times, [(key, values)]): event i goes
/// to span `rows[i]` at `times[i]` (an i64 holding the u64 bits) with an attribute per column
/// valid at i, in column order. Written as `encode._event_bytes` writes a Span.Event (proto3
/// leaves out a zero time and an empty name), so the bytes are the same.
fn event_group(group: &Bound<'_, PyTuple>, edits: &mut Edits<'_>) -> PyResult<()> {
    let (name, rows, times, attributes): EventGroup<'_> = group.extract()?;
    let rows = ArrowIn::extract(&rows)?;
    let times = ArrowIn::extract(&times)?;
    let attributes = attributes
        .iter()
        .map(|(key, values)| Ok((key.as_bytes(), ArrowIn::extract(values)?)))
        .collect::<PyResult<Vec<_>>>()?;
    let short = times.len < rows.len || attributes.iter().any(|(_, column)| column.len < rows.len);
    if rows.kind != Kind::I64 || times.kind != Kind::I64 || short {
        return Err(PyValueError::new_err(
            "an event group has i64 rows and times and a value per event in every column",
        ));
    }
    let mut any_value = Vec::new();
    // The events of a group are about the same size: each starts with room for the last one.
    let mut last_size = 0;
    for index in 0..rows.len {
        let row = usize::try_from(rows.i64_at(index))
            .map_err(|_| PyValueError::new_err("an event row is not negative"))?;
        let mut event = Vec::with_capacity(last_size + 16);
        let time = times.i64_at(index) as u64;
        if time != 0 {
            put_tag(&mut event, 1, I64);
            event.extend_from_slice(&time.to_le_bytes());
        }
        if !name.is_empty() {
            put_len(&mut event, 2, name.as_bytes());
        }
        for (key, column) in &attributes {
            if column.is_valid(index) {
                any_value.clear();
                encode_arrow(column, index, &mut any_value)?;
                put_key_value(&mut event, 3, key, &any_value);
            }
        }
        last_size = event.len();
        edits.added += event.len() + 6;
        edits.new_events.entry(row).or_default().push(event);
        edits.touch_row(row);
    }
    Ok(())
}

/// A KeyValue field: key and AnyValue content, written without a temporary message.
fn put_key_value(out: &mut Vec<u8>, field: u32, key: &[u8], any_value: &[u8]) {
    put_tag(out, field, LEN);
    put_varint(
        out,
        (len_field_size(1, key.len()) + len_field_size(2, any_value.len())) as u64,
    );
    put_len(out, 1, key);
    put_len(out, 2, any_value);
}

/// `put_key_value` with the key given as its whole key field (`put_len(_, 1, key)`), which a set
/// column writes once for all its values; the output grows at most once per KeyValue.
#[inline]
fn put_key_field_value(out: &mut Vec<u8>, field: u32, key_field: &[u8], any_value: &[u8]) {
    let body = key_field.len() + len_field_size(2, any_value.len());
    out.reserve(len_field_size(field, body));
    put_tag(out, field, LEN);
    put_varint(out, body as u64);
    out.extend_from_slice(key_field);
    put_len(out, 2, any_value);
}

/// A KeyValue with a string value.
fn put_key_string(out: &mut Vec<u8>, field: u32, key: &[u8], text: &[u8]) {
    let any_value = len_field_size(1, text.len());
    put_tag(out, field, LEN);
    put_varint(
        out,
        (len_field_size(1, key.len()) + len_field_size(2, any_value)) as u64,
    );
    put_len(out, 1, key);
    put_tag(out, 2, LEN);
    put_varint(out, any_value as u64);
    put_len(out, 1, text);
}

fn key_of(kv: &[u8]) -> WireResult<&[u8]> {
    // The usual shape (key, then value, nothing else) read directly; anything else by the loop.
    if let Some(key) = plain_key(kv) {
        return Ok(key);
    }
    let mut reader = Reader::new(kv);
    let mut key: &[u8] = b"";
    while !reader.done() {
        let (field, wire) = reader.tag()?;
        if (field, wire) == (1, LEN) {
            key = reader.bytes()?;
        } else {
            reader.skip(wire)?;
        }
    }
    Ok(key)
}

/// The key of a KeyValue laid out as field 1 then field 2 ending the message, or None.
#[inline]
fn plain_key(kv: &[u8]) -> Option<&[u8]> {
    let mut reader = Reader::new(kv);
    if kv.first() != Some(&0x0a) {
        return None;
    }
    reader.pos = 1;
    let key = reader.bytes().ok()?;
    if reader.done() {
        return Some(key);
    }
    if kv[reader.pos] != 0x12 {
        return None;
    }
    reader.pos += 1;
    reader.bytes().ok()?;
    reader.done().then_some(key)
}

/// Whether a length-delimited field at `buf[start..]` with content `content` carries the header
/// `put_len` writes (one-byte tag, shortest length varint): then its bytes are what `put_len`
/// would write, and a run of such fields is copied as one block.
#[inline]
fn canonical(buf: &[u8], start: usize, content: &[u8]) -> bool {
    content.as_ptr() as usize - (buf.as_ptr() as usize + start)
        == 1 + varint_len(content.len() as u64)
}

/// Address of an attribute value: (owner, position in the owner's attribute list).
type Address = (usize, usize);
/// New string value (a range of `Edits::texts`), or None to drop the attribute.
type Replacement = Option<Range<usize>>;

#[derive(Default)]
struct Edits<'k> {
    keys: Vec<&'k [u8]>,
    key_index: FastMap<KeyBytes<'k>, usize>,
    /// row * columns + column -> AnyValue content as (start, end) in `values_data`; start == end:
    /// none (no AnyValue encodes to nothing). Row-major: an item reads its values side by side.
    values: Vec<(u32, u32)>,
    /// Columns per row of `values` (every key is registered before any value is set).
    columns: usize,
    /// (key length % 64, last key byte) of every key, one bit each: most attributes of an item
    /// are told apart from the set keys by this alone, without hashing their key.
    key_filter: Vec<u64>,
    values_data: Vec<u8>,
    item: FastMap<Address, Replacement>,
    event: FastMap<Address, Replacement>,
    resource: FastMap<Address, Replacement>,
    body: FastMap<usize, Replacement>,
    texts: Vec<u8>,
    /// row -> serialised Span.Event messages to append
    new_events: FastMap<usize, Vec<Vec<u8>>>,
    touched_rows: Vec<bool>,
    /// Rows with item attribute rewrites: the others skip the lookup per attribute.
    rewritten_rows: Vec<bool>,
    touched_events: FastSet<usize>,
    touched_resources: FastSet<usize>,
    /// row -> new span name / status message; event index -> new event name (None: cleared).
    span_name: FastMap<usize, Replacement>,
    status: FastMap<usize, Replacement>,
    event_name: FastMap<usize, Replacement>,
    /// row -> new LogRecord.event_name (None: cleared).
    log_event: FastMap<usize, Replacement>,
    /// (span row, position across the span's links) -> new link attribute value.
    link: FastMap<Address, Replacement>,
    link_rows: FastSet<usize>,
    /// (scope index in request order, position) -> new InstrumentationScope attribute value.
    scope: FastMap<Address, Replacement>,
    touched_scopes: FastSet<usize>,
    /// Byte ranges of unknown fields to drop from the request before anything else is written.
    unknown: Vec<Range<usize>>,
    /// Bytes the edits can add to the request beyond `values_data` (keys and headers of set
    /// values, new events, rewritten texts): `built` is sized once from it instead of regrown.
    added: usize,
    /// Per set column: its KeyValue key field (tag, length, key), written once and copied.
    key_fields: Vec<Vec<u8>>,
}

impl<'k> Edits<'k> {
    fn touch_row(&mut self, row: usize) {
        if row >= self.touched_rows.len() {
            self.touched_rows.resize(row + 1, false);
        }
        self.touched_rows[row] = true;
    }

    fn text(&self, range: &Range<usize>) -> &[u8] {
        &self.texts[range.clone()]
    }

    #[inline]
    fn key_signature(key: &[u8]) -> usize {
        (key.len() % 64) * 256 + key.last().map_or(0, |b| *b as usize)
    }

    /// Every set key, before any value: fixes the width of the row-major value table.
    fn set_keys<'a>(&mut self, keys: impl Iterator<Item = &'k str>, rows: usize) {
        self.key_filter = vec![0; 64 * 256 / 64];
        for key in keys {
            let key = key.as_bytes();
            if !self.key_index.contains_key(&KeyBytes(key)) {
                self.key_index.insert(KeyBytes(key), self.keys.len());
                self.keys.push(key);
                let mut key_field = Vec::with_capacity(key.len() + 6);
                put_len(&mut key_field, 1, key);
                self.key_fields.push(key_field);
                let signature = Self::key_signature(key);
                self.key_filter[signature / 64] |= 1 << (signature % 64);
            }
        }
        self.columns = self.keys.len();
        self.values = vec![(0, 0); rows * self.columns];
    }

    /// The set column of an attribute key, if any.
    #[inline]
    fn column_of(&self, key: &[u8]) -> Option<usize> {
        let signature = Self::key_signature(key);
        if self.key_filter.get(signature / 64).copied().unwrap_or(0) & (1 << (signature % 64)) == 0
        {
            return None;
        }
        self.key_index.get(&KeyBytes(key)).copied()
    }

    /// Later values for a key overwrite earlier ones row by row, as when applied in turn.
    fn set_column(
        &mut self,
        key: &'k str,
        rows: usize,
        mut encode: impl FnMut(usize, &mut Vec<u8>) -> PyResult<bool>,
    ) -> PyResult<()> {
        let column = *self
            .key_index
            .get(&KeyBytes(key.as_bytes()))
            .expect("keys are registered first");
        // A KeyValue around each value: its key field, two tags and two lengths of at most 5 bytes.
        let per_value = self.key_fields[column].len() + 12;
        for row in 0..rows {
            let start = self.values_data.len();
            if encode(row, &mut self.values_data)? {
                self.added += per_value;
                let end = u32::try_from(self.values_data.len())
                    .map_err(|_| PyValueError::new_err("set_attributes values over 4 GiB"))?;
                self.values[row * self.columns + column] = (start as u32, end);
                self.touch_row(row);
            }
        }
        Ok(())
    }

    #[inline]
    fn value(&self, column: usize, row: usize) -> Option<&[u8]> {
        match self.values.get(row * self.columns + column) {
            Some(&(start, end)) if start != end => {
                Some(&self.values_data[start as usize..end as usize])
            }
            _ => None,
        }
    }

    /// A changed item's new content, appended to `built`. Fields kept as they are accumulate
    /// into one run of the item's bytes, copied when something changed is written (or at the end).
    fn build_item(
        &self,
        buf: &[u8],
        row: usize,
        logs: bool,
        layout: &mut Layout,
    ) -> WireResult<()> {
        let attribute_field = if logs { 6 } else { 9 };
        let out = &mut layout.built;
        let done = &mut layout.done;
        done.clear();
        done.resize(self.keys.len(), false);
        let rewritten = self.rewritten_rows.get(row).copied().unwrap_or(false);
        let mut position = 0;
        let mut link_position = 0;
        let mut name_written = false;
        let mut run = 0;
        let mut reader = Reader::new(buf);
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            if field == attribute_field && wire == LEN {
                let kv = reader.bytes()?;
                let rewrite = if rewritten {
                    self.item.get(&(row, position))
                } else {
                    None
                };
                position += 1;
                if let Some(None) = rewrite {
                    // Dropped: a stage setting the same key appends it anew at the end, as in Python.
                    out.extend_from_slice(&buf[run..start]);
                    run = reader.pos;
                    continue;
                }
                let key = key_of(kv)?;
                // A stage's set_attributes applies after the rewrites, as in the Python encoder.
                let set = self.column_of(key).and_then(|column| {
                    if done[column] {
                        return None;
                    }
                    let value = self.value(column, row)?;
                    done[column] = true;
                    Some((column, value))
                });
                if let Some((column, value)) = set {
                    out.extend_from_slice(&buf[run..start]);
                    put_key_field_value(out, attribute_field, &self.key_fields[column], value);
                    run = reader.pos;
                    continue;
                }
                match rewrite {
                    None if canonical(buf, start, kv) => {}
                    None => {
                        out.extend_from_slice(&buf[run..start]);
                        put_len(out, attribute_field, kv);
                        run = reader.pos;
                    }
                    Some(text) => {
                        out.extend_from_slice(&buf[run..start]);
                        if let Some(text) = text {
                            put_key_string(out, attribute_field, key, self.text(text));
                        }
                        run = reader.pos;
                    }
                }
            } else if !logs && field == 11 && wire == LEN {
                let event = reader.bytes()?;
                let index = layout.events;
                layout.events += 1;
                if self.touched_events.contains(&index) {
                    out.extend_from_slice(&buf[run..start]);
                    let attributes = Some((3, index, 0, &self.event));
                    let name = self.event_name.get(&index).map(|name| (2, name));
                    put_len(out, 11, &self.rewrite_message(event, attributes, name)?.0);
                    run = reader.pos;
                } else if !canonical(buf, start, event) {
                    out.extend_from_slice(&buf[run..start]);
                    put_len(out, 11, event);
                    run = reader.pos;
                }
            } else if !logs && field == 5 && wire == LEN && self.span_name.contains_key(&row) {
                reader.bytes()?;
                out.extend_from_slice(&buf[run..start]);
                // Every copy of a repeated name becomes the one new name.
                if !name_written {
                    if let Some(Some(text)) = self.span_name.get(&row) {
                        put_len(out, 5, self.text(text));
                    }
                    name_written = true;
                }
                run = reader.pos;
            } else if !logs && field == 15 && wire == LEN && self.status.contains_key(&row) {
                let status = reader.bytes()?;
                out.extend_from_slice(&buf[run..start]);
                let message = self.status.get(&row).map(|message| (2, message));
                put_len(out, 15, &self.rewrite_message(status, None, message)?.0);
                run = reader.pos;
            } else if !logs && field == 13 && wire == LEN && self.link_rows.contains(&row) {
                let link = reader.bytes()?;
                out.extend_from_slice(&buf[run..start]);
                let attributes = Some((4, row, link_position, &self.link));
                let (rebuilt, count) = self.rewrite_message(link, attributes, None)?;
                link_position += count;
                put_len(out, 13, &rebuilt);
                run = reader.pos;
            } else if logs && field == 12 && wire == LEN && self.log_event.contains_key(&row) {
                reader.bytes()?;
                out.extend_from_slice(&buf[run..start]);
                if !name_written {
                    if let Some(Some(text)) = self.log_event.get(&row) {
                        put_len(out, 12, self.text(text));
                    }
                    name_written = true;
                }
                run = reader.pos;
            } else if logs && field == 5 && wire == LEN && self.body.contains_key(&row) {
                reader.bytes()?;
                out.extend_from_slice(&buf[run..start]);
                if let Some(Some(text)) = self.body.get(&row) {
                    put_len(out, 5, &string_any(self.text(text)));
                }
                run = reader.pos;
            } else {
                reader.skip(wire)?;
            }
        }
        out.extend_from_slice(&buf[run..]);
        let row_values = self
            .values
            .get(row * self.columns..(row + 1) * self.columns)
            .unwrap_or(&[]);
        for (column, &(start, end)) in row_values.iter().enumerate() {
            if start != end && !done[column] {
                let value = &self.values_data[start as usize..end as usize];
                put_key_field_value(out, attribute_field, &self.key_fields[column], value);
            }
        }
        if let Some(events) = self.new_events.get(&row) {
            for event in events {
                put_len(out, 11, event);
            }
        }
        Ok(())
    }

    /// First pass: builds every changed item and resource, and records the new size of every
    /// enclosing message, so the second pass writes each length prefix once, in place.
    fn measure(&self, raw: &[u8], logs: bool, layout: &mut Layout) -> WireResult<usize> {
        let mut total = 0;
        let mut reader = Reader::new(raw);
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            if field == 1 && wire == LEN {
                let size = self.measure_group(reader.bytes()?, logs, layout)?;
                total += len_field_size(1, size);
            } else {
                reader.skip(wire)?;
                total += reader.pos - start;
            }
        }
        Ok(total)
    }

    /// ResourceSpans / ResourceLogs: resource is field 1, scopes field 2.
    fn measure_group(&self, buf: &[u8], logs: bool, layout: &mut Layout) -> WireResult<usize> {
        let resource_index = layout.resources.len();
        layout.resources.push(None);
        let mut size = 0;
        let mut reader = Reader::new(buf);
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            if field == 1 && wire == LEN && self.touched_resources.contains(&resource_index) {
                let attributes = Some((1, resource_index, 0, &self.resource));
                let (rebuilt, _) = self.rewrite_message(reader.bytes()?, attributes, None)?;
                let at = layout.built.len();
                layout.built.extend_from_slice(&rebuilt);
                layout.resources[resource_index] = Some(at..layout.built.len());
                size += len_field_size(1, rebuilt.len());
            } else if field == 2 && wire == LEN {
                size += len_field_size(2, self.measure_scope(reader.bytes()?, logs, layout)?);
            } else {
                reader.skip(wire)?;
                size += reader.pos - start;
            }
        }
        layout.group_sizes.push(size);
        Ok(size)
    }

    /// ScopeSpans / ScopeLogs: items are field 2.
    fn measure_scope(&self, buf: &[u8], logs: bool, layout: &mut Layout) -> WireResult<usize> {
        let count_events = !logs && !self.touched_events.is_empty();
        let mut size = 0;
        let mut reader = Reader::new(buf);
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            if field == 1 && wire == LEN {
                let instrumentation = reader.bytes()?;
                let index = layout.scopes.len();
                if self.touched_scopes.contains(&index) {
                    let attributes = Some((3, index, 0, &self.scope));
                    let (rebuilt, _) = self.rewrite_message(instrumentation, attributes, None)?;
                    let at = layout.built.len();
                    layout.built.extend_from_slice(&rebuilt);
                    layout.scopes.push(Some(at..layout.built.len()));
                    size += len_field_size(1, rebuilt.len());
                } else {
                    layout.scopes.push(None);
                    size += reader.pos - start;
                }
            } else if field == 2 && wire == LEN {
                let item = reader.bytes()?;
                let row = layout.items.len();
                if self.touched_rows.get(row).copied().unwrap_or(false) {
                    let at = layout.built.len();
                    self.build_item(item, row, logs, layout)?;
                    size += len_field_size(2, layout.built.len() - at);
                    layout.items.push(Some(at..layout.built.len()));
                } else {
                    if count_events {
                        layout.events += count_field(item, 11)?;
                    }
                    size += len_field_size(2, item.len());
                    layout.items.push(None);
                }
            } else {
                reader.skip(wire)?;
                size += reader.pos - start;
            }
        }
        layout.scope_sizes.push(size);
        Ok(size)
    }

    /// A message with value rewrites of its attributes (repeated KeyValue field `attributes.0`,
    /// addressed as (owner, position counted from `first`)) and of its text field `text.0` (every
    /// copy replaced by the one new text; None clears it). Returns it and its attribute count.
    fn rewrite_message(
        &self,
        buf: &[u8],
        attributes: Option<(u32, usize, usize, &FastMap<Address, Replacement>)>,
        text: Option<(u32, &Replacement)>,
    ) -> WireResult<(Vec<u8>, usize)> {
        let mut out = Vec::with_capacity(buf.len() + 64);
        let mut reader = Reader::new(buf);
        let mut count = 0;
        let mut text_written = false;
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            match (attributes, text) {
                (Some((attribute_field, owner, first, rewrites)), _)
                    if field == attribute_field && wire == LEN =>
                {
                    let kv = reader.bytes()?;
                    match rewrites.get(&(owner, first + count)) {
                        None => put_len(&mut out, field, kv),
                        Some(None) => {}
                        Some(Some(text)) => {
                            put_key_string(&mut out, field, key_of(kv)?, self.text(text))
                        }
                    }
                    count += 1;
                }
                (_, Some((text_field, replacement))) if field == text_field && wire == LEN => {
                    reader.bytes()?;
                    if !text_written {
                        if let Some(new_text) = replacement {
                            put_len(&mut out, field, self.text(new_text));
                        }
                        text_written = true;
                    }
                }
                _ => {
                    reader.skip(wire)?;
                    out.extend_from_slice(&buf[start..reader.pos]);
                }
            }
        }
        Ok((out, count))
    }

    /// One rewrites frame as (scope, owner, position, new_value) Arrow columns; a later row for
    /// the same value wins, as the Python encoder keeps the last.
    fn add_rewrites(&mut self, frame: &[ArrowIn; 4], event_rows: &[usize]) -> PyResult<()> {
        let [scopes, owners, positions, new_values] = frame;
        self.item.reserve(scopes.len);
        for i in 0..scopes.len {
            let owner = usize::try_from(owners.i64_at(i))
                .map_err(|_| PyValueError::new_err("negative rewrite owner"))?;
            let position = positions.i64_at(i).max(0) as usize;
            // The new KeyValue or text field: its text, the key it replaces and a few headers.
            self.added += 24;
            let replacement = if new_values.is_valid(i) {
                let start = self.texts.len();
                self.texts.extend_from_slice(new_values.view_at(i)?);
                Some(start..self.texts.len())
            } else {
                None
            };
            match scopes.view_at(i)? {
                b"attribute" => {
                    self.item.insert((owner, position), replacement);
                    self.touch_row(owner);
                    if owner >= self.rewritten_rows.len() {
                        self.rewritten_rows.resize(owner + 1, false);
                    }
                    self.rewritten_rows[owner] = true;
                }
                b"event" => {
                    self.event.insert((owner, position), replacement);
                    self.touched_events.insert(owner);
                    let row = *event_rows.get(owner).ok_or_else(|| {
                        PyValueError::new_err("rewrite of an event the request does not have")
                    })?;
                    self.touch_row(row);
                }
                b"resource" => {
                    self.resource.insert((owner, position), replacement);
                    self.touched_resources.insert(owner);
                }
                b"body" => {
                    self.body.insert(owner, replacement);
                    self.touch_row(owner);
                }
                b"span_name" => {
                    self.span_name.insert(owner, replacement);
                    self.touch_row(owner);
                }
                b"status" => {
                    self.status.insert(owner, replacement);
                    self.touch_row(owner);
                }
                b"event_name" => {
                    self.event_name.insert(owner, replacement);
                    self.touched_events.insert(owner);
                    let row = *event_rows.get(owner).ok_or_else(|| {
                        PyValueError::new_err("rewrite of an event the request does not have")
                    })?;
                    self.touch_row(row);
                }
                b"log_event" => {
                    self.log_event.insert(owner, replacement);
                    self.touch_row(owner);
                }
                b"link" => {
                    self.link.insert((owner, position), replacement);
                    self.link_rows.insert(owner);
                    self.touch_row(owner);
                }
                b"scope" => {
                    self.scope.insert((owner, position), replacement);
                    self.touched_scopes.insert(owner);
                }
                // Owner and position are the field's byte range: it is dropped, whatever the
                // new value (a field unknown to the schema has no value to write back).
                b"unknown" => {
                    let end = usize::try_from(positions.i64_at(i))
                        .map_err(|_| PyValueError::new_err("negative unknown field end"))?;
                    self.unknown.push(owner..end);
                }
                other => {
                    return Err(PyValueError::new_err(format!(
                        "unknown attribute scope {:?}",
                        String::from_utf8_lossy(other)
                    )))
                }
            }
        }
        Ok(())
    }
}

/// The rewritten request's shape, from `Edits::measure`: changed items and resources (ranges of
/// `built`; None: unchanged) and the new sizes of scopes and groups, all in request order.
#[derive(Default)]
struct Layout {
    built: Vec<u8>,
    items: Vec<Option<Range<usize>>>,
    resources: Vec<Option<Range<usize>>>,
    /// InstrumentationScope messages in request order (None: unchanged).
    scopes: Vec<Option<Range<usize>>>,
    scope_sizes: Vec<usize>,
    group_sizes: Vec<usize>,
    /// Span events met so far (their index addresses event rewrites).
    events: usize,
    /// Scratch: which set_attributes columns the item being built has written.
    done: Vec<bool>,
}

/// The writes `emit` needs on top of `Out::put`.
trait Emit {
    fn varint(&mut self, value: u64);
    fn tag(&mut self, field: u32, wire: u8);
    fn len_field(&mut self, field: u32, content: &[u8]);
}

impl Emit for Out {
    #[inline]
    fn varint(&mut self, mut value: u64) {
        let mut encoded = [0u8; 10];
        let mut len = 0;
        while value >= 0x80 {
            encoded[len] = (value as u8) | 0x80;
            value >>= 7;
            len += 1;
        }
        encoded[len] = value as u8;
        self.put(&encoded[..=len]);
    }

    #[inline]
    fn tag(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }

    #[inline]
    fn len_field(&mut self, field: u32, content: &[u8]) {
        self.tag(field, LEN);
        self.varint(content.len() as u64);
        self.put(content);
    }
}

/// Second pass: the request with every changed message swapped in; lengths from the layout.
fn emit(raw: &[u8], layout: &Layout, out: &mut Out) -> WireResult<()> {
    let (mut group, mut scope, mut item, mut instrumentation) = (0, 0, 0, 0);
    let mut reader = Reader::new(raw);
    while !reader.done() {
        let start = reader.pos;
        let (field, wire) = reader.tag()?;
        if field != 1 || wire != LEN {
            reader.skip(wire)?;
            out.put(&raw[start..reader.pos]);
            continue;
        }
        let group_buf = reader.bytes()?;
        out.tag(1, LEN);
        out.varint(layout.group_sizes[group] as u64);
        let mut group_reader = Reader::new(group_buf);
        while !group_reader.done() {
            let start = group_reader.pos;
            let (field, wire) = group_reader.tag()?;
            if field == 1 && wire == LEN && layout.resources[group].is_some() {
                group_reader.bytes()?;
                let range = layout.resources[group].clone().expect("checked");
                out.len_field(1, &layout.built[range]);
            } else if field == 2 && wire == LEN {
                let scope_buf = group_reader.bytes()?;
                out.tag(2, LEN);
                out.varint(layout.scope_sizes[scope] as u64);
                scope += 1;
                let mut scope_reader = Reader::new(scope_buf);
                while !scope_reader.done() {
                    let start = scope_reader.pos;
                    let (field, wire) = scope_reader.tag()?;
                    if field == 1 && wire == LEN {
                        scope_reader.bytes()?;
                        match &layout.scopes[instrumentation] {
                            Some(range) => out.len_field(1, &layout.built[range.clone()]),
                            None => out.put(&scope_buf[start..scope_reader.pos]),
                        }
                        instrumentation += 1;
                    } else if field == 2 && wire == LEN {
                        let original = scope_reader.bytes()?;
                        match &layout.items[item] {
                            Some(range) => out.len_field(2, &layout.built[range.clone()]),
                            None => out.len_field(2, original),
                        }
                        item += 1;
                    } else {
                        scope_reader.skip(wire)?;
                        out.put(&scope_buf[start..scope_reader.pos]);
                    }
                }
            } else {
                group_reader.skip(wire)?;
                out.put(&group_buf[start..group_reader.pos]);
            }
        }
        group += 1;
    }
    Ok(())
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
        // Another wire type under the number is an unknown field, as for the scan.
        if (field, wire) == (wanted, LEN) {
            count += 1;
        }
        reader.skip(wire)?;
    }
    Ok(count)
}

/// What `strip_walk` meets on the way to the fields it drops.
enum StripStep {
    /// Bytes kept as they are.
    Keep(Range<usize>),
    /// A message holding a dropped field: its tag bytes, then its content (start) is walked.
    Enter(Range<usize>, usize),
    /// The end of the message whose content starts here.
    Leave(usize),
}

/// Walks a request down to the whole fields at `ranges` (sorted, disjoint), entering only the
/// messages that hold one, with a stack rather than recursion (values nest without bound).
fn strip_walk(
    raw: &[u8],
    ranges: &[Range<usize>],
    mut step: impl FnMut(StripStep),
) -> WireResult<()> {
    let dropped = |field: &Range<usize>| {
        let i = ranges.partition_point(|r| r.start < field.start);
        ranges.get(i) == Some(field)
    };
    let holds = |start: usize, end: usize| {
        let i = ranges.partition_point(|r| r.start < start);
        ranges.get(i).is_some_and(|r| r.end <= end)
    };
    // (content start, end) of each entered message; the request itself at the bottom.
    let mut open = vec![(0, raw.len())];
    let mut reader = Reader::new(raw);
    while let Some(&(content, end)) = open.last() {
        if reader.pos >= end {
            if reader.pos > end {
                return Err("a field runs past its message".into());
            }
            open.pop();
            if !open.is_empty() {
                step(StripStep::Leave(content));
            }
            continue;
        }
        let start = reader.pos;
        let (_, wire) = reader.tag()?;
        if wire == LEN {
            let tag_end = reader.pos;
            let len = reader.varint()? as usize;
            let content = reader.pos;
            let field_end = content.checked_add(len).ok_or("length overflow")?;
            if field_end > end {
                return Err("truncated length-delimited field".into());
            }
            if dropped(&(start..field_end)) {
                reader.pos = field_end;
            } else if holds(content, field_end) {
                step(StripStep::Enter(start..tag_end, content));
                open.push((content, field_end));
            } else {
                reader.pos = field_end;
                step(StripStep::Keep(start..field_end));
            }
        } else {
            reader.skip(wire)?;
            if !dropped(&(start..reader.pos)) {
                step(StripStep::Keep(start..reader.pos));
            }
        }
    }
    Ok(())
}

/// The request without the unknown fields at `ranges` (whole fields, as the scan listed them),
/// every enclosing length prefix recomputed; everything else byte for byte as received.
fn strip(raw: &[u8], ranges: &mut Vec<Range<usize>>) -> WireResult<Vec<u8>> {
    ranges.sort_by_key(|range| range.start);
    ranges.dedup();
    if ranges.windows(2).any(|pair| pair[0].end > pair[1].start) {
        return Err("overlapping unknown fields".into());
    }
    // First pass: the new content size of every entered message, by its content start.
    let mut sizes: FastMap<usize, usize> = FastMap::default();
    let mut open: Vec<usize> = vec![0];
    strip_walk(raw, ranges, |step| match step {
        StripStep::Keep(range) => *open.last_mut().expect("the request") += range.len(),
        StripStep::Enter(tag, _) => {
            *open.last_mut().expect("the request") += tag.len();
            open.push(0);
        }
        StripStep::Leave(content) => {
            let size = open.pop().expect("entered");
            sizes.insert(content, size);
            *open.last_mut().expect("the request") += varint_len(size as u64) + size;
        }
    })?;
    let mut out = Vec::with_capacity(open[0]);
    strip_walk(raw, ranges, |step| match step {
        StripStep::Keep(range) => out.extend_from_slice(&raw[range]),
        StripStep::Enter(tag, content) => {
            out.extend_from_slice(&raw[tag]);
            put_varint(&mut out, sizes[&content] as u64);
        }
        StripStep::Leave(_) => {}
    })?;
    Ok(out)
}

/// Applies changes to a serialised trace (logs=False) or logs export request.
///
/// columns: [(key, values)] in stage order, values one per item (null: leave the item alone),
/// either an Arrow column (see arrow.rs `ArrowIn`) or a Python list; a later column for the same
/// key wins where it has a value. Values are written over an attribute of the same key or
/// appended. rewrites: frames of (scope, owner, position, new_value) Arrow columns addressing
/// values as decode.string_values() does (scope attribute/event/resource/body/link/scope, the
/// text places span_name/status/event_name/log_event, whose null new_value clears the text, and unknown,
/// whose field is dropped whatever the new value; a null new_value drops an attribute).
/// event_rows: the span row of each event, for event rewrites and event names. events: to append
/// to spans, in order, each either (row, serialised Span.Event) or a group of events of one name
/// as columns, (name, rows, times, [(key, values)]) with Arrow i64 rows and times (see
/// `event_group`).
#[pyfunction]
#[pyo3(signature = (raw, columns, rewrites, event_rows, events=Vec::new(), logs=false))]
pub fn rewrite<'py>(
    py: Python<'py>,
    raw: &[u8],
    columns: Vec<(String, Bound<'py, PyAny>)>,
    rewrites: Vec<Bound<'py, PyAny>>,
    event_rows: Vec<usize>,
    events: Vec<Bound<'py, PyTuple>>,
    logs: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut edits = Edits::default();
    if logs && !events.is_empty() {
        return Err(PyValueError::new_err("log records have no events"));
    }
    for event in events {
        if event.len() == 2 {
            let (row, event): (usize, Vec<u8>) = event.extract()?;
            edits.added += event.len() + 6;
            edits.new_events.entry(row).or_default().push(event);
            edits.touch_row(row);
        } else {
            event_group(&event, &mut edits)?;
        }
    }
    enum Source<'a, 'py> {
        List(&'a Bound<'py, PyList>),
        Arrow(ArrowIn),
    }
    let sources = columns
        .iter()
        .map(|(_, values)| match values.cast::<PyList>() {
            Ok(list) => Ok(Source::List(list)),
            Err(_) => ArrowIn::extract(values).map(Source::Arrow),
        })
        .collect::<PyResult<Vec<_>>>()?;
    let lengths: Vec<usize> = sources
        .iter()
        .map(|source| match source {
            Source::List(list) => list.len(),
            Source::Arrow(column) => column.len,
        })
        .collect();
    edits.set_keys(
        columns.iter().map(|(key, _)| key.as_str()),
        lengths.iter().copied().max().unwrap_or(0),
    );
    for (((key, _), source), rows) in columns.iter().zip(&sources).zip(lengths) {
        match source {
            Source::List(list) => edits.set_column(key, rows, |row, out| {
                let value = list.get_item(row)?;
                if value.is_none() {
                    return Ok(false);
                }
                encode_any(&value, out)?;
                Ok(true)
            })?,
            Source::Arrow(column) => edits.set_column(key, rows, |row, out| {
                if row == 0 {
                    out.reserve(column.buffer_bytes() + 4 * rows);
                }
                if !column.is_valid(row) {
                    return Ok(false);
                }
                encode_arrow(column, row, out)?;
                Ok(true)
            })?,
        }
    }
    for frame in rewrites {
        let (a, b, c, d): (
            Bound<'py, PyAny>,
            Bound<'py, PyAny>,
            Bound<'py, PyAny>,
            Bound<'py, PyAny>,
        ) = frame.extract()?;
        let frame = [
            ArrowIn::extract(&a)?,
            ArrowIn::extract(&b)?,
            ArrowIn::extract(&c)?,
            ArrowIn::extract(&d)?,
        ];
        edits.add_rewrites(&frame, &event_rows)?;
    }
    // Unknown fields holding a secret go first; positions count known fields only, so every
    // other rewrite still addresses the same value.
    let stripped;
    let raw = if edits.unknown.is_empty() {
        raw
    } else {
        let mut ranges = std::mem::take(&mut edits.unknown);
        stripped = py
            .detach(|| strip(raw, &mut ranges))
            .map_err(PyValueError::new_err)?;
        &stripped[..]
    };
    let measure = || -> WireResult<(Layout, usize)> {
        // Changed items are rebuilt into one buffer, sized up front for all of them (at most the
        // whole request, plus what the edits add) rather than grown and copied by doubling.
        let bound = raw.len() + edits.values_data.len() + edits.texts.len() + edits.added;
        let mut layout = Layout {
            built: Vec::with_capacity(bound),
            ..Layout::default()
        };
        let total = edits.measure(raw, logs, &mut layout)?;
        Ok((layout, total))
    };
    let (layout, total) = py.detach(measure).map_err(PyValueError::new_err)?;
    // Written straight into the bytes object: its size is known from the layout.
    bytes_written(py, total, |out| {
        emit(raw, &layout, out).map_err(PyValueError::new_err)
    })
}

#[cfg(test)]
#[path = "tests/rewrite_tests.rs"]
mod rewrite_tests;
