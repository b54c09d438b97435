//! Writes stage changes into an OTLP export request without decoding it into messages.
//!
//! Items (spans or log records) nobody changed are copied as the bytes they arrived as; a changed
//! item is re-emitted field by field with its attribute values replaced, dropped or appended; only
//! the length prefixes of its enclosing messages are recomputed. The result is semantically the
//! same request the Python encoder (processor/encode.py) produces through the lean protobuf view;
//! tests/test_native_encode.py checks both agree.

use std::ops::Range;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::arrow::{ArrowIn, Kind};
use crate::fasthash::{FastMap, FastSet, KeyBytes};
use crate::wire::{
    len_field_size, put_len, put_tag, put_varint, Reader, WireResult, I64, LEN, VARINT,
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
/// New string value (a range of `Edits::texts`), or None to drop the attribute.
type Replacement = Option<Range<usize>>;

#[derive(Default)]
struct Edits<'k> {
    keys: Vec<&'k [u8]>,
    key_index: FastMap<KeyBytes<'k>, usize>,
    /// column -> row -> AnyValue content as (start, end) in `values_data`; start == end: none
    /// (no AnyValue encodes to nothing).
    values: Vec<Vec<(u32, u32)>>,
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

    /// Later values for a key overwrite earlier ones row by row, as when applied in turn.
    fn set_column(
        &mut self,
        key: &'k str,
        rows: usize,
        mut encode: impl FnMut(usize, &mut Vec<u8>) -> PyResult<bool>,
    ) -> PyResult<()> {
        let key = key.as_bytes();
        let column = match self.key_index.get(&KeyBytes(key)) {
            Some(&column) => column,
            None => {
                let column = self.keys.len();
                self.key_index.insert(KeyBytes(key), column);
                self.keys.push(key);
                self.values.push(vec![(0, 0); rows]);
                column
            }
        };
        if self.values[column].len() < rows {
            self.values[column].resize(rows, (0, 0));
        }
        for row in 0..rows {
            let start = self.values_data.len();
            if encode(row, &mut self.values_data)? {
                let end = u32::try_from(self.values_data.len())
                    .map_err(|_| PyValueError::new_err("set_attributes values over 4 GiB"))?;
                self.values[column][row] = (start as u32, end);
                self.touch_row(row);
            }
        }
        Ok(())
    }

    #[inline]
    fn value(&self, column: usize, row: usize) -> Option<&[u8]> {
        match self.values[column].get(row) {
            Some(&(start, end)) if start != end => {
                Some(&self.values_data[start as usize..end as usize])
            }
            _ => None,
        }
    }

    fn item_attribute(
        &self,
        row: usize,
        position: usize,
        kv: &[u8],
        done: &mut [bool],
        out: &mut Vec<u8>,
        field: u32,
    ) -> WireResult<()> {
        let rewrite = if self.rewritten_rows.get(row).copied().unwrap_or(false) {
            self.item.get(&(row, position))
        } else {
            None
        };
        if let Some(None) = rewrite {
            // Dropped: a stage setting the same key appends it anew at the end, as in Python.
            return Ok(());
        }
        let key = key_of(kv)?;
        // A stage's set_attributes applies after the rewrites, as in the Python encoder.
        if let Some(&column) = self.key_index.get(&KeyBytes(key)) {
            if !done[column] {
                if let Some(value) = self.value(column, row) {
                    done[column] = true;
                    put_key_value(out, field, key, value);
                    return Ok(());
                }
            }
        }
        match rewrite {
            None => put_len(out, field, kv),
            Some(None) => {}
            Some(Some(text)) => put_key_string(out, field, key, self.text(text)),
        }
        Ok(())
    }

    /// A changed item's new content, appended to `built`.
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
        let mut position = 0;
        let mut reader = Reader::new(buf);
        while !reader.done() {
            let start = reader.pos;
            let (field, wire) = reader.tag()?;
            if field == attribute_field && wire == LEN {
                let kv = reader.bytes()?;
                self.item_attribute(row, position, kv, done, out, attribute_field)?;
                position += 1;
            } else if !logs && field == 11 && wire == LEN {
                let event = reader.bytes()?;
                let index = layout.events;
                layout.events += 1;
                if self.touched_events.contains(&index) {
                    put_len(
                        out,
                        11,
                        &self.rewrite_attributes(event, 3, index, &self.event)?,
                    );
                } else {
                    put_len(out, 11, event);
                }
            } else if logs && field == 5 && wire == LEN && self.body.contains_key(&row) {
                reader.bytes()?;
                if let Some(Some(text)) = self.body.get(&row) {
                    put_len(out, 5, &string_any(self.text(text)));
                }
            } else {
                reader.skip(wire)?;
                out.extend_from_slice(&buf[start..reader.pos]);
            }
        }
        for (column, key) in self.keys.iter().enumerate() {
            if !done[column] {
                if let Some(value) = self.value(column, row) {
                    put_key_value(out, attribute_field, key, value);
                }
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
                let rebuilt =
                    self.rewrite_attributes(reader.bytes()?, 1, resource_index, &self.resource)?;
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
            if field == 2 && wire == LEN {
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

    /// A message whose attributes (repeated KeyValue `field`) get value rewrites by position.
    fn rewrite_attributes(
        &self,
        buf: &[u8],
        field_number: u32,
        owner: usize,
        rewrites: &FastMap<Address, Replacement>,
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
                        put_key_string(&mut out, field, key_of(kv)?, self.text(text))
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

    /// One rewrites frame as (scope, owner, position, new_value) Arrow columns; a later row for
    /// the same value wins, as the Python encoder keeps the last.
    fn add_rewrites(&mut self, frame: &[ArrowIn; 4], event_rows: &[usize]) -> PyResult<()> {
        let [scopes, owners, positions, new_values] = frame;
        self.item.reserve(scopes.len);
        for i in 0..scopes.len {
            let owner = usize::try_from(owners.i64_at(i))
                .map_err(|_| PyValueError::new_err("negative rewrite owner"))?;
            let position = positions.i64_at(i).max(0) as usize;
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
    scope_sizes: Vec<usize>,
    group_sizes: Vec<usize>,
    /// Span events met so far (their index addresses event rewrites).
    events: usize,
    /// Scratch: which set_attributes columns the item being built has written.
    done: Vec<bool>,
}

/// Writes into the Python bytes object's buffer, sized by the layout. A write past its end
/// (measure and emit disagreeing: a bug) is recorded, not a panic.
struct Cursor<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflow: bool,
}

impl Cursor<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.pos..self.pos + bytes.len()) {
            Some(target) => target.copy_from_slice(bytes),
            None => self.overflow = true,
        }
        self.pos += bytes.len();
    }

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
fn emit(raw: &[u8], layout: &Layout, out: &mut Cursor<'_>) -> WireResult<()> {
    let (mut group, mut scope, mut item) = (0, 0, 0);
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
                    if field == 2 && wire == LEN {
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
        if field == wanted {
            count += 1;
        }
        reader.skip(wire)?;
    }
    Ok(count)
}

/// Applies changes to a serialised trace (logs=False) or logs export request.
///
/// columns: [(key, values)] in stage order, values one per item (null: leave the item alone),
/// either an Arrow column (see arrow.rs `ArrowIn`) or a Python list; a later column for the same
/// key wins where it has a value. Values are written over an attribute of the same key or
/// appended. rewrites: frames of (scope, owner, position, new_value) Arrow columns addressing
/// values as decode.string_values() does (scope attribute/event/resource/body; a null new_value
/// drops the attribute). event_rows: the span row of each event, for event rewrites. events:
/// (row, serialised Span.Event) to append to spans.
#[pyfunction]
#[pyo3(signature = (raw, columns, rewrites, event_rows, events=Vec::new(), logs=false))]
pub fn rewrite<'py>(
    py: Python<'py>,
    raw: &[u8],
    columns: Vec<(String, Bound<'py, PyAny>)>,
    rewrites: Vec<Bound<'py, PyAny>>,
    event_rows: Vec<usize>,
    events: Vec<(usize, Vec<u8>)>,
    logs: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut edits = Edits::default();
    if logs && !events.is_empty() {
        return Err(PyValueError::new_err("log records have no events"));
    }
    for (row, event) in events {
        edits.new_events.entry(row).or_default().push(event);
        edits.touch_row(row);
    }
    for (key, values) in &columns {
        if let Ok(list) = values.cast::<PyList>() {
            edits.set_column(key, list.len(), |row, out| {
                let value = list.get_item(row)?;
                if value.is_none() {
                    return Ok(false);
                }
                encode_any(&value, out)?;
                Ok(true)
            })?;
        } else {
            let column = ArrowIn::extract(values)?;
            edits.set_column(key, column.len, |row, out| {
                if !column.is_valid(row) {
                    return Ok(false);
                }
                encode_arrow(&column, row, out)?;
                Ok(true)
            })?;
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
    let measure = || -> WireResult<(Layout, usize)> {
        // Changed items are rebuilt into one buffer: sized for most of the request up front
        // rather than grown (and copied) by doubling.
        let mut layout = Layout {
            built: Vec::with_capacity(raw.len() + raw.len() / 4),
            ..Layout::default()
        };
        let total = edits.measure(raw, logs, &mut layout)?;
        Ok((layout, total))
    };
    let (layout, total) = py.detach(measure).map_err(PyValueError::new_err)?;
    // Written straight into the bytes object: its size is known from the layout.
    PyBytes::new_with(py, total, |buf| {
        let mut out = Cursor {
            buf,
            pos: 0,
            overflow: false,
        };
        emit(raw, &layout, &mut out).map_err(PyValueError::new_err)?;
        if out.overflow || out.pos != total {
            return Err(PyValueError::new_err(
                "rewritten request does not match its measured size",
            ));
        }
        Ok(())
    })
}
