//! The cost stage's per-batch query in one call: GenAI normalisation of the source columns, the
//! (provider, model) → price group lookup, the price row pick (dates, tiers) and the cost
//! arithmetic, reading the frame's columns as Arrow buffers and returning the normalised and the
//! written columns as Arrow buffers, plus the metric counts.
//!
//! It mirrors processor/core/genai_attributes.py (normalize) and processor/stages/cost/stage.py (the polars query,
//! which stays the fallback); tests/stages/cost/test_cost_native.py checks both agree to the last bit. Each
//! step keeps the polars path's operation order, as the float results depend on it.
//! Resolving a new (provider, model) pair against the pricing table stays in Python: a batch with
//! pairs `PairGroups` does not know yet returns them, and the caller adds them and calls again.

use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::otlp::arrow::{view_of, ArrowIn, Kind, View, INLINE};

/// Prices are per million tokens. polars divides a column by a scalar as a multiplication by its
/// reciprocal, unless the column has one row (then its lengths match and it divides element by
/// element), so this does too: the two differ in the last bit.
const MILLION: f64 = 1_000_000.0;
const PER_TOKEN: f64 = 1.0 / MILLION;

#[inline]
fn per_million(value: f64, one_row: bool) -> f64 {
    if one_row {
        value / MILLION
    } else {
        value * PER_TOKEN
    }
}
const ANY_PROVIDER: &str = "*";
/// Canonical columns, in ga.COLUMNS order.
const MODEL: usize = 0;
const PROVIDER: usize = 1;
const INPUT: usize = 0;
const OUTPUT: usize = 1;
const CACHE_READ: usize = 2;
const CACHE_WRITE: usize = 3;
const REASONING: usize = 4;

/// The (provider, model) pairs resolved against one pricing table, and the provider aliases.
/// Shared by concurrent batches: the map sits behind a lock, held for one lookup pass.
#[pyclass(frozen)]
pub struct PairGroups {
    aliases: FxHashMap<String, String>,
    groups: Mutex<FxHashMap<Vec<u8>, PairGroup>>,
}

/// What a known pair resolved to: its price group (None: unpriced), and whether that group is a
/// family the model is only near (priced as "estimated", never "priced").
#[derive(Clone, Copy, Default)]
struct PairGroup {
    group: Option<u32>,
    estimated: bool,
}

#[pymethods]
impl PairGroups {
    #[new]
    fn new(aliases: Vec<(String, String)>) -> Self {
        PairGroups {
            aliases: aliases.into_iter().collect(),
            groups: Mutex::new(FxHashMap::default()),
        }
    }

    /// Known pairs: (provider, model, price group or None when unpriced, estimated).
    #[allow(clippy::type_complexity)]
    fn add(&self, pairs: Vec<(Option<String>, Option<String>, Option<u32>, bool)>) {
        let mut groups = self.groups.lock().expect("pair lock");
        let mut key = Vec::new();
        for (provider, model, group, estimated) in pairs {
            pair_key(&mut key, provider.as_deref(), model.as_deref());
            groups.insert(key.clone(), PairGroup { group, estimated });
        }
    }

    fn clear(&self) {
        self.groups.lock().expect("pair lock").clear();
    }

    fn __len__(&self) -> usize {
        self.groups.lock().expect("pair lock").len()
    }
}

/// One string per (provider, model), nulls included, that no two pairs share.
fn pair_key(key: &mut Vec<u8>, provider: Option<&str>, model: Option<&str>) {
    key.clear();
    for part in [provider, model] {
        match part {
            None => key.push(0),
            Some(text) => {
                key.push(1);
                key.extend_from_slice(&(text.len() as u32).to_le_bytes());
                key.extend_from_slice(text.as_bytes());
            }
        }
    }
}

/// The price rows of one PriceSlots (processor/stages/cost/pricing_table.py): per row its bounds, threshold,
/// prices and entry names; per group its rows in slot order.
#[pyclass(frozen)]
pub struct PriceRows {
    threshold: Vec<i64>,
    lo: Vec<i64>,
    hi: Vec<i64>,
    /// input, output, cache_read, cache_write, reasoning, request
    prices: Vec<[f64; 6]>,
    entry_provider: Vec<String>,
    entry_model: Vec<String>,
    members: Vec<Vec<u32>>,
    dated: bool,
}

