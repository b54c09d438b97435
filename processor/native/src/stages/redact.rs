//! The redaction stage's per-batch work in one call: classify keys, apply key rules, scan values.
//!
//! `Redactor` mirrors the pure-polars path in processor/stages/redaction/stage.py step by step (which values each
//! rule sees, first-rule-wins, candidate checks on distinct substrings, leftmost-longest
//! replacement); tests/stages/redaction/test_redaction_native.py checks both give the same changes. It reads the
//! columns of `TelemetryBatch.string_values()` as Arrow buffers (no Python object per value) and
//! returns only what changed, as Arrow buffers again, plus the per-item summary.
//!
//! The built-in candidate checks run in Rust (detect.rs); other checks (IPv6, whose parsing rules
//! are Python's `ipaddress`) and HMACs stay Python callables, run once per distinct substring and
//! cached across batches (bounded).

use std::collections::{HashMap, HashSet};
use std::sync::{mpsc, Mutex};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use regex::bytes::RegexSet;
use regex::{NoExpand, Regex};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::otlp::arrow::View;
use crate::otlp::scan::{FlatValues, Needed, ScannedValues, ValuesFilter};
use crate::stages::detect::Check;
use crate::stages::sanitize::{self, Kind as SanitizerKind};

/// Entries kept per cache between batches; past it the cache starts over (keys and candidates
/// repeat from batch to batch, an unbounded stream of new ones must not grow memory).
const CACHE_LIMIT: usize = 8192;
/// Short values no value rule matches are remembered: most values are such (status words, model
/// names, routes), they repeat from batch to batch, and a lookup costs less than running the rules.
/// It is the one cache that sees every value, hence its own, larger bound. Values a rule matches
/// are not kept: they may be secrets, and they are few.
const CLEAN_MAX_LEN: usize = 128;
const CLEAN_LIMIT: usize = 65536;

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
    /// The check in Rust, when it is a built-in one (the Python function stays for other input).
    native_check: Option<Check>,
    action: Action,
    /// The plain-mask path: every match replaced by the mask, no candidate step.
    mask_all: Option<String>,
}

/// (pattern, check callable or None, name of its Rust version or None, action, mask).
type ValueRuleSpec = (String, Option<Py<PyAny>>, Option<String>, String, String);
/// A resource condition: (attribute key, accepted values).
type ResourceSpec = Vec<(String, Vec<String>)>;
/// A rule's `when`/`skip` (processor/stages/redaction/rules.py `RuleConditions`): when keys, skip
/// keys (anchored regexes or None), when resource, skip resource, when attributes, skip attributes
/// (of the item a value belongs to).
type ConditionSpec = (
    Option<String>,
    Option<String>,
    ResourceSpec,
    ResourceSpec,
    ResourceSpec,
    ResourceSpec,
);

/// Where a rule acts; resource conditions name attributes by their index in `condition_keys`,
/// item (span, log record, data point) conditions by their index in `item_keys`.
struct Conditions {
    when_keys: Option<Regex>,
    skip_keys: Option<Regex>,
    when_resource: Vec<(usize, Vec<String>)>,
    skip_resource: Vec<(usize, Vec<String>)>,
    when_item: Vec<(usize, Vec<String>)>,
    skip_item: Vec<(usize, Vec<String>)>,
}

impl Conditions {
    fn allows_key(&self, key: &str) -> bool {
        self.when_keys.as_ref().is_none_or(|r| r.is_match(key))
            && !self.skip_keys.as_ref().is_some_and(|r| r.is_match(key))
    }

    /// Whether a resource with these condition attribute values (by condition key) skips the rule.
    fn skips_resource(&self, found: &[Vec<&[u8]>]) -> bool {
        let holds = |(key, accepted): &(usize, Vec<String>)| {
            found[*key]
                .iter()
                .any(|value| accepted.iter().any(|a| a.as_bytes() == *value))
        };
        !self.when_resource.iter().all(holds) || self.skip_resource.iter().any(holds)
    }

    /// Whether an item with these attribute values (by item key) skips the rule.
    fn skips_item(&self, found: &[Vec<&[u8]>]) -> bool {
        let holds = |(key, accepted): &(usize, Vec<String>)| {
            found[*key]
                .iter()
                .any(|value| accepted.iter().any(|a| a.as_bytes() == *value))
        };
        !self.when_item.iter().all(holds) || self.skip_item.iter().any(holds)
    }
}

/// The rules a resource's conditions skip: per rule slot, and as a mask of value rules.
struct ResourceSkip {
    slots: Vec<bool>,
    values: RuleMask,
}

struct SanitizerRule {
    keys: Regex,
    kind: SanitizerKind,
    mask: String,
    /// Also span names (a database span's as SQL, URLs inside any other's).
    span_names: bool,
}

impl SanitizerRule {
    fn run(&self, text: &str, double_quoted: bool) -> String {
        match self.kind {
            SanitizerKind::UrlQuery => sanitize::url_query(text, &self.mask),
            SanitizerKind::Sql => sanitize::sql(text, double_quoted),
        }
    }
}

/// Not `Copy`: `value_skip` is a growable mask (empty, as for most keys, it holds no allocation,
/// so a clone costs nothing).
#[derive(Clone)]
struct KeyClass {
    protected: bool,
    allowed: bool,
    key_rule: Option<usize>,
    /// Value rules whose key conditions leave this key alone.
    value_skip: RuleMask,
    /// The sanitiser that reads this key's string values (index into `sanitizers`).
    sanitizer: Option<usize>,
}

#[derive(Default)]
struct Caches {
    keys: FxHashMap<Box<[u8]>, KeyClass>,
    clean: FxHashSet<Box<[u8]>>,
    /// The clean values of at most 12 bytes, as `short_key`s: no pointer to follow, no memcmp.
    clean_short: FxHashSet<u128>,
    /// Per value rule: candidate -> the part its check accepted.
    checks: Vec<FxHashMap<String, Option<String>>>,
    hashes: FxHashMap<String, String>,
}

fn bounded<K, V, S>(map: &mut HashMap<K, V, S>, limit: usize) {
    if map.len() > limit {
        map.clear();
    }
}

fn bounded_set<K, S>(set: &mut HashSet<K, S>, limit: usize) {
    if set.len() > limit {
        set.clear();
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

#[derive(Clone, Copy)]
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

fn arrow_parts<'py>(
    array: &Bound<'py, PyAny>,
) -> PyResult<(String, usize, usize, Vec<Bound<'py, PyAny>>)> {
    let type_name = array.getattr("type")?.str()?.to_string();
    let offset: usize = array.getattr("offset")?.extract()?;
    let len = array.len()?;
    let buffers: Vec<Bound<'py, PyAny>> = array.call_method0("buffers")?.extract()?;
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
            other => {
                return Err(PyValueError::new_err(format!(
                    "not a string column: {other}"
                )))
            }
        };
        let index = PyBuffer::get(&buffers[1])?;
        let data = buffers[2..]
            .iter()
            .map(optional_buffer)
            .collect::<PyResult<Vec<_>>>()?;
        Ok(StrColumn {
            layout,
            offset,
            len,
            index,
            data,
        })
    }

    /// The column's buffers as slices. Elements are read with checked slicing: malformed buffers
    /// (which polars never hands out) make a call fail, never read outside them.
    fn strs(&self) -> PyResult<Strs<'_>> {
        let strs = Strs {
            layout: self.layout,
            offset: self.offset,
            len: self.len,
            index: bytes_of(&self.index),
            data: self
                .data
                .iter()
                .map(|b| b.as_ref().map_or(&b""[..], bytes_of))
                .collect(),
        };
        strs.validate()?;
        Ok(strs)
    }
}

