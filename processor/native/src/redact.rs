//! The redaction stage's per-batch work in one call: classify keys, apply key rules, scan values.
//!
//! `Redactor` mirrors the pure-polars path in processor/redact.py step by step (which values each
//! rule sees, first-rule-wins, candidate checks on distinct substrings, leftmost-longest
//! replacement); tests/test_redaction_native.py checks both give the same changes. It reads the
//! columns of `TelemetryBatch.string_values()` as Arrow buffers (no Python object per value) and
//! returns only what changed, as Arrow buffers again, plus the per-item summary.
//!
//! Candidate checks and HMACs stay Python callables: they run on a handful of distinct substrings
//! per batch, and are cached across batches, so porting them would buy little and risk drift.

use std::collections::HashMap;
use std::sync::Mutex;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use regex::bytes::Regex as BytesRegex;
use regex::{NoExpand, Regex};

/// Entries kept per cache between batches; past it the cache starts over (keys and candidates
/// repeat from batch to batch, an unbounded stream of new ones must not grow memory).
const CACHE_LIMIT: usize = 8192;

#[derive(Clone)]
enum Action {
    Mask(String),
    Hash,
    Drop,
    Truncate(usize),
}

impl Action {
    fn parse(kind: &str, mask: String, length: usize) -> PyResult<Self> {
        Ok(match kind {
            "mask" => Action::Mask(mask),
            "hash" => Action::Hash,
            "drop" => Action::Drop,
            "truncate" => Action::Truncate(length),
            other => return Err(PyValueError::new_err(format!("unknown action {other:?}"))),
        })
    }
}

struct KeyRule {
    regex: Regex,
    action: Action,
}

struct ValueRule {
    regex: Regex,
    check: Option<Py<PyAny>>,
    action: Action,
    /// The plain-mask path: every match replaced by the mask, no candidate step.
    mask_all: Option<String>,
}

#[derive(Clone, Copy)]
struct KeyClass {
    protected: bool,
    allowed: bool,
    key_rule: Option<usize>,
}

#[derive(Default)]
struct Caches {
    keys: HashMap<Vec<u8>, KeyClass>,
    /// (value rule, candidate) -> the part its check accepted.
    checks: HashMap<(usize, String), Option<String>>,
    hashes: HashMap<String, String>,
}

fn bounded<K, V>(map: &mut HashMap<K, V>) {
    if map.len() > CACHE_LIMIT {
        map.clear();
    }
}

/// An Arrow string array (string_view, large_string or string) read in place.
struct StrColumn {
    layout: StrLayout,
    offset: usize,
    len: usize,
    index: PyBuffer<i8>,
    data: Vec<Option<PyBuffer<i8>>>,
}

enum StrLayout {
    View,
    Large,
    Small,
}

fn bytes_of(buffer: &PyBuffer<i8>) -> &[u8] {
    // SAFETY: a pyarrow Buffer is one contiguous, immutable block that lives as long as the
    // PyBuffer view we hold on it.
    unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) }
}

fn optional_buffer(item: &Bound<'_, PyAny>) -> PyResult<Option<PyBuffer<i8>>> {
    if item.is_none() {
        Ok(None)
    } else {
        Ok(Some(PyBuffer::get(item)?))
    }
}

fn arrow_parts<'py>(array: &Bound<'py, PyAny>) -> PyResult<(String, usize, usize, Vec<Bound<'py, PyAny>>)> {
    let type_name = array.getattr("type")?.str()?.to_string();
    let offset: usize = array.getattr("offset")?.extract()?;
    let len = array.len()?;
    let buffers: Vec<Bound<'_, PyAny>> = array.call_method0("buffers")?.extract()?;
    if array.getattr("null_count")?.extract::<usize>()? != 0 {
        return Err(PyValueError::new_err("column has nulls"));
    }
    Ok((type_name, offset, len, buffers))
}