#[pymethods]
impl PriceRows {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        threshold: Vec<i64>,
        lo: Vec<i64>,
        hi: Vec<i64>,
        prices: Vec<[f64; 6]>,
        entry_provider: Vec<String>,
        entry_model: Vec<String>,
        members: Vec<Vec<u32>>,
        dated: bool,
    ) -> PyResult<Self> {
        let rows = threshold.len();
        let same = [
            lo.len(),
            hi.len(),
            prices.len(),
            entry_provider.len(),
            entry_model.len(),
        ]
        .iter()
        .all(|&n| n == rows);
        if !same || members.iter().flatten().any(|&row| row as usize >= rows) {
            return Err(PyValueError::new_err("inconsistent price rows"));
        }
        Ok(PriceRows {
            threshold,
            lo,
            hi,
            prices,
            entry_provider,
            entry_model,
            members,
            dated,
        })
    }
}

impl PriceRows {
    /// As row_steps picks it: the group's last row (thresholds ascend) in effect at the start
    /// whose threshold is below the prompt size.
    fn pick(&self, group: u32, start: Option<i64>, prompt: i64) -> Option<usize> {
        let members = self.members.get(group as usize)?;
        let (start_lo, start_hi) = (start.unwrap_or(i64::MIN), start.unwrap_or(i64::MAX));
        members.iter().rev().map(|&row| row as usize).find(|&row| {
            (!self.dated || (start_lo >= self.lo[row] && start_hi <= self.hi[row]))
                && prompt > self.threshold[row]
        })
    }
}

/// A text column's values, each the first non-blank of its sources, stripped.
fn first_text(sources: &[ArrowIn], row: usize, verbatim: bool) -> PyResult<Option<&str>> {
    for source in sources {
        if !source.is_valid(row) {
            continue;
        }
        let text = std::str::from_utf8(source.view_at(row)?)
            .map_err(|_| PyValueError::new_err("string column is not UTF-8"))?;
        if verbatim {
            return Ok(Some(text));
        }
        let text = text.trim();
        if !text.is_empty() {
            return Ok(Some(text));
        }
    }
    Ok(None)
}

/// As polars casts with strict=False: Float64 → Int64 truncates, out of range or NaN is null.
fn float_to_int(value: f64) -> Option<i64> {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2^63
    (-LIMIT..LIMIT).contains(&value).then_some(value as i64)
}

/// A token count's first non-null source (a string is stripped and read as a float first);
/// negative counts are absent.
fn first_count(sources: &[ArrowIn], row: usize, verbatim: bool) -> PyResult<Option<i64>> {
    for source in sources {
        if !source.is_valid(row) {
            continue;
        }
        let value = match source.kind {
            Kind::I64 => Some(source.i64_at(row)),
            Kind::F64 => float_to_int(source.f64_at(row)),
            Kind::String => std::str::from_utf8(source.view_at(row)?)
                .ok()
                .and_then(|text| text.trim().parse::<f64>().ok())
                .and_then(float_to_int),
            _ => return Err(PyValueError::new_err("unsupported token column")),
        };
        if let Some(value) = value {
            return Ok(if verbatim || value >= 0 {
                Some(value)
            } else {
                None
            });
        }
    }
    Ok(None)
}

/// The six terms of the total in the order polars' sum_horizontal adds its columns: a rayon
/// reduction that halves the list once per level while its split budget (the pool's thread
/// count, halved per split) lasts. One thread: ((a+b)+c)+((d+e)+f); two or more, every level
/// splits: (a+(b+c))+(d+(e+f)).
#[inline]
fn total_of(terms: [f64; 6], threaded: bool) -> f64 {
    let [a, b, c, d, e, f] = terms;
    if threaded {
        (a + (b + c)) + (d + (e + f))
    } else {
        ((a + b) + c) + ((d + e) + f)
    }
}

/// The canonical GenAI columns of one span.
struct Span<'a> {
    model: Option<&'a str>,
    provider: Option<std::borrow::Cow<'a, str>>,
    tokens: [Option<i64>; 5],
}