struct Strs<'a> {
    layout: StrLayout,
    offset: usize,
    len: usize,
    index: &'a [u8],
    data: Vec<&'a [u8]>,
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
}

impl<'a> Strs<'a> {
    fn validate(&self) -> PyResult<()> {
        let (width, extra) = match self.layout {
            StrLayout::View => (16, 0),
            StrLayout::Large => (8, 1),
            StrLayout::Small => (4, 1),
        };
        if self.index.len() < (self.offset + self.len + extra) * width {
            return Err(PyValueError::new_err("malformed Arrow string buffers"));
        }
        Ok(())
    }

    /// (data buffer, start, end) of element i; buffer usize::MAX: inline in a view.
    #[inline(always)]
    fn bounds(&self, i: usize) -> (usize, usize, usize) {
        let j = self.offset + i;
        match self.layout {
            StrLayout::View => {
                let length = u32_at(self.index, j * 16);
                if length <= 12 {
                    (usize::MAX, j * 16 + 4, j * 16 + 4 + length)
                } else {
                    let start = u32_at(self.index, j * 16 + 12);
                    (u32_at(self.index, j * 16 + 8), start, start + length)
                }
            }
            StrLayout::Large => {
                let at = |k: usize| {
                    i64::from_le_bytes(self.index[k * 8..k * 8 + 8].try_into().unwrap()) as usize
                };
                (0, at(j), at(j + 1))
            }
            StrLayout::Small => {
                let at = |k: usize| {
                    i32::from_le_bytes(self.index[k * 4..k * 4 + 4].try_into().unwrap()) as usize
                };
                (0, at(j), at(j + 1))
            }
        }
    }

    /// Element i's 16-byte view in a view-layout column (None for the other layouts). Equal
    /// views are equal strings: an inline one holds the string, another points at the same bytes.
    #[inline(always)]
    fn view(&self, i: usize) -> Option<u128> {
        match self.layout {
            StrLayout::View => {
                let at = (self.offset + i) * 16;
                Some(u128::from_le_bytes(
                    self.index[at..at + 16].try_into().unwrap(),
                ))
            }
            _ => None,
        }
    }

    /// Asks the CPU to start loading element i's bytes (a hint only; nothing when out of range).
    #[inline(always)]
    fn prefetch(&self, i: usize) {
        if i >= self.len {
            return;
        }
        let (buffer, start, _) = self.bounds(i);
        if let Some(data) = self.data.get(buffer) {
            if let Some(byte) = data.get(start) {
                prefetch(byte);
            }
        }
    }

    #[inline(always)]
    fn get(&self, i: usize) -> &'a [u8] {
        let (buffer, start, end) = self.bounds(i);
        if buffer == usize::MAX {
            &self.index[start..end]
        } else {
            &self.data[buffer][start..end]
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
            other => {
                return Err(PyValueError::new_err(format!(
                    "unsupported integer column: {other}"
                )))
            }
        };
        let data = PyBuffer::get(&buffers[1])?;
        if data.len_bytes() < (offset + len) * width {
            return Err(PyValueError::new_err("malformed Arrow integer buffer"));
        }
        Ok(IntColumn {
            width,
            signed,
            offset,
            len,
            data,
        })
    }

    fn ints(&self) -> Ints<'_> {
        Ints::Arrow {
            bytes: bytes_of(&self.data),
            width: self.width,
            signed: self.signed,
            offset: self.offset,
            len: self.len,
        }
    }
}

/// Integers read as i64: an Arrow buffer (validated by `IntColumn::from_arrow`) or the scan's own.
#[derive(Clone, Copy)]
enum Ints<'a> {
    Arrow {
        bytes: &'a [u8],
        width: usize,
        signed: bool,
        offset: usize,
        len: usize,
    },
    Native(&'a [i64]),
}

impl Ints<'_> {
    fn len(&self) -> usize {
        match self {
            Ints::Arrow { len, .. } => *len,
            Ints::Native(values) => values.len(),
        }
    }

    #[inline(always)]
    fn get(&self, i: usize) -> i64 {
        match *self {
            Ints::Native(values) => values[i],
            Ints::Arrow {
                bytes,
                width,
                signed,
                offset,
                ..
            } => {
                let at = (offset + i) * width;
                let raw = &bytes[at..at + width];
                match (width, signed) {
                    (8, _) => i64::from_le_bytes(raw.try_into().unwrap()),
                    (4, true) => i32::from_le_bytes(raw.try_into().unwrap()) as i64,
                    _ => u32::from_le_bytes(raw.try_into().unwrap()) as i64,
                }
            }
        }
    }
}