impl StrColumn {
    fn from_arrow(array: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (type_name, offset, len, buffers) = arrow_parts(array)?;
        let layout = match type_name.as_str() {
            "string_view" => StrLayout::View,
            "large_string" => StrLayout::Large,
            "string" => StrLayout::Small,
            other => return Err(PyValueError::new_err(format!("not a string column: {other}"))),
        };
        let index = PyBuffer::get(&buffers[1])?;
        let data = buffers[2..].iter().map(optional_buffer).collect::<PyResult<Vec<_>>>()?;
        let column = StrColumn { layout, offset, len, index, data };
        column.validate()?;
        Ok(column)
    }

    /// Bounds of every element checked once, so `get` cannot read outside the buffers.
    fn validate(&self) -> PyResult<()> {
        let index = bytes_of(&self.index);
        let bad = || PyValueError::new_err("malformed Arrow string buffers");
        let width = match self.layout {
            StrLayout::View => 16,
            StrLayout::Large => 8,
            StrLayout::Small => 4,
        };
        let extra = if matches!(self.layout, StrLayout::View) { 0 } else { 1 };
        if index.len() < (self.offset + self.len + extra) * width {
            return Err(bad());
        }
        for i in 0..self.len {
            match self.layout {
                StrLayout::View => {
                    let view = &index[(self.offset + i) * 16..(self.offset + i + 1) * 16];
                    let length = u32::from_le_bytes(view[0..4].try_into().unwrap()) as usize;
                    if length > 12 {
                        let buffer = u32::from_le_bytes(view[8..12].try_into().unwrap()) as usize;
                        let start = u32::from_le_bytes(view[12..16].try_into().unwrap()) as usize;
                        let data = self.data.get(buffer).and_then(|b| b.as_ref()).ok_or_else(bad)?;
                        if start + length > data.len_bytes() {
                            return Err(bad());
                        }
                    }
                }
                _ => {
                    let (start, end) = self.offsets(index, i);
                    let size = self.data.first().and_then(|b| b.as_ref()).map_or(0, |b| b.len_bytes());
                    if start > end || end > size {
                        return Err(bad());
                    }
                }
            }
        }
        Ok(())
    }

    fn offsets(&self, index: &[u8], i: usize) -> (usize, usize) {
        let at = |j: usize| match self.layout {
            StrLayout::Large => i64::from_le_bytes(index[j * 8..j * 8 + 8].try_into().unwrap()) as usize,
            _ => i32::from_le_bytes(index[j * 4..j * 4 + 4].try_into().unwrap()) as usize,
        };
        (at(self.offset + i), at(self.offset + i + 1))
    }

    fn get(&self, i: usize) -> &[u8] {
        let index = bytes_of(&self.index);
        match self.layout {
            StrLayout::View => {
                let at = (self.offset + i) * 16;
                let view = &index[at..at + 16];
                let length = u32::from_le_bytes(view[0..4].try_into().unwrap()) as usize;
                if length <= 12 {
                    &index[at + 4..at + 4 + length]
                } else {
                    let buffer = u32::from_le_bytes(view[8..12].try_into().unwrap()) as usize;
                    let start = u32::from_le_bytes(view[12..16].try_into().unwrap()) as usize;
                    &bytes_of(self.data[buffer].as_ref().unwrap())[start..start + length]
                }
            }
            _ => {
                let (start, end) = self.offsets(index, i);
                match &self.data[0] {
                    Some(data) => &bytes_of(data)[start..end],
                    None => b"",
                }
            }
        }
    }
}

/// An Arrow integer array read in place, widened to i64.
struct IntColumn {
    width: usize,
    signed: bool,
    offset: usize,
    len: usize,
    data: PyBuffer<i8>,
}