fn normalise<'a>(
    texts: &'a [Vec<ArrowIn>],
    counts: &'a [Vec<ArrowIn>],
    aliases: &'a FxHashMap<String, String>,
    row: usize,
    verbatim: bool,
) -> PyResult<Span<'a>> {
    let model = first_text(&texts[MODEL], row, verbatim)?;
    let provider = first_text(&texts[PROVIDER], row, verbatim)?.map(|name| {
        if verbatim {
            return std::borrow::Cow::Borrowed(name);
        }
        let lowered = if name
            .bytes()
            .any(|b| b.is_ascii_uppercase() || !b.is_ascii())
        {
            std::borrow::Cow::Owned(name.to_lowercase())
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        match aliases.get(lowered.as_ref()) {
            Some(alias) => std::borrow::Cow::Borrowed(alias.as_str()),
            None => lowered,
        }
    });
    let mut tokens = [None; 5];
    for (slot, sources) in tokens.iter_mut().zip(counts) {
        *slot = first_count(sources, row, verbatim)?;
    }
    if !verbatim {
        // Input includes cache reads and writes, output includes reasoning (genai_attributes.py).
        let cached = tokens[CACHE_READ]
            .unwrap_or(0)
            .wrapping_add(tokens[CACHE_WRITE].unwrap_or(0));
        if let Some(input) = tokens[INPUT] {
            if input < cached {
                tokens[INPUT] = Some(input.wrapping_add(cached));
            }
        }
        let reasoning = tokens[REASONING].unwrap_or(0);
        if let Some(output) = tokens[OUTPUT] {
            if output < reasoning {
                tokens[OUTPUT] = Some(output.wrapping_add(reasoning));
            }
        }
    }
    Ok(Span {
        model,
        provider,
        tokens,
    })
}

/// A column of `len` rows, null until set: most spans of a batch are not GenAI spans, so only
/// the few that are get written.
struct Validity {
    bits: Vec<u8>,
    set: usize,
}

impl Validity {
    fn new(len: usize) -> Self {
        Validity {
            bits: vec![0; len.div_ceil(8)],
            set: 0,
        }
    }

    #[inline]
    fn set(&mut self, row: usize) {
        self.bits[row / 8] |= 1 << (row % 8);
        self.set += 1;
    }

    /// As a validity buffer: None when every row is set, which Arrow allows and is cheaper.
    fn to_py<'py>(&self, py: Python<'py>, len: usize) -> Option<Bound<'py, PyBytes>> {
        (self.set < len).then(|| PyBytes::new(py, &self.bits))
    }
}

/// Int64 or Float64 values and their validity.
struct Numbers<T> {
    values: Vec<T>,
    valid: Validity,
}

impl<T: Copy + Default> Numbers<T> {
    fn new(len: usize) -> Self {
        Numbers {
            values: vec![T::default(); len],
            valid: Validity::new(len),
        }
    }

    #[inline]
    fn set(&mut self, row: usize, value: T) {
        self.values[row] = value;
        self.valid.set(row);
    }
}

type NumberBuffers<'py> = (Option<Bound<'py, PyBytes>>, Bound<'py, PyBytes>);

impl<T: crate::otlp::arrow::Plain + Default> Numbers<T> {
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<NumberBuffers<'py>> {
        let values = crate::otlp::arrow::plain_to_py(py, &[&self.values])?;
        Ok((self.valid.to_py(py, self.values.len()), values))
    }
}

/// A string view column, null until set. The views of values that repeat (entry names, the
/// version, the status) are made once: they are recognised by address, as they are slices of the
/// price rows, the arguments or the input buffers, which stay put for the call.
struct Texts {
    views: Vec<View>,
    data: Vec<u8>,
    valid: Validity,
    stored: FxHashMap<(usize, usize), View>,
}

impl Texts {
    fn new(len: usize) -> Self {
        Texts {
            views: vec![[0u8; 16]; len],
            data: Vec::new(),
            valid: Validity::new(len),
            stored: FxHashMap::default(),
        }
    }

    /// A value that repeats across rows (a price row's names, a constant): its view is made once.
    #[inline]
    fn set(&mut self, row: usize, value: &str) {
        let bytes = value.as_bytes();
        let key = (bytes.as_ptr() as usize, bytes.len());
        let view = match self.stored.get(&key) {
            Some(&view) => view,
            None => {
                let view = self.view(bytes);
                self.stored.insert(key, view);
                view
            }
        };
        self.views[row] = view;
        self.valid.set(row);
    }