#[inline(always)]
fn prefetch(byte: &u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing and faults on nothing.
    unsafe {
        std::arch::x86_64::_mm_prefetch(
            byte as *const u8 as *const i8,
            std::arch::x86_64::_MM_HINT_T0,
        );
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
    /// Room for `values` values of `bytes` bytes in all.
    fn with_capacity(values: usize, bytes: usize) -> Self {
        StringsOut {
            offsets: Vec::with_capacity(values + 1),
            data: Vec::with_capacity(bytes),
            valid: Vec::with_capacity(values),
        }
    }

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

    fn into_py(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.to_py(py)
    }

    fn to_py(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let offsets: &[i64] = if self.offsets.is_empty() {
            &[0]
        } else {
            &self.offsets
        };
        let tuple = (
            self.valid.len(),
            bitmap(py, &self.valid),
            PyBytes::new(py, &le_i64(offsets)),
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

/// A string of at most 12 bytes as one number (its length, then its bytes, zero-padded: the
/// inline view layout); None for a longer one.
#[inline(always)]
fn short_key(text: &[u8]) -> Option<u128> {
    if text.len() > 12 {
        return None;
    }
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&(text.len() as u32).to_le_bytes());
    bytes[4..4 + text.len()].copy_from_slice(text);
    Some(u128::from_le_bytes(bytes))
}

/// Which value rules match a value, one bit per rule, any number of rules (a value with no bit
/// set is not scanned further). Empty, it holds no words: most values match no rule, and those
/// cost no allocation.
#[derive(Clone, Default)]
struct RuleMask(Vec<u64>);

impl RuleMask {
    fn set(&mut self, rule: usize) {
        let word = rule / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (rule % 64);
    }

    fn has(&self, rule: usize) -> bool {
        self.0
            .get(rule / 64)
            .is_some_and(|w| w >> (rule % 64) & 1 == 1)
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    fn add(&mut self, other: &RuleMask) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine |= theirs;
        }
    }

    /// Clears every rule `other` has.
    fn and_not(&mut self, other: &RuleMask) {
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine &= !theirs;
        }
    }

    /// The union of two masks, neither changed.
    fn union(&self, other: &RuleMask) -> RuleMask {
        let mut out = self.clone();
        out.add(other);
        out
    }
}

impl FromIterator<usize> for RuleMask {
    fn from_iter<I: IntoIterator<Item = usize>>(rules: I) -> Self {
        let mut mask = RuleMask::default();
        for rule in rules {
            mask.set(rule);
        }
        mask
    }
}

/// A value the value rules may change, as the rules see it in turn.
struct Hit {
    row: usize,
    /// The rules matching the value as received; while `fired` is empty, `current` is that value.
    received: RuleMask,
    current: String,
    dropped: bool,
    fired: Vec<usize>,
    /// Value rules the rule conditions keep off this value.
    excluded: RuleMask,
    /// The sanitiser that changed `current` before the value rules (index into `sanitizers`).
    sanitized: Option<usize>,
}

impl Hit {
    fn matches(&self, rule: &ValueRule, index: usize) -> bool {
        if self.fired.is_empty() {
            self.received.has(index)
        } else {
            !self.excluded.has(index) && rule.regex.is_match(&self.current)
        }
    }
}

#[pyclass(frozen, module = "processor._otlp_native")]
pub struct Redactor {
    protected: Regex,
    /// Keys only the value rules act on (the sidecar's own `genops.*`): never dropped by the
    /// allow list nor masked whole by a key rule, but a detector still finds what an SDK put there.
    values_only: Regex,
    allowed: Option<Regex>,
    allow_all: bool,
    key_rules: Vec<KeyRule>,
    value_rules: Vec<ValueRule>,
    /// All value patterns at once: which of them match a value, in one pass.
    value_set: RegexSet,
    redact_all_types: bool,
    hasher: Py<PyAny>,
    /// Per rule slot (key rules, then value rules): its `when`/`skip`, if any.
    conditions: Vec<Option<Conditions>>,
    /// The resource attributes resource conditions read.
    condition_keys: Vec<String>,
    /// The item attributes item conditions and the sanitisers read (see `ItemKeys`).
    item_keys: ItemKeys,
    sanitizers: Vec<SanitizerRule>,
    caches: Mutex<Caches>,
    /// The thread `start` hands requests to, started on first use.
    worker: Mutex<Option<mpsc::Sender<Work>>>,
}

/// Why the redactor cannot run these value patterns, as (index of the first pattern at fault,
/// the engine's words), or None: each is compiled as a rule is, then all of them as the one set
/// the redactor scans values with, which has a size limit of its own (so a pattern may compile
/// alone and still not fit beside the ones before it). For the rules' load (redaction_rules.py).
#[pyfunction]
pub fn value_patterns_problem(patterns: Vec<String>) -> Option<(usize, String)> {
    for (index, pattern) in patterns.iter().enumerate() {
        if let Err(e) = Regex::new(pattern) {
            return Some((index, e.to_string()));
        }
    }
    let error = RegexSet::new(&patterns).err()?;
    let first = (0..patterns.len())
        .find(|&end| RegexSet::new(&patterns[..=end]).is_err())
        .unwrap_or(patterns.len().saturating_sub(1));
    Some((first, error.to_string()))
}

fn compile(pattern: &str) -> PyResult<Regex> {
    Regex::new(pattern)
        .map_err(|e| PyValueError::new_err(format!("invalid regex {pattern:?}: {e}")))
}

impl ValuesFilter for Redactor {
    fn values_needed(&self, key: &[u8]) -> Needed {
        Redactor::values_needed(self, key)
    }

    /// The value rules read a text without a key, and the sanitisers that take span names read
    /// those (`changes` gives such places neither key rules nor the allow list).
    fn keyless_needed(&self) -> bool {
        !self.value_rules.is_empty() || self.sanitizers.iter().any(|s| s.span_names)
    }
}

impl Redactor {
    /// Which values of `key` the rules can change: the scan leaves the others out of the values it
    /// hands over. Mirrors the order of `changes`: protected keys are never touched; a key rule or
    /// a key outside the allow list acts on any value; otherwise only the value rules, which read
    /// text (unless `redact_all_types`).
    pub(crate) fn values_needed(&self, key: &[u8]) -> Needed {
        let cached = self.caches.lock().unwrap().keys.get(key).cloned();
        let class = match cached {
            Some(class) => class,
            None => match self.classify(key) {
                Ok(class) => {
                    let mut caches = self.caches.lock().unwrap();
                    bounded(&mut caches.keys, CACHE_LIMIT);
                    caches.keys.insert(key.into(), class.clone());
                    class
                }
                // Not UTF-8: `changes` reports it; every value goes there.
                Err(_) => return Needed::Every,
            },
        };
        // Resource attributes the rule conditions read reach `changes` whatever the rules do.
        let condition = (!self.condition_keys.is_empty()
            && self.condition_keys.iter().any(|k| k.as_bytes() == key))
            || self.item_keys.position(key).is_some();
        if class.protected {
            if condition {
                Needed::Text
            } else {
                Needed::None
            }
        } else if class.key_rule.is_some() || !class.allowed || self.redact_all_types {
            Needed::Every
        } else if self.value_rules.is_empty() && class.sanitizer.is_none() && !condition {
            Needed::None
        } else {
            Needed::Text
        }
    }

    fn key_allows(&self, slot: usize, key: &str) -> bool {
        self.conditions[slot]
            .as_ref()
            .is_none_or(|c| c.allows_key(key))
    }

    /// The first key rule at or after `from` that matches `key` and that neither its key
    /// conditions nor `skip` (a resource's, by slot) keep off it.
    fn key_rule_from(&self, key: &str, from: usize, skip: Option<&[bool]>) -> Option<usize> {
        (from..self.key_rules.len()).find(|&i| {
            !skip.is_some_and(|s| s[i])
                && self.key_rules[i].regex.is_match(key)
                && self.key_allows(i, key)
        })
    }

    fn classify(&self, key: &[u8]) -> PyResult<KeyClass> {
        let key = to_str(key)?;
        let key_slots = self.key_rules.len();
        let value_skip: RuleMask = (0..self.value_rules.len())
            .filter(|&i| !self.key_allows(key_slots + i, key))
            .collect();
        let sanitizer = self.sanitizers.iter().position(|s| s.keys.is_match(key));
        if !self.protected.is_match(key) && self.values_only.is_match(key) {
            return Ok(KeyClass {
                protected: false,
                allowed: true,
                key_rule: None,
                value_skip,
                sanitizer,
            });
        }
        Ok(KeyClass {
            protected: self.protected.is_match(key),
            allowed: self.allow_all || self.allowed.as_ref().is_some_and(|r| r.is_match(key)),
            key_rule: self.key_rule_from(key, 0, None),
            value_skip,
            sanitizer,
        })
    }

    /// Per resource of the batch that has any, the values of the condition attributes, by
    /// condition key (resource attributes are listed with the resource as owner).
    fn condition_values<'v>(&self, values: &Values<'v>) -> FxHashMap<i64, Vec<Vec<&'v [u8]>>> {
        let mut found: FxHashMap<i64, Vec<Vec<&'v [u8]>>> = FxHashMap::default();
        for i in 0..values.value.len {
            if values.scope.get(i) != b"resource" {
                continue;
            }
            let key = values.key.get(i);
            if let Some(at) = self.condition_keys.iter().position(|k| k.as_bytes() == key) {
                let resource = value_resource(values, i).unwrap_or(-1);
                found
                    .entry(resource)
                    .or_insert_with(|| vec![Vec::new(); self.condition_keys.len()])[at]
                    .push(values.value.get(i));
            }
        }
        found
    }

    /// The rules a value's resource and item conditions skip. Each is None when the value has no
    /// known resource (or item): conditions of that kind then keep no rule off it; Some(None) is a
    /// known one without any of the attributes they read.
    fn value_skip(
        &self,
        resource: Option<Option<&Vec<Vec<&[u8]>>>>,
        item: Option<Option<&Vec<Vec<&[u8]>>>>,
    ) -> ResourceSkip {
        let no_resource = vec![Vec::new(); self.condition_keys.len()];
        let no_item = vec![Vec::new(); self.item_keys.keys.len()];
        let slots: Vec<bool> = self
            .conditions
            .iter()
            .map(|c| {
                c.as_ref().is_some_and(|c| {
                    resource.is_some_and(|r| c.skips_resource(r.unwrap_or(&no_resource)))
                        || item.is_some_and(|i| c.skips_item(i.unwrap_or(&no_item)))
                })
            })
            .collect();
        let key_slots = self.key_rules.len();
        let values: RuleMask = (0..self.value_rules.len())
            .filter(|&i| slots[key_slots + i])
            .collect();
        ResourceSkip { slots, values }
    }

    fn rule_mask(&self, text: &[u8]) -> RuleMask {
        let mut mask = RuleMask::default();
        for rule in self.value_set.matches(text).iter() {
            mask.set(rule);
        }
        mask
    }

    /// The value rules matching `text`; none for most values, which is decided without a set scan.
    fn value_rules_matching(&self, caches: &mut Caches, text: &[u8]) -> RuleMask {
        let tiny = short_key(text);
        if let Some(tiny) = tiny {
            if caches.clean_short.contains(&tiny) {
                return RuleMask::default();
            }
        }
        let short = text.len() <= CLEAN_MAX_LEN;
        if tiny.is_none() && short && caches.clean.contains(text) {
            return RuleMask::default();
        }
        if self.value_set.is_match(text) {
            return self.rule_mask(text);
        }
        if let Some(tiny) = tiny {
            bounded_set(&mut caches.clean_short, CLEAN_LIMIT);
            caches.clean_short.insert(tiny);
        } else if short {
            bounded_set(&mut caches.clean, CLEAN_LIMIT);
            caches.clean.insert(text.into());
        }
        RuleMask::default()
    }

    // The Python callables (hash, checks without a Rust version) take the GIL themselves: the
    // batch may be running on a thread of its own (`start`), the GIL released.
    fn hash(&self, caches: &mut Caches, value: &str) -> PyResult<String> {
        if let Some(done) = caches.hashes.get(value) {
            return Ok(done.clone());
        }
        let hashed: String = Python::attach(|py| self.hasher.call1(py, (value,))?.extract(py))?;
        bounded(&mut caches.hashes, CACHE_LIMIT);
        caches.hashes.insert(value.to_owned(), hashed.clone());
        Ok(hashed)
    }

    fn check(&self, caches: &mut Caches, rule: usize, candidate: &str) -> PyResult<Option<String>> {
        let Some(check) = &self.value_rules[rule].check else {
            return Ok(Some(candidate.to_owned()));
        };
        if let Some(Ok(part)) = self.value_rules[rule]
            .native_check
            .map(|native| native.run(candidate))
        {
            return Ok(part);
        }
        if caches.checks.len() <= rule {
            caches.checks.resize_with(rule + 1, FxHashMap::default);
        }
        let cache = &mut caches.checks[rule];
        if let Some(done) = cache.get(candidate) {
            return Ok(done.clone());
        }
        let part: Option<String> = Python::attach(|py| check.call1(py, (candidate,))?.extract(py))?;
        bounded(cache, CACHE_LIMIT);
        cache.insert(candidate.to_owned(), part.clone());
        Ok(part)
    }

    /// Runs the value rules over `hits` (the values some rule matches), in rule order.
    fn scan_values(&self, caches: &mut Caches, hits: &mut [Hit]) -> PyResult<()> {
        // A rule that matches none of the values as received is skipped for the whole batch, as
        // the polars path does: then it cannot touch what an earlier rule wrote either.
        let mut possible = RuleMask::default();
        for hit in hits.iter() {
            possible.add(&hit.received);
        }
        for (index, rule) in self.value_rules.iter().enumerate() {
            if !possible.has(index) {
                continue;
            }
            let matched: Vec<usize> = (0..hits.len())
                .filter(|&i| !hits[i].dropped && hits[i].matches(rule, index))
                .collect();
            if matched.is_empty() {
                continue;
            }
            if let Some(mask) = &rule.mask_all {
                for &i in &matched {
                    let hit = &mut hits[i];
                    let replaced = rule.regex.replace_all(&hit.current, NoExpand(mask));
                    if replaced != hit.current {
                        hit.current = replaced.into_owned();
                        hit.fired.push(index);
                    }
                }
                continue;
            }
            let Some((automaton, replacements)) = self.accepted(caches, index, hits, &matched)?
            else {
                continue;
            };
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

    /// The parts of the rule's matches its check accepts, over the whole batch, and what replaces
    /// each; a part is then replaced wherever it occurs in a value the rule matched.
    #[allow(clippy::type_complexity)]
    fn accepted(
        &self,
        caches: &mut Caches,
        index: usize,
        hits: &[Hit],
        matched: &[usize],
    ) -> PyResult<Option<(AhoCorasick, Vec<String>)>> {
        let rule = &self.value_rules[index];
        let mut candidates: Vec<&str> = Vec::new();
        let mut seen: FxHashSet<&str> = FxHashSet::default();
        for &i in matched {
            for found in rule.regex.find_iter(&hits[i].current) {
                if seen.insert(found.as_str()) {
                    candidates.push(found.as_str());
                }
            }
        }
        let mut accepted: Vec<(String, String)> = Vec::new();
        let mut parts: FxHashSet<String> = FxHashSet::default();
        for candidate in candidates {
            let Some(part) = self.check(caches, index, candidate)? else {
                continue;
            };
            if part.is_empty() || !parts.insert(part.clone()) {
                continue;
            }
            let replacement = match &rule.action {
                Action::Hash => self.hash(caches, &part)?,
                Action::Mask(mask) => mask.clone(),
                _ => String::new(),
            };
            accepted.push((part, replacement));
        }
        if accepted.is_empty() {
            return Ok(None);
        }
        // Longest first with leftmost-first matching: a part is never cut by a shorter one.
        accepted.sort_by_key(|(part, _)| std::cmp::Reverse(part.len()));
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostFirst)
            .build(accepted.iter().map(|(part, _)| part.as_str()))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Some((
            automaton,
            accepted
                .into_iter()
                .map(|(_, replacement)| replacement)
                .collect(),
        )))
    }
}