impl IntColumn {
    fn from_arrow(array: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (type_name, offset, len, buffers) = arrow_parts(array)?;
        let (width, signed) = match type_name.as_str() {
            "int64" => (8, true),
            "uint32" => (4, false),
            "int32" => (4, true),
            other => return Err(PyValueError::new_err(format!("unsupported integer column: {other}"))),
        };
        let data = PyBuffer::get(&buffers[1])?;
        if data.len_bytes() < (offset + len) * width {
            return Err(PyValueError::new_err("malformed Arrow integer buffer"));
        }
        Ok(IntColumn { width, signed, offset, len, data })
    }

    fn get(&self, i: usize) -> i64 {
        let at = (self.offset + i) * self.width;
        let raw = &bytes_of(&self.data)[at..at + self.width];
        match (self.width, self.signed) {
            (8, _) => i64::from_le_bytes(raw.try_into().unwrap()),
            (4, true) => i32::from_le_bytes(raw.try_into().unwrap()) as i64,
            _ => u32::from_le_bytes(raw.try_into().unwrap()) as i64,
        }
    }
}

fn to_str(bytes: &[u8]) -> PyResult<&str> {
    std::str::from_utf8(bytes).map_err(|_| PyValueError::new_err("value is not UTF-8"))
}

/// Builds an Arrow large_string column (offsets, data, validity bitmap or None when no nulls).
#[derive(Default)]
struct StringsOut {
    offsets: Vec<i64>,
    data: Vec<u8>,
    valid: Vec<bool>,
}

impl StringsOut {
    fn push(&mut self, value: Option<&[u8]>) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        if let Some(bytes) = value {
            self.data.extend_from_slice(bytes);
        }
        self.valid.push(value.is_some());
        self.offsets.push(self.data.len() as i64);
    }

    fn into_py(mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        let tuple = (
            self.valid.len(),
            bitmap(py, &self.valid),
            PyBytes::new(py, &le_i64(&self.offsets)),
            PyBytes::new(py, &self.data),
        );
        Ok(tuple.into_pyobject(py)?.into_any().unbind())
    }
}

fn le_i64(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Arrow validity bitmap (least significant bit first), or None when every entry is valid.
fn bitmap<'py>(py: Python<'py>, valid: &[bool]) -> Option<Bound<'py, PyBytes>> {
    if valid.iter().all(|v| *v) {
        return None;
    }
    let mut bits = vec![0u8; valid.len().div_ceil(8)];
    for (i, v) in valid.iter().enumerate() {
        if *v {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    Some(PyBytes::new(py, &bits))
}

fn char_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| (**b & 0xC0) != 0x80).count()
}

/// The first `chars` characters of UTF-8 `bytes`.
fn char_prefix(bytes: &[u8], chars: usize) -> &[u8] {
    let mut seen = 0;
    for (i, b) in bytes.iter().enumerate() {
        if (b & 0xC0) != 0x80 {
            if seen == chars {
                return &bytes[..i];
            }
            seen += 1;
        }
    }
    bytes
}

/// A value the value rules may change, as the rules see it in turn.
struct Hit {
    row: usize,
    current: String,
    dropped: bool,
    fired: Vec<usize>,
}

#[pyclass(frozen, module = "processor._otlp_native")]
pub struct Redactor {
    protected: Regex,
    allowed: Option<Regex>,
    allow_all: bool,
    key_rules: Vec<KeyRule>,
    value_rules: Vec<ValueRule>,
    prefilter: Option<BytesRegex>,
    redact_all_types: bool,
    hasher: Option<Py<PyAny>>,
    caches: Mutex<Caches>,
}

fn compile(pattern: &str) -> PyResult<Regex> {
    Regex::new(pattern).map_err(|e| PyValueError::new_err(format!("invalid regex {pattern:?}: {e}")))
}

impl Redactor {
    fn classify(&self, key: &[u8]) -> PyResult<KeyClass> {
        let key = to_str(key)?;
        Ok(KeyClass {
            protected: self.protected.is_match(key),
            allowed: self.allow_all || self.allowed.as_ref().is_some_and(|r| r.is_match(key)),
            key_rule: self.key_rules.iter().position(|rule| rule.regex.is_match(key)),
        })
    }