    /// A value of this row only (a span's own model name).
    #[inline]
    fn set_once(&mut self, row: usize, value: &str) {
        self.views[row] = self.view(value.as_bytes());
        self.valid.set(row);
    }

    #[inline]
    fn view(&mut self, bytes: &[u8]) -> View {
        if bytes.len() > INLINE {
            return view_of(bytes, &mut self.data);
        }
        // Built in a register: a variable-length copy into the view stalls the loads after it.
        let mut word = bytes.len() as u128;
        for (i, &byte) in bytes.iter().enumerate() {
            word |= (byte as u128) << (32 + 8 * i);
        }
        word.to_le_bytes()
    }

    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<crate::otlp::arrow::ViewBuffers<'py>> {
        Ok((
            self.valid.to_py(py, self.views.len()),
            crate::otlp::arrow::plain_to_py(py, &[&self.views])?,
            PyBytes::new(py, &self.data),
        ))
    }
}

fn extract_columns(columns: &Bound<'_, PyList>) -> PyResult<Vec<Vec<ArrowIn>>> {
    columns
        .iter()
        .map(|sources| {
            sources
                .try_iter()?
                .map(|source| ArrowIn::extract(&source?))
                .collect::<PyResult<Vec<_>>>()
        })
        .collect()
}

/// One batch of the cost stage.
///
/// texts: [model sources, provider sources]; counts: the sources of the five token columns (in
/// ga.TOKEN_COLUMNS order); each source an Arrow array as arrow.rs reads it. `verbatim`: the
/// sources are the normalised columns themselves (one each), taken as they are. start: the span
/// start (i64; `start_unsigned`: UInt64 bits, past Int64 read as null). sdk_priced: Boolean, a span
/// the SDK priced (not to be priced again), or None.
///
/// Returns ("unknown", [(provider, model)]) when pairs are missing from `pairs`; else ("done",
/// genai, written, priced counts, unpriced counts, estimated counts, savings) with genai the seven canonical columns and
/// written the stage's columns (genops.cost.* in WRITTEN order), None when no span had anything
/// to price; savings (None: no priced span read cached tokens) the cache savings column and the
/// rows of it left to Python. `threaded`: polars runs with more than one thread (see total_of).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (texts, counts, verbatim, start, start_unsigned, sdk_priced, pairs, prices, version, threaded))]
pub fn cost_batch<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyList>,
    counts: &Bound<'py, PyList>,
    verbatim: bool,
    start: &Bound<'py, PyAny>,
    start_unsigned: bool,
    sdk_priced: Option<&Bound<'py, PyAny>>,
    pairs: &PairGroups,
    prices: &PriceRows,
    version: &str,
    threaded: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let texts = extract_columns(texts)?;
    let counts = extract_columns(counts)?;
    let start = ArrowIn::extract(start)?;
    let sdk_priced = sdk_priced.map(ArrowIn::extract).transpose()?;
    if texts.len() != 2 || counts.len() != 5 || start.kind != Kind::I64 {
        return Err(PyValueError::new_err("cost_batch: unexpected columns"));
    }
    let text_kinds_ok = texts.iter().flatten().all(|s| s.kind == Kind::String);
    let count_kinds_ok = counts
        .iter()
        .flatten()
        .all(|s| matches!(s.kind, Kind::I64 | Kind::F64 | Kind::String));
    let sources_ok = texts
        .iter()
        .chain(&counts)
        .flatten()
        .all(|s| s.len == start.len);
    if !text_kinds_ok || !count_kinds_ok || !sources_ok {
        return Err(PyValueError::new_err(
            "cost_batch: unexpected column kinds or lengths",
        ));
    }
    let n = start.len;
    let mut spans = Vec::with_capacity(n);
    for row in 0..n {
        spans.push(normalise(&texts, &counts, &pairs.aliases, row, verbatim)?);
    }
    // Spans with token counts, less those the SDK priced: what gets a price (or "unpriced").
    let todo: Vec<bool> = (0..n)
        .map(|row| {
            spans[row].tokens.iter().any(Option::is_some)
                && !sdk_priced
                    .as_ref()
                    .is_some_and(|p| p.is_valid(row) && p.bool_at(row))
        })
        .collect();
    let mut group_of: Vec<PairGroup> = vec![PairGroup::default(); n];
    {
        let known = pairs.groups.lock().expect("pair lock");
        let mut key = Vec::new();
        let mut unknown: FxHashSet<Vec<u8>> = FxHashSet::default();
        let missing = PyList::empty(py);
        for row in (0..n).filter(|&row| todo[row]) {
            let span = &spans[row];
            pair_key(&mut key, span.provider.as_deref(), span.model);
            match known.get(&key) {
                Some(&found) => group_of[row] = found,
                None => {
                    if unknown.insert(key.clone()) {
                        missing.append((span.provider.as_deref(), span.model))?;
                    }
                }
            }
        }
        if !unknown.is_empty() {
            return ("unknown", missing).into_pyobject(py).map(Bound::into_any);
        }
    }

    let genai = genai_columns(py, &spans)?;
    if !todo.iter().any(|&t| t) {
        return (
            "done",
            genai,
            py.None(),
            PyList::empty(py),
            PyList::empty(py),
            PyList::empty(py),
            py.None(),
        )
            .into_pyobject(py)
            .map(Bound::into_any);
    }

    let mut parts: [Numbers<f64>; 5] = std::array::from_fn(|_| Numbers::new(n));
    let mut total = Numbers::<f64>::new(n);
    let mut currency = Texts::new(n);
    let mut provider_out = Texts::new(n);
    let mut model_out = Texts::new(n);
    let mut version_out = Texts::new(n);
    let mut status = Texts::new(n);
    let mut priced_counts: FxHashMap<&str, u64> = FxHashMap::default();
    let mut unpriced_counts: FxHashMap<(Option<&str>, Option<&str>), u64> = FxHashMap::default();
    let mut estimated_counts: FxHashMap<(Option<&str>, Option<&str>), u64> = FxHashMap::default();
    // genops.cost.cache_savings (processor/stages/cost/cache_savings.py) of the priced spans that
    // read cached tokens, and those of them left to Python: a span without a start (or at 0),
    // whose entry cache_savings.entry_at picks otherwise than the dates here.
    let mut savings = Numbers::<f64>::new(n);
    let mut savings_left: Vec<usize> = Vec::new();
    let one_row = n == 1;
    for row in (0..n).filter(|&row| todo[row]) {
        let span = &spans[row];
        let start = (start.is_valid(row) && !(start_unsigned && start.i64_at(row) < 0))
            .then(|| start.i64_at(row));
        let tokens = span.tokens;
        let prompt = tokens[INPUT].unwrap_or(0);
        let chosen = group_of[row]
            .group
            .and_then(|group| prices.pick(group, start, prompt));
        let Some(price_row) = chosen else {
            status.set(row, "unpriced");
            *unpriced_counts
                .entry((span.provider.as_deref(), span.model))
                .or_default() += 1;
            continue;
        };
        let price = &prices.prices[price_row];
        let cache_read = tokens[CACHE_READ].unwrap_or(0);
        let cache_write = tokens[CACHE_WRITE].unwrap_or(0);
        let reasoning = tokens[REASONING].unwrap_or(0);
        let output = tokens[OUTPUT].or(tokens[REASONING]).unwrap_or(0);
        let uncached = prompt
            .wrapping_sub(cache_read)
            .wrapping_sub(cache_write)
            .max(0);
        let output = output.wrapping_sub(reasoning).max(0);
        // cost.py's parts, in its order: (tokens * price) / MILLION, as polars computes it.
        let input_cost = per_million(uncached as f64 * price[0], one_row);
        let cache_read_cost = per_million(cache_read as f64 * price[2], one_row);
        if cache_read > 0 {
            match start {
                Some(at) if at != 0 => {
                    savings.set(row, cache_savings(cache_read, cache_read_cost, price))
                }
                _ => savings_left.push(row),
            }
        }
        let cache_write_cost = per_million(cache_write as f64 * price[3], one_row);
        let reasoning_cost = per_million(reasoning as f64 * price[4], one_row);
        let output_cost = per_million(output as f64 * price[1], one_row);
        // COST_PARTS order (input, output, cache_read, cache_write, reasoning), then the fee,
        // added as polars' sum_horizontal adds them (see total_of).
        let sum = total_of(
            [
                input_cost,
                output_cost,
                cache_read_cost,
                cache_write_cost,
                reasoning_cost,
                price[5],
            ],
            threaded,
        );
        for (part, value) in parts.iter_mut().zip([
            input_cost,
            output_cost,
            cache_read_cost,
            cache_write_cost,
            reasoning_cost,
        ]) {
            part.set(row, value);
        }
        total.set(row, sum);
        currency.set(row, "USD");
        let entry_provider = prices.entry_provider[price_row].as_str();
        // A provider-agnostic ("*") entry priced it: report the provider the span named.
        let reported = if entry_provider == ANY_PROVIDER {
            span.provider.as_deref().unwrap_or(ANY_PROVIDER)
        } else {
            entry_provider
        };
        provider_out.set(row, reported);
        model_out.set(row, prices.entry_model[price_row].as_str());
        version_out.set(row, version);
        if group_of[row].estimated {
            // Counted by model, never as priced.
            *estimated_counts
                .entry((span.provider.as_deref(), span.model))
                .or_default() += 1;
            status.set(row, "estimated");
        } else {
            *priced_counts.entry(reported).or_default() += 1;
            status.set(row, "priced");
        }
    }
    let written = PyList::empty(py);
    written.append(total.to_py(py)?)?;
    for part in &parts {
        written.append(part.to_py(py)?)?;
    }
    for column in [&currency, &provider_out, &model_out, &version_out, &status] {
        written.append(column.to_py(py)?)?;
    }
    let priced = PyList::empty(py);
    for (provider, count) in priced_counts {
        priced.append((provider, count))?;
    }
    let unpriced = PyList::empty(py);
    for ((provider, model), count) in unpriced_counts {
        unpriced.append((provider, model, count))?;
    }
    let estimated = PyList::empty(py);
    for ((provider, model), count) in estimated_counts {
        estimated.append((provider, model, count))?;
    }
    let savings_out = if savings.valid.set > 0 || !savings_left.is_empty() {
        (savings.to_py(py)?, savings_left)
            .into_pyobject(py)?
            .into_any()
    } else {
        py.None().into_bound(py)
    };
    (
        "done",
        genai,
        written,
        priced,
        unpriced,
        estimated,
        savings_out,
    )
        .into_pyobject(py)
        .map(Bound::into_any)
}