/// The item (span, log record, data point) attributes the redactor reads besides the values it
/// redacts: those of item conditions, then, with a sanitiser, the database ones (a database span's
/// name is sanitised as SQL, in its system's dialect).
#[derive(Default)]
struct ItemKeys {
    keys: Vec<String>,
    /// Some rule has item conditions.
    conditions: bool,
    /// Indexes of `DB_SYSTEM_KEYS` (in their order: the first present decides) and `DB_QUERY_KEYS`.
    systems: Vec<usize>,
    queries: Vec<usize>,
}

/// processor/stages/redaction/sanitizers.py spells the same keys.
const DB_SYSTEM_KEYS: [&str; 2] = ["db.system.name", "db.system"];
const DB_QUERY_KEYS: [&str; 2] = ["db.query.text", "db.statement"];

impl ItemKeys {
    fn index(&mut self, key: String) -> usize {
        match self.keys.iter().position(|k| *k == key) {
            Some(at) => at,
            None => {
                self.keys.push(key);
                self.keys.len() - 1
            }
        }
    }

    fn indexed(&mut self, spec: ResourceSpec) -> Vec<(usize, Vec<String>)> {
        self.conditions |= !spec.is_empty();
        spec.into_iter()
            .map(|(key, accepted)| (self.index(key), accepted))
            .collect()
    }

    fn read_databases(&mut self) {
        self.systems = DB_SYSTEM_KEYS.map(|k| self.index(k.to_owned())).to_vec();
        self.queries = DB_QUERY_KEYS.map(|k| self.index(k.to_owned())).to_vec();
    }

    fn position(&self, key: &[u8]) -> Option<usize> {
        self.keys.iter().position(|k| k.as_bytes() == key)
    }

    fn is_database(&self, found: &[Vec<&[u8]>]) -> bool {
        self.systems
            .iter()
            .chain(&self.queries)
            .any(|at| !found[*at].is_empty())
    }

    fn double_quoted_strings(&self, found: &[Vec<&[u8]>]) -> bool {
        self.systems
            .iter()
            .find_map(|at| found[*at].first())
            .is_some_and(|system| sanitize::reads_double_quoted_strings(system))
    }
}