    fn hash(&self, py: Python<'_>, caches: &mut Caches, value: &str) -> PyResult<String> {
        if let Some(done) = caches.hashes.get(value) {
            return Ok(done.clone());
        }
        let hasher = self
            .hasher
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("a hash rule needs a hasher"))?;
        let hashed: String = hasher.call1(py, (value,))?.extract(py)?;
        bounded(&mut caches.hashes);
        caches.hashes.insert(value.to_owned(), hashed.clone());
        Ok(hashed)
    }

    fn check(&self, py: Python<'_>, caches: &mut Caches, rule: usize, candidate: &str) -> PyResult<Option<String>> {
        let Some(check) = &self.value_rules[rule].check else {
            return Ok(Some(candidate.to_owned()));
        };
        let cache_key = (rule, candidate.to_owned());
        if let Some(done) = caches.checks.get(&cache_key) {
            return Ok(done.clone());
        }
        let part: Option<String> = check.call1(py, (candidate,))?.extract(py)?;
        bounded(&mut caches.checks);
        caches.checks.insert(cache_key, part.clone());
        Ok(part)
    }

    /// Runs the value rules over `hits` (values the prefilter matched), in rule order.
    fn scan_values(&self, py: Python<'_>, caches: &mut Caches, hits: &mut [Hit]) -> PyResult<()> {
        // A rule that matches none of the values as received is skipped for the whole batch, as
        // the polars path does: then it cannot touch what an earlier rule wrote either.
        let possible: Vec<bool> = self
            .value_rules
            .iter()
            .map(|rule| hits.iter().any(|hit| rule.regex.is_match(&hit.current)))
            .collect();
        for (index, rule) in self.value_rules.iter().enumerate() {
            if !possible[index] {
                continue;
            }
            let matched: Vec<usize> = (0..hits.len())
                .filter(|&i| !hits[i].dropped && rule.regex.is_match(&hits[i].current))
                .collect();
            if matched.is_empty() {
                continue;
            }
            if let Some(mask) = &rule.mask_all {
                for &i in &matched {
                    let hit = &mut hits[i];
                    let replaced = rule.regex.replace_all(&hit.current, NoExpand(mask)).into_owned();
                    if replaced != hit.current {
                        hit.current = replaced;
                        hit.fired.push(index);
                    }
                }
                continue;
            }
            // Candidates are the distinct substrings matched in the whole batch; an accepted one
            // is then replaced wherever it occurs in a value the rule matched.
            let mut accepted: Vec<(String, String)> = Vec::new();
            let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
            let mut candidates: Vec<String> = Vec::new();
            for &i in &matched {
                for found in rule.regex.find_iter(&hits[i].current) {
                    if seen.insert(found.as_str()) {
                        candidates.push(found.as_str().to_owned());
                    }
                }
            }
            drop(seen);
            for candidate in &candidates {
                let Some(part) = self.check(py, caches, index, candidate)? else {
                    continue;
                };
                if part.is_empty() || accepted.iter().any(|(p, _)| *p == part) {
                    continue;
                }
                let replacement = match &rule.action {
                    Action::Hash => self.hash(py, caches, &part)?,
                    Action::Mask(mask) => mask.clone(),
                    _ => String::new(),
                };
                accepted.push((part, replacement));
            }
            if accepted.is_empty() {
                continue;
            }
            // Longest first with leftmost-first matching: a candidate is never cut by a shorter one.
            accepted.sort_by_key(|(part, _)| std::cmp::Reverse(part.len()));
            let automaton: AhoCorasick = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostFirst)
                .build(accepted.iter().map(|(p, _)| p.as_str()))
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            let replacements: Vec<&str> = accepted.iter().map(|(_, r)| r.as_str()).collect();
            for &i in &matched {
                let hit = &mut hits[i];
                if !automaton.is_match(&hit.current) {
                    continue;
                }
                if matches!(rule.action, Action::Drop) {
                    hit.dropped = true;
                    hit.fired.push(index);
                    continue;
                }
                let replaced = automaton.replace_all(&hit.current, &replacements);
                if replaced != hit.current {
                    hit.current = replaced;
                    hit.fired.push(index);
                }
            }
        }
        Ok(())
    }
}