/// What the cached tokens saved, as cache_savings.py works it out (same operations, same order):
/// their cost scaled by the (input - cache read) / cache read price ratio, or, where cache reads
/// are free, the tokens at the input price.
#[inline]
fn cache_savings(cache_read: i64, cache_read_cost: f64, price: &[f64; 6]) -> f64 {
    if price[2] > 0.0 {
        cache_read_cost * (price[0] - price[2]) / price[2]
    } else {
        cache_read as f64 * price[0] / MILLION
    }
}

/// The seven canonical columns: model and provider views, then the five token counts.
fn genai_columns<'py>(py: Python<'py>, spans: &[Span<'_>]) -> PyResult<Bound<'py, PyList>> {
    let n = spans.len();
    let mut model = Texts::new(n);
    let mut provider = Texts::new(n);
    let mut tokens: [Numbers<i64>; 5] = std::array::from_fn(|_| Numbers::new(n));
    for (row, span) in spans.iter().enumerate() {
        if let Some(text) = span.model {
            model.set_once(row, text);
        }
        if let Some(text) = span.provider.as_deref() {
            provider.set_once(row, text);
        }
        for (column, value) in tokens.iter_mut().zip(span.tokens) {
            if let Some(value) = value {
                column.set(row, value);
            }
        }
    }
    let out = PyList::empty(py);
    out.append(model.to_py(py)?)?;
    out.append(provider.to_py(py)?)?;
    for column in &tokens {
        out.append(column.to_py(py)?)?;
    }
    Ok(out)
}

/// The module's classes and function, added to the extension in one line of lib.rs.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PairGroups>()?;
    m.add_class::<PriceRows>()?;
    m.add_function(wrap_pyfunction!(cost_batch, m)?)
}