/// The first 8 bytes of a string's Arrow view (its length, then its first 4 bytes, zero-padded).
fn view_head(text: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&(text.len() as u32).to_le_bytes());
    let prefix = text.len().min(4);
    bytes[4..4 + prefix].copy_from_slice(&text[..prefix]);
    u64::from_le_bytes(bytes)
}

/// The item a value belongs to, for item conditions and the sanitisers: an attribute's owner (its
/// span, record or data point), the item of a span's name, status, events and links, or a log
/// record's body; None for resource and instrumentation scope attributes, shared by many items,
/// and for a value of no item.
fn value_item(values: &Values<'_>, i: usize) -> Option<i64> {
    let scope = values.scope.get(i);
    // Row -1: a value of no item (what the sidecar writes itself, `redact_one`).
    if values.row.get(i) < 0 || scope == b"resource" || scope == b"scope" {
        None
    } else if scope == b"attribute" {
        Some(values.owner.get(i))
    } else {
        Some(values.row.get(i))
    }
}

impl Redactor {
    /// Per item that has any, the string values of the item keys, by item key; None without item keys.
    fn item_values<'v>(&self, values: &Values<'v>) -> Option<FxHashMap<i64, Vec<Vec<&'v [u8]>>>> {
        if self.item_keys.keys.is_empty() {
            return None;
        }
        let attribute = short_key(b"attribute");
        // A view's first 8 bytes are the length and the first 4 bytes: most keys differ there
        // from every item key, which rules them out without reading their bytes.
        let heads: Vec<u64> = self
            .item_keys
            .keys
            .iter()
            .map(|k| view_head(k.as_bytes()))
            .collect();
        let mut found: FxHashMap<i64, Vec<Vec<&'v [u8]>>> = FxHashMap::default();
        for i in 0..values.value.len {
            let is_attribute = match values.scope.view(i) {
                Some(view) => Some(view) == attribute,
                None => values.scope.get(i) == b"attribute",
            };
            if !is_attribute
                || values
                    .key
                    .view(i)
                    .is_some_and(|view| !heads.contains(&(view as u64)))
            {
                continue;
            }
            let Some(at) = self.item_keys.position(values.key.get(i)) else {
                continue;
            };
            if values
                .kind
                .as_ref()
                .is_none_or(|k| k.get(i) == b"string_value")
            {
                found
                    .entry(values.owner.get(i))
                    .or_insert_with(|| vec![Vec::new(); self.item_keys.keys.len()])[at]
                    .push(values.value.get(i));
            }
        }
        Some(found)
    }

    /// What a sanitiser makes of a value, when it changes it: its key's sanitiser for an
    /// attribute; for a span name the SQL one on a database span, else the URL one.
    fn sanitized(
        &self,
        class: &KeyClass,
        scope: &[u8],
        kind: &[u8],
        text: &[u8],
        item: Option<&Vec<Vec<&[u8]>>>,
    ) -> PyResult<Option<(usize, String)>> {
        let span_name = scope == b"span_name";
        if (class.sanitizer.is_none() && !span_name) || kind != b"string_value" {
            return Ok(None);
        }
        let double_quoted = || item.is_some_and(|f| self.item_keys.double_quoted_strings(f));
        if span_name {
            let database = item.is_some_and(|f| self.item_keys.is_database(f));
            // Most names hold no query at all: no copy made to find that out.
            if !database && memchr::memchr2(b'?', b'#', text).is_none() {
                return Ok(None);
            }
            let wanted = if database {
                SanitizerKind::Sql
            } else {
                SanitizerKind::UrlQuery
            };
            let Some(at) = self
                .sanitizers
                .iter()
                .position(|s| s.span_names && s.kind == wanted)
            else {
                return Ok(None);
            };
            let original = to_str(text)?;
            let rule = &self.sanitizers[at];
            let out = match rule.kind {
                SanitizerKind::Sql => sanitize::sql(original, double_quoted()),
                SanitizerKind::UrlQuery => sanitize::urls_in_text(original, &rule.mask),
            };
            return Ok((out != original).then_some((at, out)));
        }
        match class.sanitizer {
            Some(at) if !keyless(scope) => {
                let original = to_str(text)?;
                let rule = &self.sanitizers[at];
                let out = rule.run(original, rule.kind == SanitizerKind::Sql && double_quoted());
                Ok((out != original).then_some((at, out)))
            }
            _ => Ok(None),
        }
    }
}

/// Where a changed value's rewrite and summary come from.
struct Changes {
    rows: Vec<usize>,
    new_values: StringsOut,
    /// Rewrites counted per rule slot: key rules, then value rules, then the allow-list drop.
    counts: Vec<u64>,
    /// `rows[detected_from..]` are the values the value rules changed (findings, not keys).
    detected_from: usize,
}

impl Changes {
    fn push(&mut self, row: usize, new_value: Option<&[u8]>, slot: usize) {
        self.rows.push(row);
        self.new_values.push(new_value);
        self.counts[slot] += 1;
    }
}

/// One batch's columns of `TelemetryBatch.string_values()`, read in place.
struct Values<'a> {
    scope: Strs<'a>,
    key: Strs<'a>,
    value: Strs<'a>,
    kind: Option<Strs<'a>>,
    owner: Ints<'a>,
    position: Ints<'a>,
    row: Ints<'a>,
    /// The resource of each item (one entry per item, not per value).
    item_resource: Ints<'a>,
}