/// Where a changed value's rewrite and summary come from.
struct Changes {
    rows: Vec<usize>,
    new_values: StringsOut,
    /// Rewrites counted per rule slot: key rules, then value rules, then the allow-list drop.
    counts: Vec<u64>,
}

impl Changes {
    fn push(&mut self, row: usize, new_value: Option<&[u8]>, slot: usize) {
        self.rows.push(row);
        self.new_values.push(new_value);
        self.counts[slot] += 1;
    }
}

#[pymethods]
impl Redactor {
    /// key_rules: [(anchored key regex, action, mask, length)]; value_rules: [(pattern, check
    /// callable or None, action, mask)]; allowed: None matches no key (unless allow_all);
    /// hasher: value -> keyed hash (None when no rule hashes).
    #[new]
    #[pyo3(signature = (protected, allowed, allow_all, key_rules, value_rules, redact_all_types, hasher))]
    fn new(
        protected: &str,
        allowed: Option<&str>,
        allow_all: bool,
        key_rules: Vec<(String, String, String, usize)>,
        value_rules: Vec<(String, Option<Py<PyAny>>, String, String)>,
        redact_all_types: bool,
        hasher: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let key_rules = key_rules
            .into_iter()
            .map(|(regex, kind, mask, length)| {
                Ok(KeyRule { regex: compile(&regex)?, action: Action::parse(&kind, mask, length)? })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let prefilter = if value_rules.is_empty() {
            None
        } else {
            let combined: Vec<String> = value_rules.iter().map(|(p, ..)| format!("(?:{p})")).collect();
            Some(
                BytesRegex::new(&combined.join("|"))
                    .map_err(|e| PyValueError::new_err(format!("invalid combined regex: {e}")))?,
            )
        };
        let value_rules = value_rules
            .into_iter()
            .map(|(pattern, check, kind, mask)| {
                let action = Action::parse(&kind, mask, 0)?;
                let mask_all = match (&action, &check) {
                    (Action::Mask(mask), None) => Some(mask.clone()),
                    _ => None,
                };
                Ok(ValueRule { regex: compile(&pattern)?, check, action, mask_all })
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Redactor {
            protected: compile(protected)?,
            allowed: allowed.map(compile).transpose()?,
            allow_all,
            key_rules,
            value_rules,
            prefilter,
            redact_all_types,
            hasher,
            caches: Mutex::new(Caches::default()),
        })
    }

    /// One batch: the columns of `string_values()` (scope, key, value, kind or None when every
    /// value is a string, owner, position, row) and the `_resource` column of the items, as
    /// pyarrow arrays. Returns None when nothing changed, else (rewrites, counts, summary):
    /// rewrites = (scope, owner, position, new_value) buffers; counts = [(rule slot, count)];
    /// summary = None, or (count buffers, keys buffers or None) for summary level 1 (info) or 2.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (scope, key, value, kind, owner, position, row, item_resource, summary))]
    fn redact(
        &self,
        py: Python<'_>,
        scope: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        kind: Option<&Bound<'_, PyAny>>,
        owner: &Bound<'_, PyAny>,
        position: &Bound<'_, PyAny>,
        row: &Bound<'_, PyAny>,
        item_resource: &Bound<'_, PyAny>,
        summary: u8,
    ) -> PyResult<Option<Py<PyAny>>> {
        let scope = StrColumn::from_arrow(scope)?;
        let key = StrColumn::from_arrow(key)?;
        let value = StrColumn::from_arrow(value)?;
        let kind = kind.map(StrColumn::from_arrow).transpose()?;
        let owner = IntColumn::from_arrow(owner)?;
        let position = IntColumn::from_arrow(position)?;
        let row = IntColumn::from_arrow(row)?;
        let item_resource = IntColumn::from_arrow(item_resource)?;
        let n = value.len;
        let lengths = [scope.len, key.len, owner.len, position.len, row.len, kind.as_ref().map_or(n, |k| k.len)];
        if lengths.iter().any(|len| *len != n) {
            return Err(PyValueError::new_err("columns of different lengths"));
        }
        // Taken out for the batch and put back after: a check or hash callable may let another
        // thread run, which must not find the lock held.
        let mut caches = std::mem::take(&mut *self.caches.lock().unwrap());
        let result = self.changes(py, &mut caches, &scope, &key, &value, kind.as_ref());
        *self.caches.lock().unwrap() = caches;
        let changes = result?;
        if changes.rows.is_empty() {
            return Ok(None);
        }
        let mut scopes = StringsOut::default();
        let mut owners = Vec::with_capacity(changes.rows.len());
        let mut positions = Vec::with_capacity(changes.rows.len());
        for &i in &changes.rows {
            scopes.push(Some(scope.get(i)));
            owners.push(owner.get(i));
            positions.push(position.get(i));
        }
        let rewrites = (
            scopes.into_py(py)?,
            PyBytes::new(py, &le_i64(&owners)),
            PyBytes::new(py, &le_i64(&positions)),
            changes.new_values.into_py(py)?,
        );
        let counts = PyList::empty(py);
        for (slot, count) in changes.counts.iter().enumerate() {
            if *count > 0 {
                counts.append((slot, *count))?;
            }
        }
        let summary = if summary == 0 {
            None
        } else {
            Some(summarise(py, &changes.rows, &scope, &key, &owner, &row, &item_resource, summary >= 2)?)
        };
        Ok(Some((rewrites, counts, summary).into_pyobject(py)?.into_any().unbind()))
    }
}

impl Redactor {
    fn changes(
        &self,
        py: Python<'_>,
        caches: &mut Caches,
        scope: &StrColumn,
        key: &StrColumn,
        value: &StrColumn,
        kind: Option<&StrColumn>,
    ) -> PyResult<Changes> {
        let key_slots = self.key_rules.len();
        let not_allowed_slot = key_slots + self.value_rules.len();
        let mut changes = Changes {
            rows: Vec::new(),
            new_values: StringsOut::default(),
            counts: vec![0; not_allowed_slot + 1],
        };
        let mut hits: Vec<Hit> = Vec::new();
        for i in 0..value.len {
            let key_bytes = key.get(i);
            let class = match caches.keys.get(key_bytes) {
                Some(class) => *class,
                None => {
                    let class = self.classify(key_bytes)?;
                    bounded(&mut caches.keys);
                    caches.keys.insert(key_bytes.to_vec(), class);
                    class
                }
            };
            if class.protected {
                continue;
            }
            let scope_bytes = scope.get(i);
            if !class.allowed && (scope_bytes == b"attribute" || scope_bytes == b"event") {
                changes.push(i, None, not_allowed_slot);
                continue;
            }
            let text = value.get(i);
            let kind_bytes: &[u8] = kind.map_or(b"string_value", |k| k.get(i));
            match class.key_rule {
                Some(rule) if scope_bytes != b"body" => {
                    match &self.key_rules[rule].action {
                        Action::Mask(mask) => {
                            if text != mask.as_bytes() || kind_bytes != b"string_value" {
                                changes.push(i, Some(mask.as_bytes()), rule);
                            }
                        }
                        Action::Drop => changes.push(i, None, rule),
                        Action::Truncate(length) => {
                            if char_count(text) > *length {
                                changes.push(i, Some(char_prefix(text, *length)), rule);
                            }
                        }
                        Action::Hash => {
                            let hashed = self.hash(py, caches, to_str(text)?)?;
                            changes.push(i, Some(hashed.as_bytes()), rule);
                        }
                    }
                    continue;
                }
                _ => {}
            }
            let scanned = self.redact_all_types
                || matches!(kind_bytes, b"string_value" | b"array_value" | b"kvlist_value");
            if scanned && self.prefilter.as_ref().is_some_and(|p| p.is_match(text)) {
                hits.push(Hit { row: i, current: to_str(text)?.to_owned(), dropped: false, fired: Vec::new() });
            }
        }
        if !hits.is_empty() {
            self.scan_values(py, caches, &mut hits)?;
        }
        for hit in &hits {
            if hit.fired.is_empty() {
                continue;
            }
            let new_value = if hit.dropped { None } else { Some(hit.current.as_bytes()) };
            // One rewrite per value; every rule that changed it is counted.
            changes.rows.push(hit.row);
            changes.new_values.push(new_value);
            for rule in &hit.fired {
                changes.counts[key_slots + rule] += 1;
            }
        }
        Ok(changes)
    }
}

/// genops.redaction.count (and .keys when `keys`) per item: the values changed on the item, its
/// events and its resource (a resource value is shared by every item under that resource).
#[allow(clippy::too_many_arguments)]
fn summarise(
    py: Python<'_>,
    rows: &[usize],
    scope: &StrColumn,
    key: &StrColumn,
    owner: &IntColumn,
    row: &IntColumn,
    item_resource: &IntColumn,
    keys: bool,
) -> PyResult<Py<PyAny>> {
    let items = item_resource.len;
    let mut per_item: Vec<Vec<usize>> = vec![Vec::new(); items];
    let mut by_resource: Option<HashMap<i64, Vec<usize>>> = None;
    for (change, &i) in rows.iter().enumerate() {
        if scope.get(i) == b"resource" {
            let by_resource = by_resource.get_or_insert_with(|| {
                let mut map: HashMap<i64, Vec<usize>> = HashMap::new();
                for item in 0..items {
                    map.entry(item_resource.get(item)).or_default().push(item);
                }
                map
            });
            for &item in by_resource.get(&owner.get(i)).map_or(&[][..], |v| &v[..]) {
                per_item[item].push(change);
            }
        } else {
            let item = row.get(i);
            if item >= 0 && (item as usize) < items {
                per_item[item as usize].push(change);
            }
        }
    }
    let label = |change: usize| -> Vec<u8> {
        let i = rows[change];
        let (scope_bytes, key_bytes) = (scope.get(i), key.get(i));
        match scope_bytes {
            b"attribute" => key_bytes.to_vec(),
            b"body" => b"body".to_vec(),
            _ => [scope_bytes, b":", key_bytes].concat(),
        }
    };
    let counts: Vec<i64> = per_item.iter().map(|changes| changes.len() as i64).collect();
    let valid: Vec<bool> = counts.iter().map(|c| *c > 0).collect();
    let count = (items, bitmap(py, &valid), PyBytes::new(py, &le_i64(&counts)));
    let key_lists = if keys {
        let mut offsets: Vec<i64> = Vec::with_capacity(items + 1);
        offsets.push(0);
        let mut labels = StringsOut::default();
        for changes in &per_item {
            let mut names: Vec<Vec<u8>> = changes.iter().map(|c| label(*c)).collect();
            names.sort_unstable();
            names.dedup();
            for name in &names {
                labels.push(Some(name));
            }
            offsets.push(offsets.last().unwrap() + names.len() as i64);
        }
        Some((items, bitmap(py, &valid), PyBytes::new(py, &le_i64(&offsets)), labels.into_py(py)?))
    } else {
        None
    };
    Ok((count, key_lists).into_pyobject(py)?.into_any().unbind())
}