#[pymethods]
impl Redactor {
    /// key_rules: [(anchored key regex, action, mask, length)]; value_rules: [(pattern, check
    /// callable or None, name of its Rust version (detect.rs) or None, action, mask)]; allowed: None matches no key (unless allow_all);
    /// hasher: value -> keyed hash, called for hash rules only; conditions: per rule (key rules,
    /// then value rules) None or (when keys, skip keys, when resource, skip resource);
    /// sanitizers: [(kind "url_query" | "sql", anchored key regex, mask)], in order.
    #[new]
    #[pyo3(signature = (protected, values_only, allowed, allow_all, key_rules, value_rules, redact_all_types, hasher, conditions=None, sanitizers=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        protected: &str,
        values_only: &str,
        allowed: Option<&str>,
        allow_all: bool,
        key_rules: Vec<(String, String, String, usize)>,
        value_rules: Vec<ValueRuleSpec>,
        redact_all_types: bool,
        hasher: Py<PyAny>,
        conditions: Option<Vec<Option<ConditionSpec>>>,
        sanitizers: Option<Vec<(String, String, String, bool)>>,
    ) -> PyResult<Self> {
        let slots = key_rules.len() + value_rules.len();
        let mut condition_keys: Vec<String> = Vec::new();
        let mut key_index = |key: String| match condition_keys.iter().position(|k| *k == key) {
            Some(at) => at,
            None => {
                condition_keys.push(key);
                condition_keys.len() - 1
            }
        };
        let mut item_keys = ItemKeys::default();
        let mut compiled_conditions: Vec<Option<Conditions>> = Vec::with_capacity(slots);
        for spec in conditions.unwrap_or_default() {
            compiled_conditions.push(match spec {
                None => None,
                Some((
                    when_keys,
                    skip_keys,
                    when_resource,
                    skip_resource,
                    when_item,
                    skip_item,
                )) => Some(Conditions {
                    when_item: item_keys.indexed(when_item),
                    skip_item: item_keys.indexed(skip_item),
                    when_keys: when_keys.as_deref().map(compile).transpose()?,
                    skip_keys: skip_keys.as_deref().map(compile).transpose()?,
                    when_resource: when_resource
                        .into_iter()
                        .map(|(key, accepted)| (key_index(key), accepted))
                        .collect(),
                    skip_resource: skip_resource
                        .into_iter()
                        .map(|(key, accepted)| (key_index(key), accepted))
                        .collect(),
                }),
            });
        }
        if compiled_conditions.len() > slots {
            return Err(PyValueError::new_err("more conditions than rules"));
        }
        compiled_conditions.resize_with(slots, || None);
        let sanitizers = sanitizers
            .unwrap_or_default()
            .into_iter()
            .map(|(kind, keys, mask, span_names)| {
                Ok(SanitizerRule {
                    kind: SanitizerKind::from_name(&kind).ok_or_else(|| {
                        PyValueError::new_err(format!("unknown sanitizer {kind:?}"))
                    })?,
                    keys: compile(&keys)?,
                    mask,
                    span_names,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        if !sanitizers.is_empty() {
            item_keys.read_databases();
        }
        let key_rules = key_rules
            .into_iter()
            .map(|(regex, kind, mask, length)| {
                Ok(KeyRule {
                    regex: compile(&regex)?,
                    action: Action::parse(&kind, mask, length)?,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let value_set = RegexSet::new(value_rules.iter().map(|(pattern, ..)| pattern))
            .map_err(|e| PyValueError::new_err(format!("invalid value patterns: {e}")))?;
        let value_rules = value_rules
            .into_iter()
            .map(|(pattern, check, native_check, kind, mask)| {
                let action = Action::parse(&kind, mask, 0)?;
                let native_check = native_check.as_deref().and_then(Check::from_name);
                let mask_all = match (&action, &check) {
                    (Action::Mask(mask), None) => Some(mask.clone()),
                    _ => None,
                };
                Ok(ValueRule {
                    regex: compile(&pattern)?,
                    check,
                    native_check,
                    action,
                    mask_all,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Redactor {
            protected: compile(protected)?,
            values_only: compile(values_only)?,
            allowed: allowed.map(compile).transpose()?,
            allow_all,
            key_rules,
            value_rules,
            value_set,
            redact_all_types,
            hasher,
            conditions: compiled_conditions,
            condition_keys,
            item_keys,
            sanitizers,
            caches: Mutex::new(Caches::default()),
            worker: Mutex::new(None),
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
        let columns = [scope, key, value].map(StrColumn::from_arrow);
        let [scope, key, value] = columns;
        let (scope, key, value) = (scope?, key?, value?);
        let kind = kind.map(StrColumn::from_arrow).transpose()?;
        let owner = IntColumn::from_arrow(owner)?;
        let position = IntColumn::from_arrow(position)?;
        let row = IntColumn::from_arrow(row)?;
        let item_resource = IntColumn::from_arrow(item_resource)?;
        let values = Values {
            scope: scope.strs()?,
            key: key.strs()?,
            value: value.strs()?,
            kind: kind.as_ref().map(StrColumn::strs).transpose()?,
            owner: owner.ints(),
            position: position.ints(),
            row: row.ints(),
            item_resource: item_resource.ints(),
        };
        let n = values.value.len;
        let lengths = [
            values.scope.len,
            values.key.len,
            values.owner.len(),
            values.position.len(),
            values.row.len(),
            values.kind.as_ref().map_or(n, |k| k.len),
        ];
        if lengths.iter().any(|len| *len != n) {
            return Err(PyValueError::new_err("columns of different lengths"));
        }
        let changes = self.changes_with_caches(&values)?;
        found_to_py(py, &changes, &values, summary)
    }
}

impl Redactor {
    /// Starts the rules over a request's values (listed by the decoder's scan) on the redactor's
    /// thread, the GIL released. `RedactionJob.finish` gives what `redact` gives for them.
    /// `request` is the bytes object long values point into (immutable: read while Python goes on).
    pub(crate) fn start(
        slf: &Bound<'_, Self>,
        request: &Bound<'_, PyBytes>,
        values: ScannedValues,
    ) -> PyResult<RedactionJob> {
        let bytes = request.as_bytes();
        let task = Task {
            redactor: slf.clone().unbind(),
            address: bytes.as_ptr() as usize,
            len: bytes.len(),
            request: request.clone().unbind(),
            values,
        };
        let (reply, result) = mpsc::sync_channel(1);
        let mut worker = slf.get().worker.lock().unwrap();
        if worker.is_none() {
            *worker = Some(spawn_worker()?);
        }
        if let Err(mpsc::SendError((task, reply))) = worker.as_ref().unwrap().send((task, reply)) {
            // The thread is gone (it panicked): a new one for this and later requests.
            let fresh = spawn_worker()?;
            fresh
                .send((task, reply))
                .map_err(|_| PyValueError::new_err("the redaction thread does not take work"))?;
            *worker = Some(fresh);
        }
        Ok(RedactionJob {
            result: Mutex::new(Some(result)),
        })
    }
}

/// One request for the redaction thread.
struct Task {
    redactor: Py<Redactor>,
    request: Py<PyBytes>,
    address: usize,
    len: usize,
    values: ScannedValues,
}

type Work = (Task, mpsc::SyncSender<JobOutput>);

/// The redaction thread of a Redactor: one long-lived thread (a new thread per request costs its
/// start and a cold stack), taking requests in turn. It ends when the Redactor is dropped.
fn spawn_worker() -> PyResult<mpsc::Sender<Work>> {
    let (sender, requests) = mpsc::channel::<Work>();
    std::thread::Builder::new()
        .name("genops-redaction".into())
        .spawn(move || {
            for (task, reply) in requests {
                let _ = reply.send(run(task));
            }
        })
        .map_err(|e| PyValueError::new_err(format!("cannot start a redaction thread: {e}")))?;
    Ok(sender)
}

fn run(task: Task) -> JobOutput {
    let Task {
        redactor,
        request,
        address,
        len,
        values,
    } = task;
    // SAFETY: a bytes object never changes, and `request` keeps this one alive until the output
    // (which holds it) is dropped by `finish`, with the GIL.
    let raw = unsafe { std::slice::from_raw_parts(address as *const u8, len) };
    let flat = values.flatten();
    let changes = if flat.nested {
        None
    } else {
        Some(redactor.get().changes_with_caches(&flat_view(&flat, raw)))
    };
    JobOutput {
        redactor,
        request,
        flat,
        changes,
    }
}

/// What a redaction thread hands back: the Python objects it kept alive (dropped with the GIL
/// held), the values and the changes (None: not run, as for values Python must render).
struct JobOutput {
    redactor: Py<Redactor>,
    request: Py<PyBytes>,
    flat: FlatValues,
    changes: Option<PyResult<Changes>>,
}

/// A redaction started by `Redactor.start`.
#[pyclass(frozen, module = "processor._otlp_native")]
pub struct RedactionJob {
    result: Mutex<Option<mpsc::Receiver<JobOutput>>>,
}

#[pymethods]
impl RedactionJob {
    /// Waits for the thread (the GIL released). Returns ("done", what `redact` returns), or
    /// ("python", None) when the request holds values only Python renders (the caller runs the
    /// other path).
    fn finish(&self, py: Python<'_>, summary: u8) -> PyResult<(&'static str, Option<Py<PyAny>>)> {
        let result = self.result.lock().unwrap().take();
        let Some(result) = result else {
            return Err(PyValueError::new_err("redaction job already finished"));
        };
        let output = py
            .detach(move || result.recv())
            .map_err(|_| PyValueError::new_err("the redaction thread failed"))?;
        let JobOutput {
            redactor,
            request,
            flat,
            changes,
        } = output;
        drop(redactor);
        let Some(changes) = changes else {
            return Ok(("python", None));
        };
        let changes = changes?;
        let values = flat_view(&flat, request.bind(py).as_bytes());
        Ok(("done", found_to_py(py, &changes, &values, summary)?))
    }

    /// Waits for the thread and drops its result (a request given up on before `finish`).
    fn abandon(&self, py: Python<'_>) {
        if let Some(result) = self.result.lock().unwrap().take() {
            let _ = py.detach(move || result.recv());
        }
    }
}

/// The scan's values read as the columns `redact` reads.
fn flat_view<'a>(flat: &'a FlatValues, request: &'a [u8]) -> Values<'a> {
    let views = |views: &'a [View], data: Vec<&'a [u8]>| Strs {
        layout: StrLayout::View,
        offset: 0,
        len: views.len(),
        index: views.as_flattened(),
        data,
    };
    Values {
        scope: views(&flat.scope, Vec::new()),
        key: views(&flat.key, vec![&flat.key_data]),
        value: views(&flat.value, vec![&flat.value_data, request]),
        kind: Some(views(&flat.kind, Vec::new())),
        owner: Ints::Native(&flat.owner),
        position: Ints::Native(&flat.position),
        row: Ints::Native(&flat.row),
        item_resource: Ints::Native(&flat.item_resource),
    }
}

/// `redact`'s return value for these changes.
fn found_to_py(
    py: Python<'_>,
    changes: &Changes,
    values: &Values<'_>,
    summary: u8,
) -> PyResult<Option<Py<PyAny>>> {
    if changes.rows.is_empty() {
        return Ok(None);
    }
    // Scope names are at most 12 bytes.
    let mut scopes = StringsOut::with_capacity(changes.rows.len(), 12 * changes.rows.len());
    let mut owners = Vec::with_capacity(changes.rows.len());
    let mut positions = Vec::with_capacity(changes.rows.len());
    for &i in &changes.rows {
        scopes.push(Some(values.scope.get(i)));
        owners.push(values.owner.get(i));
        positions.push(values.position.get(i));
    }
    let rewrites = (
        scopes.into_py(py)?,
        PyBytes::new(py, &le_i64(&owners)),
        PyBytes::new(py, &le_i64(&positions)),
        changes.new_values.to_py(py)?,
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
        Some(summarise(
            py,
            &changes.rows,
            changes.detected_from,
            values,
            summary >= 2,
        )?)
    };
    Ok(Some(
        (rewrites, counts, summary)
            .into_pyobject(py)?
            .into_any()
            .unbind(),
    ))
}

impl Redactor {
    fn changes_with_caches(&self, values: &Values<'_>) -> PyResult<Changes> {
        // Taken out for the batch and put back after: a check or hash callable may let another
        // thread run, which must not find the lock held.
        let mut caches = std::mem::take(&mut *self.caches.lock().unwrap());
        let result = self.changes(&mut caches, values);
        *self.caches.lock().unwrap() = caches;
        result
    }

    fn changes(&self, caches: &mut Caches, values: &Values<'_>) -> PyResult<Changes> {
        let key_slots = self.key_rules.len();
        let not_allowed_slot = key_slots + self.value_rules.len();
        let sanitizer_slot = not_allowed_slot + 1;
        let mut changes = Changes {
            rows: Vec::new(),
            new_values: StringsOut::default(),
            counts: vec![0; sanitizer_slot + self.sanitizers.len()],
            detected_from: 0,
        };
        // Rule conditions on resource attributes: what each resource of the batch skips, found
        // on first use (no work at all without such conditions).
        let found = if self.condition_keys.is_empty() {
            None
        } else {
            Some(self.condition_values(values))
        };
        let items = self.item_values(values);
        let mut resource_skips: FxHashMap<(Option<i64>, Option<i64>), ResourceSkip> =
            FxHashMap::default();
        let mut hits: Vec<Hit> = Vec::new();
        // A batch's keys repeat (the scan stores each once): classes found by view for the batch.
        let mut batch_keys: FxHashMap<u128, KeyClass> = FxHashMap::default();
        let attribute = short_key(b"attribute");
        let event = short_key(b"event");
        let span_name = short_key(b"span_name");
        for i in 0..values.value.len {
            // Values sit in the request bytes, last read by the scan: their loads are started
            // a few values ahead of the lookups that wait for them.
            values.value.prefetch(i + 8);
            let view = values.key.view(i);
            let known = view.and_then(|view| batch_keys.get(&view).cloned());
            let class = match known {
                Some(class) => class,
                None => {
                    let key = values.key.get(i);
                    let class = match caches.keys.get(key) {
                        Some(class) => class.clone(),
                        None => {
                            let class = self.classify(key)?;
                            bounded(&mut caches.keys, CACHE_LIMIT);
                            caches.keys.insert(key.into(), class.clone());
                            class
                        }
                    };
                    if let Some(view) = view {
                        batch_keys.insert(view, class.clone());
                    }
                    class
                }
            };
            if class.protected {
                continue;
            }
            // The item's attributes only where something reads them: item conditions, a sanitiser.
            let scope_view = values.scope.view(i);
            let reads_item =
                self.item_keys.conditions || class.sanitizer.is_some() || scope_view == span_name;
            let item = items
                .as_ref()
                .filter(|_| reads_item)
                .and_then(|_| value_item(values, i));
            let item_found = item.and_then(|item| items.as_ref().and_then(|m| m.get(&item)));
            let skip = if found.is_none() && !self.item_keys.conditions {
                None
            } else {
                let resource = found.as_ref().and_then(|_| value_resource(values, i));
                let item = item.filter(|_| self.item_keys.conditions);
                (resource.is_some() || item.is_some()).then(|| {
                    &*resource_skips.entry((resource, item)).or_insert_with(|| {
                        let on_resource = resource.map(|r| found.as_ref().and_then(|f| f.get(&r)));
                        self.value_skip(on_resource, item.map(|_| item_found))
                    })
                })
            };
            let scope = values.scope.get(i);
            let item_scope = if scope_view == attribute || scope_view == event {
                true
            } else {
                scope == b"attribute" || scope == b"event" || scope == b"link"
            };
            if !class.allowed && item_scope {
                changes.push(i, None, not_allowed_slot);
                continue;
            }
            let text = values.value.get(i);
            let kind: &[u8] = values.kind.as_ref().map_or(b"string_value", |k| k.get(i));
            let key_rule = match (class.key_rule, skip) {
                (Some(rule), Some(skip)) if skip.slots[rule] => {
                    self.key_rule_from(to_str(values.key.get(i))?, rule + 1, Some(&skip.slots))
                }
                (rule, _) => rule,
            };
            match key_rule {
                Some(rule) if !keyless(scope) => {
                    match &self.key_rules[rule].action {
                        Action::Mask(mask) => {
                            if text != mask.as_bytes() || kind != b"string_value" {
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
                            let hashed = self.hash(caches, to_str(text)?)?;
                            changes.push(i, Some(hashed.as_bytes()), rule);
                        }
                    }
                    continue;
                }
                _ => {}
            }
            // A sanitiser reads its keys' strings first; the value rules then see what it left.
            let sanitized = self.sanitized(&class, scope, kind, text, item_found)?;
            if self.value_rules.is_empty()
                || !(self.redact_all_types
                    || matches!(kind, b"string_value" | b"array_value" | b"kvlist_value"))
            {
                if let Some((at, out)) = sanitized {
                    changes.push(i, Some(out.as_bytes()), sanitizer_slot + at);
                }
                continue;
            }
            let excluded = match skip {
                Some(skip) => class.value_skip.union(&skip.values),
                None => class.value_skip,
            };
            let scanned = sanitized.as_ref().map_or(text, |(_, out)| out.as_bytes());
            let mut received = self.value_rules_matching(caches, scanned);
            received.and_not(&excluded);
            if !received.is_empty() || sanitized.is_some() {
                let (sanitized, current) = match sanitized {
                    Some((at, out)) => (Some(at), out),
                    None => (None, to_str(text)?.to_owned()),
                };
                hits.push(Hit {
                    row: i,
                    received,
                    current,
                    dropped: false,
                    fired: Vec::new(),
                    excluded,
                    sanitized,
                });
            }
        }
        if !hits.is_empty() {
            self.scan_values(caches, &mut hits)?;
        }
        // Values only a sanitiser changed: rewritten, not findings (no detector found anything).
        for hit in &hits {
            if let (true, Some(at)) = (hit.fired.is_empty(), hit.sanitized) {
                changes.push(hit.row, Some(hit.current.as_bytes()), sanitizer_slot + at);
            }
        }
        changes.detected_from = changes.rows.len();
        for hit in &hits {
            if hit.fired.is_empty() {
                continue;
            }
            if let Some(at) = hit.sanitized {
                changes.counts[sanitizer_slot + at] += 1;
            }
            // One rewrite per value; every rule that changed it is counted.
            let new_value = if hit.dropped {
                None
            } else {
                Some(hit.current.as_bytes())
            };
            changes.rows.push(hit.row);
            changes.new_values.push(new_value);
            for rule in &hit.fired {
                changes.counts[key_slots + rule] += 1;
            }
        }
        Ok(changes)
    }
}

/// The resource a value belongs to: its item's, or its own for a resource attribute; None for
/// instrumentation scope attributes (shared by the items of a scope, which the columns do not map
/// to a resource).
fn value_resource(values: &Values<'_>, i: usize) -> Option<i64> {
    let row = values.row.get(i);
    if row >= 0 && (row as usize) < values.item_resource.len() {
        Some(values.item_resource.get(row as usize))
    } else if values.scope.get(i) == b"resource" {
        Some(values.owner.get(i))
    } else {
        None
    }
}

/// Places that hold one text, not a key and a value (processor/core/decode.py KEYLESS_SCOPES): only
/// the value rules apply to them.
fn keyless(scope: &[u8]) -> bool {
    matches!(
        scope,
        b"body" | b"span_name" | b"status" | b"event_name" | b"log_event" | b"unknown"
    )
}

/// genops.redaction.count (and .keys when `keys`) per item: the values changed on the item, its
/// events and its resource (a resource value is shared by every item under that resource); and
/// genops.redaction.detected, the same count over `rows[detected_from..]` (value-rule findings).
fn summarise(
    py: Python<'_>,
    rows: &[usize],
    detected_from: usize,
    values: &Values<'_>,
    keys: bool,
) -> PyResult<Py<PyAny>> {
    let (owner, row, item_resource) = (values.owner, values.row, values.item_resource);
    let items = item_resource.len();
    // Labels repeat (one per key and scope): each distinct one gets a number in sorted order, so
    // an item's labels sort and deduplicate as numbers.
    let mut label_ids: FxHashMap<(&[u8], &[u8]), usize> = FxHashMap::default();
    // The same (scope, key) comes with the same views (the scan stores a key once): those are
    // looked up as two numbers first, the bytes hashed only once per distinct pair of views.
    let mut view_ids: FxHashMap<(u128, u128), usize> = FxHashMap::default();
    let mut labels: Vec<Vec<u8>> = Vec::new();
    let mut change_label: Vec<usize> = Vec::with_capacity(rows.len());
    for &i in rows {
        let views = values.scope.view(i).zip(values.key.view(i));
        if let Some(id) = views.and_then(|views| view_ids.get(&views)) {
            change_label.push(*id);
            continue;
        }
        let (scope, key) = (values.scope.get(i), values.key.get(i));
        let id = *label_ids.entry((scope, key)).or_insert_with(|| {
            labels.push(match scope {
                b"attribute" => key.to_vec(),
                b"body" => b"body".to_vec(),
                _ if keyless(scope) => scope.to_vec(),
                _ => [scope, b":", key].concat(),
            });
            labels.len() - 1
        });
        if let Some(views) = views {
            view_ids.insert(views, id);
        }
        change_label.push(id);
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|a, b| labels[*a].cmp(&labels[*b]));
    let mut rank = vec![0; labels.len()];
    for (position, id) in order.iter().enumerate() {
        rank[*id] = position;
    }
    // (item, label rank) for every changed value and every item it counts on.
    let mut pairs: Vec<(usize, usize)> = Vec::with_capacity(rows.len());
    let mut detected = vec![0i64; items];
    let mut by_resource: Option<FxHashMap<i64, Vec<usize>>> = None;
    for (change, &i) in rows.iter().enumerate() {
        let label = rank[change_label[change]];
        let counted_from = pairs.len();
        if values.scope.get(i) == b"resource" {
            let by_resource = by_resource.get_or_insert_with(|| {
                let mut map: FxHashMap<i64, Vec<usize>> = FxHashMap::default();
                for item in 0..items {
                    map.entry(item_resource.get(item)).or_default().push(item);
                }
                map
            });
            if let Some(under) = by_resource.get(&owner.get(i)) {
                pairs.extend(under.iter().map(|item| (*item, label)));
            }
        } else {
            let item = row.get(i);
            if item >= 0 && (item as usize) < items {
                pairs.push((item as usize, label));
            }
        }
        if change >= detected_from {
            for (item, _) in &pairs[counted_from..] {
                detected[*item] += 1;
            }
        }
    }
    // In (item, label) order: items are 0..items, so each pair is counted into its item's place
    // and only an item's few labels are sorted (a sort of all pairs cost more than the rest).
    let mut starts = vec![0usize; items + 1];
    for (item, _) in &pairs {
        starts[item + 1] += 1;
    }
    for item in 0..items {
        starts[item + 1] += starts[item];
    }
    let mut next = starts.clone();
    let mut sorted = vec![(0, 0); pairs.len()];
    for &(item, label) in &pairs {
        sorted[next[item]] = (item, label);
        next[item] += 1;
    }
    for item in 0..items {
        let labels = &mut sorted[starts[item]..starts[item + 1]];
        if labels.len() > 1 {
            labels.sort_unstable();
        }
    }
    let mut pairs = sorted;
    let mut counts = vec![0i64; items];
    for (item, _) in &pairs {
        counts[*item] += 1;
    }
    let valid: Vec<bool> = counts.iter().map(|c| *c > 0).collect();
    let count = (
        items,
        bitmap(py, &valid),
        PyBytes::new(py, &le_i64(&counts)),
    );
    let key_lists = if keys {
        pairs.dedup();
        let mut offsets: Vec<i64> = vec![0; items + 1];
        let bytes = pairs
            .iter()
            .map(|(_, label)| labels[order[*label]].len())
            .sum();
        let mut names = StringsOut::with_capacity(pairs.len(), bytes);
        for (item, label) in &pairs {
            offsets[item + 1] += 1;
            names.push(Some(&labels[order[*label]]));
        }
        for item in 0..items {
            offsets[item + 1] += offsets[item];
        }
        Some((
            items,
            bitmap(py, &valid),
            PyBytes::new(py, &le_i64(&offsets)),
            names.into_py(py)?,
        ))
    } else {
        None
    };
    let found: Vec<bool> = detected.iter().map(|c| *c > 0).collect();
    let detected = (bitmap(py, &found), PyBytes::new(py, &le_i64(&detected)));
    Ok((count, key_lists, detected)
        .into_pyobject(py)?
        .into_any()
        .unbind())
}

#[cfg(test)]
#[path = "tests/redact_tests.rs"]
mod redact_tests;
