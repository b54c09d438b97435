//! The policy stage over one batch in one call: which spans are GenAI spans, their attribution,
//! rule checks, budget windows and running sums, the store update (a Python callback), the charge
//! (consumed, utilization, exceeded, warned, crossings), verdict codes, budget tags and the
//! per-label operation sums the metrics read.
//!
//! Mirrors the polars queries of the differential oracle (tests/oracle/policy.py);
//! tests/stages/policy/test_policy_native.py checks both give the same changes, events, metrics and
//! stored totals. Inputs are the frame's columns as Arrow buffers read in place (arrow.rs), outputs
//! go back as Arrow buffers over the whole batch and small tables for the metrics.
//!
//! Window labels depend on time zones: the Python side answers, per (zone, period), the window
//! holding an instant (a callback, asked once per window thanks to the cache here).

use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use regex::Regex;
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;

use crate::otlp::arrow::{le_bytes, ArrowIn, Bitmap, Kind, Views};
use crate::stages::operation_totals::{Amounts, OperationTotals};

const DIMENSIONS: usize = 6;
/// Label sources past the dimensions: the span's model and provider.
const LABEL_MODEL: usize = DIMENSIONS;
const LABEL_PROVIDER: usize = DIMENSIONS + 1;
/// governance_metrics.LATENCY_BUCKETS: the histogram's upper bounds (then +Inf).
const LATENCY_BOUNDS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];
/// budgets.KEEP_CLOSED_WINDOW_SECONDS.
const KEEP_CLOSED_WINDOW_SECONDS: i64 = 7 * 86400;
/// Windows remembered per (zone, period); a bound, since late spans keep bringing old ones.
const MAX_WINDOWS: usize = 4096;

enum Check {
    MaxCost(f64),
    MaxTokens(i64),
    Pii,
    Required(Vec<usize>),
    Model {
        allow: Option<Regex>,
        deny: Option<Regex>,
    },
}

struct Rule {
    check: Check,
    /// (dimension, values): the rule applies to spans attributed to one of the values, for each.
    matches: Vec<(usize, Vec<String>)>,
}

struct Budget {
    name: String,
    period: String,
    dimension: Option<usize>,
    value: Option<String>,
    zone: usize,
    limit: f64,
    warn_min: f64,
    thresholds: Vec<f64>,
    counts_warned: bool,
}

/// A budget window: [start, end) in epoch seconds and its label.
struct Window {
    start: i64,
    end: i64,
    label: String,
}

/// (kind, match, max_usd, max_tokens, allow regex, deny regex, required dimensions).
type RuleSpec = (
    String,
    Vec<(usize, Vec<String>)>,
    f64,
    i64,
    Option<String>,
    Option<String>,
    Vec<usize>,
);
/// (name, period, dimension, value, zone, limit, lowest warn level, thresholds, counts toward
/// "warned").
type BudgetSpec = (
    String,
    String,
    Option<usize>,
    Option<String>,
    usize,
    f64,
    f64,
    Vec<f64>,
    bool,
);

#[pyclass(frozen)]
pub struct PolicyPlan {
    /// Per dimension, the text columns tried in order.
    dimensions: Vec<Vec<usize>>,
    /// Text columns: genops.cost.model, genops.cost.provider, genops.cost.status, error.type.
    cost_model: usize,
    cost_provider: usize,
    cost_status: usize,
    error_type: usize,
    rules: Vec<Rule>,
    budgets: Vec<Budget>,
    /// Label sources of the operation metrics (dimension index, LABEL_MODEL or LABEL_PROVIDER).
    labels: Vec<usize>,
    /// The checks a verdict is made of: the rules', then the budgets' (policies.VerdictTable).
    verdicts: Verdicts,
    windows: Mutex<Vec<Vec<Window>>>,
    awu: Awu,
}

/// What the GenOps AWU columns and events are made of (processor/stages/policy/awu.py).
struct Awu {
    /// Text columns the operation name is read from, first found wins.
    operations: Vec<usize>,
    /// Per dimension, the text column of the span's own genops.<dimension>.
    own: Vec<usize>,
    /// Lowercased operation name -> its operation type (a name not listed is its own type).
    types: FxHashMap<String, String>,
    version: String,
    unit: String,
}

/// (operation name columns, own dimension columns, operation types, spec version, unit).
type AwuSpec = (
    Vec<usize>,
    Vec<usize>,
    Vec<(String, String)>,
    String,
    String,
);

/// (name, mode: 0 enforced, 1 advisory, 2 audit only, reason code) of a check.
type CheckSpec = (String, u8, String);
/// The verdict words: BLOCKED, WARNING, ALLOWED and the budget warning's reason code.
type VerdictWords = (String, String, String, String);

/// A set of check indices, any number of them (a policy has no limit on its checks). The first 64
/// live inline, so the usual policy allocates nothing per span; the rest in `more`.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
struct Bits {
    first: u64,
    more: Vec<u64>,
}

impl Bits {
    fn with_capacity(bits: usize) -> Self {
        Bits {
            first: 0,
            more: vec![0; bits.saturating_sub(64).div_ceil(64)],
        }
    }

    fn set(&mut self, bit: usize) {
        match bit.checked_sub(64) {
            None => self.first |= 1 << bit,
            Some(rest) => self.more[rest / 64] |= 1 << (rest % 64),
        }
    }

    fn get(&self, bit: usize) -> bool {
        match bit.checked_sub(64) {
            None => self.first >> bit & 1 == 1,
            Some(rest) => self.more[rest / 64] >> (rest % 64) & 1 == 1,
        }
    }
}

/// How a verdict is made of the checks a span violated (bit 0 of its code "warned", bit k + 1
/// check k), as policies.VerdictTable lays its entries out; computed once per distinct code of a
/// batch instead of tabulated for every code (2^checks of them).
struct Verdicts {
    checks: Vec<CheckSpec>,
    /// Check indices, most severe first (mode, then rank; then as listed).
    order: Vec<usize>,
    words: VerdictWords,
}

/// One verdict: the violated checks (indices, as listed), the result word (0 BLOCKED, 1 WARNING,
/// 2 ALLOWED) and the reason code (a check index, or None with `budget_warning`), None when ALLOWED.
struct Verdict {
    violated: Vec<usize>,
    result: usize,
    reason: Option<Option<usize>>,
}

impl Verdicts {
    fn verdict(&self, code: &Bits) -> Verdict {
        let warned = code.get(0);
        let violated: Vec<usize> = (0..self.checks.len()).filter(|k| code.get(k + 1)).collect();
        let has = |mode: u8| violated.iter().any(|k| self.checks[*k].1 == mode);
        let result = if has(0) {
            0
        } else if has(1) || warned {
            1
        } else {
            2
        };
        let first = self.order.iter().copied().find(|k| code.get(k + 1));
        let reason = match (result, first) {
            (2, _) => None,
            (_, Some(k)) => Some(Some(k)),
            (_, None) => warned.then_some(None),
        };
        Verdict {
            violated,
            result,
            reason,
        }
    }

    fn result(&self, verdict: &Verdict) -> &str {
        match verdict.result {
            0 => &self.words.0,
            1 => &self.words.1,
            _ => &self.words.2,
        }
    }

    fn reason(&self, verdict: &Verdict) -> Option<&str> {
        verdict.reason.map(|reason| match reason {
            Some(k) => self.checks[k].2.as_str(),
            None => self.words.3.as_str(),
        })
    }
}

/// The frame's columns for one batch, read in place.
struct Columns {
    texts: Vec<Option<ArrowIn>>,
    model: Option<ArrowIn>,
    provider: Option<ArrowIn>,
    tokens_input: Option<ArrowIn>,
    tokens_output: Option<ArrowIn>,
    cost: Option<ArrowIn>,
    pii: Option<ArrowIn>,
    status: Option<ArrowIn>,
    start: ArrowIn,
    end: Option<ArrowIn>,
    /// The batch row of each frame row (the AWU events name it).
    row: Option<ArrowIn>,
}

fn optional(value: Option<&Bound<'_, PyAny>>, kinds: &[Kind]) -> PyResult<Option<ArrowIn>> {
    match value {
        Some(v) if !v.is_none() => {
            let array = ArrowIn::extract(v)?;
            if !kinds.contains(&array.kind) {
                return Err(PyValueError::new_err("unexpected column type"));
            }
            Ok(Some(array))
        }
        _ => Ok(None),
    }
}

fn raw_text(column: &Option<ArrowIn>, row: usize) -> PyResult<Option<&str>> {
    match column {
        Some(c) if c.is_valid(row) => {
            // SAFETY: only `string` (Utf8View) columns get here (see `optional`), and polars
            // keeps its strings valid UTF-8.
            Ok(Some(unsafe {
                std::str::from_utf8_unchecked(c.view_at(row)?)
            }))
        }
        _ => Ok(None),
    }
}

/// attribution.text: trimmed, null when absent or blank.
fn text(column: &Option<ArrowIn>, row: usize) -> PyResult<Option<&str>> {
    Ok(raw_text(column, row)?
        .map(str::trim)
        .filter(|value| !value.is_empty()))
}

fn int(column: &Option<ArrowIn>, row: usize) -> Option<i64> {
    column
        .as_ref()
        .filter(|c| c.is_valid(row))
        .map(|c| c.i64_at(row))
}

fn float(column: &Option<ArrowIn>, row: usize) -> Option<f64> {
    column
        .as_ref()
        .filter(|c| c.is_valid(row))
        .map(|c| c.f64_at(row))
}

/// One evaluated (GenAI) span.
struct Span<'a> {
    position: usize,
    dims: [Option<&'a str>; DIMENSIONS],
    model: Option<&'a str>,
    provider: Option<&'a str>,
    tokens_input: Option<i64>,
    tokens_output: Option<i64>,
    cost: Option<f64>,
    error: bool,
    latency: Option<f64>,
    start: i64,
    event_time: i64,
    /// The start time as sent (0 when not) and the end time when sent.
    raw_start: i64,
    raw_end: Option<i64>,
    /// Bit k: rule k violated.
    rules: Bits,
}

impl Rule {
    fn violated(&self, span: &Span<'_>, pii: Option<i64>) -> bool {
        for (dimension, values) in &self.matches {
            match span.dims[*dimension] {
                Some(value) if values.iter().any(|v| v == value) => {}
                _ => return false,
            }
        }
        match &self.check {
            Check::MaxCost(max) => span.cost.is_some_and(|c| c > *max),
            Check::MaxTokens(max) => {
                span.tokens_input
                    .unwrap_or(0)
                    .wrapping_add(span.tokens_output.unwrap_or(0))
                    > *max
            }
            Check::Pii => pii.is_some_and(|count| count > 0),
            Check::Required(dimensions) => dimensions.iter().any(|d| span.dims[*d].is_none()),
            Check::Model { allow, deny } => span.model.is_some_and(|model| {
                allow.as_ref().is_some_and(|r| !r.is_match(model))
                    || deny.as_ref().is_some_and(|r| r.is_match(model))
            }),
        }
    }
}

/// Polars' round (half to even) to `decimals` places.
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round_ties_even() / scale
}

/// Polars' grouped float sum as it runs on groups of fewer than 128 spans: compensated (Kahan),
/// in span order. (Larger groups polars sums another way, which depends on its threads too: the
/// metric may then differ in its last bits.)
#[derive(Default, Clone, Copy)]
struct Kahan {
    sum: f64,
    carry: f64,
}

impl Kahan {
    fn add(&mut self, value: f64) {
        let y = value - self.carry;
        let t = self.sum + y;
        self.carry = (t - self.sum) - y;
        self.sum = t;
    }
}

#[derive(Clone)]
struct Group {
    cost: Kahan,
    tokens_input: i64,
    tokens_output: i64,
    count: u64,
    errors: u64,
    buckets: [u64; 13],
    latency_sum: f64,
    latencies: Vec<f64>,
}

impl Group {
    fn new() -> Self {
        Group {
            cost: Kahan::default(),
            tokens_input: 0,
            tokens_output: 0,
            count: 0,
            errors: 0,
            buckets: [0; 13],
            latency_sum: 0.0,
            latencies: Vec::new(),
        }
    }

    fn add(&mut self, span: &Span<'_>) {
        if let Some(cost) = span.cost {
            self.cost.add(cost);
        }
        self.tokens_input = self
            .tokens_input
            .wrapping_add(span.tokens_input.unwrap_or(0));
        self.tokens_output = self
            .tokens_output
            .wrapping_add(span.tokens_output.unwrap_or(0));
        self.count += 1;
        self.errors += u64::from(span.error);
        if let Some(latency) = span.latency.filter(|l| *l >= 0.0) {
            // bisect_left: the first bound >= the value.
            let bucket = LATENCY_BOUNDS.partition_point(|bound| *bound < latency);
            self.buckets[bucket] += 1;
            self.latency_sum += latency;
            self.latencies.push(latency);
        }
    }

    /// (bucket, latencies in it) of the buckets hit.
    fn hits(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        (0..self.buckets.len())
            .filter(|b| self.buckets[*b] > 0)
            .map(|b| (b, self.buckets[b]))
    }

    /// The sums as the Python path adds a row of them (ints converted as Python converts them).
    fn amounts(&self) -> Amounts<impl Iterator<Item = (usize, f64)> + '_> {
        Amounts {
            cost: self.cost.sum,
            tokens_input: self.tokens_input as f64,
            tokens_output: self.tokens_output as f64,
            tokens: self.tokens_input.wrapping_add(self.tokens_output) as f64,
            operations: self.count as f64,
            errors: self.errors as f64,
            latency: (!self.latencies.is_empty())
                .then(|| (self.hits().map(|(b, n)| (b, n as f64)), self.latency_sum)),
        }
    }
}

fn f64_column<'py>(py: Python<'py>, values: &[Option<f64>]) -> PyResult<Bound<'py, PyTuple>> {
    let mut validity = Bitmap::with_capacity(values.len());
    let plain: Vec<f64> = values
        .iter()
        .map(|v| {
            validity.push(v.is_some());
            v.unwrap_or(0.0)
        })
        .collect();
    PyTuple::new(
        py,
        [
            validity.validity_to_py(py).into_pyobject(py)?.into_any(),
            le_bytes(py, &plain)?.into_any(),
        ],
    )
}

fn bool_column<'py>(py: Python<'py>, values: &[Option<bool>]) -> PyResult<Bound<'py, PyTuple>> {
    let mut validity = Bitmap::with_capacity(values.len());
    let mut bits = Bitmap::with_capacity(values.len());
    for value in values {
        validity.push(value.is_some());
        bits.push(value.unwrap_or(false));
    }
    PyTuple::new(
        py,
        [
            validity.validity_to_py(py).into_pyobject(py)?.into_any(),
            bits.to_py(py).into_any(),
        ],
    )
}

impl PolicyPlan {
    fn read<'a>(
        &self,
        columns: &'a Columns,
        rows: usize,
        now: i64,
    ) -> PyResult<Option<Vec<Span<'a>>>> {
        let mut spans = Vec::new();
        for row in 0..rows {
            let model = match raw_text(&columns.model, row)? {
                Some(model) => Some(model),
                None => text(&columns.texts[self.cost_model], row)?,
            };
            let cost = float(&columns.cost, row);
            let tokens_input = int(&columns.tokens_input, row);
            let tokens_output = int(&columns.tokens_output, row);
            let evaluated = model.is_some()
                || cost.is_some()
                || tokens_input.is_some()
                || tokens_output.is_some()
                || text(&columns.texts[self.cost_status], row)?.is_some();
            if !evaluated {
                continue;
            }
            if cost.is_some_and(|c| !c.is_finite()) {
                // Polars orders NaN its own way: such a batch is refused (check_batch clears it first).
                return Ok(None);
            }
            let provider = match raw_text(&columns.provider, row)? {
                Some(provider) => Some(provider),
                None => text(&columns.texts[self.cost_provider], row)?,
            };
            let mut dims = [None; DIMENSIONS];
            for (dim, sources) in self.dimensions.iter().enumerate() {
                for source in sources {
                    if let Some(value) = text(&columns.texts[*source], row)? {
                        dims[dim] = Some(value);
                        break;
                    }
                }
            }
            let raw_start = columns.start.i64_at(row);
            let raw_end = columns
                .end
                .as_ref()
                .filter(|c| c.is_valid(row))
                .map(|c| c.i64_at(row));
            if raw_start < 0 || raw_end.is_some_and(|end| end < 0) {
                // Past i64 as unsigned: refused, as the polars oracle fails on the cast.
                return Ok(None);
            }
            let start = if raw_start > 0 { raw_start } else { now };
            let latency = match raw_end {
                Some(end) if end >= raw_start && raw_start > 0 => {
                    Some((end - raw_start) as f64 * (1.0 / 1e9))
                }
                _ => None,
            };
            let error = text(&columns.texts[self.error_type], row)?.is_some()
                || int(&columns.status, row) == Some(2);
            let mut span = Span {
                position: row,
                dims,
                model,
                provider,
                tokens_input,
                tokens_output,
                cost,
                error,
                latency,
                start,
                event_time: raw_end.unwrap_or(start),
                raw_start,
                raw_end,
                rules: Bits::with_capacity(self.rules.len()),
            };
            let pii = int(&columns.pii, row);
            for (k, rule) in self.rules.iter().enumerate() {
                if rule.violated(&span, pii) {
                    span.rules.set(k);
                }
            }
            spans.push(span);
        }
        Ok(Some(spans))
    }

    fn zone_count(&self) -> usize {
        self.windows.lock().expect("window cache").len()
    }

    /// (start, end, label) of the window of (zone, period) `zone` holding `seconds`, asking
    /// `window_of(zone, seconds)` for windows not seen yet.
    fn window(
        &self,
        zone: usize,
        seconds: i64,
        window_of: &Bound<'_, PyAny>,
    ) -> PyResult<(i64, i64, String)> {
        {
            let windows = self.windows.lock().expect("window cache");
            let known = &windows[zone];
            let at = known.partition_point(|w| w.start <= seconds);
            if at > 0 && seconds < known[at - 1].end {
                let found = &known[at - 1];
                return Ok((found.start, found.end, found.label.clone()));
            }
        }
        let (start, end, label): (i64, i64, String) =
            window_of.call1((zone, seconds))?.extract()?;
        if !(start <= seconds && seconds < end) {
            return Err(PyValueError::new_err(
                "budget window does not hold its instant",
            ));
        }
        let mut windows = self.windows.lock().expect("window cache");
        let known = &mut windows[zone];
        if known.len() >= MAX_WINDOWS {
            known.clear();
        }
        let at = known.partition_point(|w| w.start < start);
        known.insert(
            at,
            Window {
                start,
                end,
                label: label.clone(),
            },
        );
        Ok((start, end, label))
    }
}

#[pymethods]
impl PolicyPlan {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        dimensions: Vec<Vec<usize>>,
        cost_texts: (usize, usize, usize, usize),
        rules: Vec<RuleSpec>,
        budgets: Vec<BudgetSpec>,
        zones: usize,
        labels: Vec<usize>,
        checks: Vec<CheckSpec>,
        order: Vec<usize>,
        words: VerdictWords,
        awu: AwuSpec,
    ) -> PyResult<Self> {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        let (operations, own, types, version, unit) = awu;
        if dimensions.len() != DIMENSIONS
            || own.len() != DIMENSIONS
            || checks.len() != rules.len() + budgets.len()
            || sorted != (0..checks.len()).collect::<Vec<_>>()
            || checks.iter().any(|(_, mode, _)| *mode > 2)
        {
            return Err(PyValueError::new_err("unsupported policy plan"));
        }
        let regex = |pattern: Option<String>| {
            pattern
                .map(|p| Regex::new(&p).map_err(|e| PyValueError::new_err(e.to_string())))
                .transpose()
        };
        let rules = rules
            .into_iter()
            .map(
                |(kind, matches, max_usd, max_tokens, allow, deny, required)| {
                    let check = match kind.as_str() {
                        "max_cost_per_operation" => Check::MaxCost(max_usd),
                        "max_tokens_per_request" => Check::MaxTokens(max_tokens),
                        "pii_detected" => Check::Pii,
                        "required_attribution" => Check::Required(required),
                        "model_access" => Check::Model {
                            allow: regex(allow)?,
                            deny: regex(deny)?,
                        },
                        other => {
                            return Err(PyValueError::new_err(format!("unknown rule type {other}")))
                        }
                    };
                    Ok(Rule { check, matches })
                },
            )
            .collect::<PyResult<Vec<_>>>()?;
        let budgets = budgets
            .into_iter()
            .map(
                |(
                    name,
                    period,
                    dimension,
                    value,
                    zone,
                    limit,
                    warn_min,
                    thresholds,
                    counts_warned,
                )| {
                    Budget {
                        name,
                        period,
                        dimension,
                        value,
                        zone,
                        limit,
                        warn_min,
                        thresholds,
                        counts_warned,
                    }
                },
            )
            .collect();
        let (cost_model, cost_provider, cost_status, error_type) = cost_texts;
        Ok(PolicyPlan {
            dimensions,
            cost_model,
            cost_provider,
            cost_status,
            error_type,
            rules,
            budgets,
            labels,
            verdicts: Verdicts {
                checks,
                order,
                words,
            },
            windows: Mutex::new((0..zones).map(|_| Vec::new()).collect()),
            awu: Awu {
                operations,
                own,
                types: types.into_iter().collect(),
                version,
                unit,
            },
        })
    }

    /// One batch. `texts`: the text columns the plan indexes (None: absent); `numbers`: genai
    /// model, provider, tokens input, tokens output, cost, PII count, status code, start, end,
    /// batch row.
    /// `apply(increments, expires_at)` -> (totals, repeated) is the store; `window_of` see
    /// `label`; `relabel(label tuples)` -> the metric label tuples (null as "unknown", capped);
    /// `forecast`: (now in ns, per budget (seconds since its window opened, seconds left in it)),
    /// for the forecast tag (see `forecast_column`).
    ///
    /// `subjects`: the subject columns of the budgets keyed on a span attribute (see
    /// `SubjectColumn`).
    ///
    /// Returns None when the batch cannot be charged (NaN or infinite cost), () when no
    /// span is a GenAI span, else (code, tags or None, events, levels, check counts, code counts,
    /// groups or None for a repeated batch, AWU columns or None: see `awu`).
    #[allow(clippy::too_many_arguments)]
    /// `in_span`: a bool column of the rows that are no call of their own (log records naming a
    /// span: log_charges.py), never evaluated.
    #[pyo3(signature = (rows, texts, numbers, now_ns, now_s, apply, window_of, relabel, subjects=Vec::new(), in_span=None, forecast=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        rows: usize,
        texts: Vec<Option<Bound<'py, PyAny>>>,
        numbers: Vec<Option<Bound<'py, PyAny>>>,
        now_ns: i64,
        now_s: i64,
        apply: Bound<'py, PyAny>,
        window_of: Bound<'py, PyAny>,
        relabel: Bound<'py, PyAny>,
        subjects: Vec<SubjectColumn<'py>>,
        in_span: Option<Bound<'py, PyAny>>,
        forecast: Option<ForecastSpec>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let keyed = self.keyed_subjects(rows, &subjects)?;
        use Kind::{String as Str, F64, I64};
        let get = |i: usize| numbers.get(i).and_then(|v| v.as_ref());
        let columns = Columns {
            texts: texts
                .iter()
                .map(|t| optional(t.as_ref(), &[Str]))
                .collect::<PyResult<_>>()?,
            model: optional(get(0), &[Str])?,
            provider: optional(get(1), &[Str])?,
            tokens_input: optional(get(2), &[I64])?,
            tokens_output: optional(get(3), &[I64])?,
            cost: optional(get(4), &[F64])?,
            pii: optional(get(5), &[I64])?,
            status: optional(get(6), &[I64])?,
            start: optional(get(7), &[I64])?
                .ok_or_else(|| PyValueError::new_err("start times are required"))?,
            end: optional(get(8), &[I64])?,
            row: optional(get(9), &[I64])?,
        };
        let Some(mut spans) = self.read(&columns, rows, now_ns)? else {
            return Ok(None);
        };
        if let Some(in_span) = optional(in_span.as_ref(), &[Kind::Bool])? {
            spans.retain(|s| !(in_span.is_valid(s.position) && in_span.bool_at(s.position)));
        }
        if spans.is_empty() {
            return Ok(Some(PyTuple::empty(py).into_any()));
        }

        // Windows: per budget and span, the key charged and the running sum up to the span.
        let budgets = &self.budgets;
        let any_priced = spans.iter().any(|s| s.cost.is_some_and(|c| c > 0.0));
        let mut keys: Vec<String> = Vec::new();
        let mut key_index: FxHashMap<(usize, &str, i64), usize> = FxHashMap::default();
        let mut sums: Vec<f64> = Vec::new();
        let mut ends: Vec<i64> = Vec::new();
        let mut labels: Vec<String> = Vec::new();
        let mut subjects: Vec<String> = Vec::new();
        // Per budget, per span: (key index, running sum).
        let mut charged: Vec<Vec<Option<(usize, f64)>>> = Vec::with_capacity(budgets.len());
        if any_priced {
            // Per zone, the window last found: a batch's spans mostly share one.
            let mut last: Vec<Option<(i64, i64, String)>> = vec![None; self.zone_count()];
            for (b, budget) in budgets.iter().enumerate() {
                let mut column = Vec::with_capacity(spans.len());
                for span in spans.iter() {
                    let cost = match span.cost {
                        Some(cost) if cost > 0.0 => cost,
                        _ => {
                            column.push(None);
                            continue;
                        }
                    };
                    let Some(subject) = budget_subject(budget, &keyed[b], span)? else {
                        column.push(None);
                        continue;
                    };
                    let seconds = span.start.div_euclid(1_000_000_000);
                    let window = match &last[budget.zone] {
                        Some(found) if found.0 <= seconds && seconds < found.1 => found,
                        _ => {
                            let found = self.window(budget.zone, seconds, &window_of)?;
                            last[budget.zone].insert(found)
                        }
                    };
                    // Keyed by (budget, subject, window start): the key text is built once per window.
                    let index = match key_index.entry((b, subject, window.0)) {
                        Entry::Occupied(entry) => {
                            let index = *entry.get();
                            sums[index] += cost;
                            index
                        }
                        Entry::Vacant(entry) => {
                            let index = keys.len();
                            entry.insert(index);
                            keys.push(format!("{}|{}|{}", budget.name, subject, window.2));
                            sums.push(cost);
                            ends.push(window.1);
                            labels.push(window.2.clone());
                            subjects.push(subject.to_string());
                            index
                        }
                    };
                    column.push(Some((index, sums[index])));
                }
                charged.push(column);
            }
        }
        let increments = PyDict::new(py);
        let expires = PyDict::new(py);
        for (index, key) in keys.iter().enumerate() {
            increments.set_item(key, 0.0 + sums[index])?;
            // A late span's window may have closed long ago: kept from now on, not from its end.
            expires.set_item(key, ends[index].max(now_s) + KEEP_CLOSED_WINDOW_SECONDS)?;
        }
        let (totals, repeated): (Bound<'py, PyDict>, bool) =
            apply.call1((increments, expires))?.extract()?;
        let mut before = Vec::with_capacity(keys.len());
        for (index, key) in keys.iter().enumerate() {
            let total: f64 = totals
                .get_item(key)?
                .ok_or_else(|| PyValueError::new_err("the store left out a window"))?
                .extract()?;
            before.push(total - (0.0 + sums[index]));
        }
        let is_charged = !keys.is_empty();

        // Charge, verdict codes, tags.
        let rule_count = self.rules.len();
        let width = rule_count + budgets.len() + 1;
        // Per row, its verdict: an index into `verdicts`, one per distinct code of the batch.
        let mut code: Vec<Option<usize>> = vec![None; rows];
        let mut code_index: FxHashMap<Bits, usize> = FxHashMap::default();
        let mut verdicts: Vec<Verdict> = Vec::new();
        let mut code_counts: Vec<u64> = Vec::new();
        let mut check_counts = vec![0u64; rule_count + budgets.len()];
        let mut tag_best = vec![None; rows];
        let mut tag_consumed = vec![None; rows];
        let mut tag_remaining = vec![None; rows];
        let mut tag_utilization = vec![None; rows];
        let mut tag_exceeded = vec![None; rows];
        // Per budget, subject -> (order of first charge, consumed after the last charge).
        let mut levels: Vec<Vec<(String, f64)>> = vec![Vec::new(); budgets.len()];
        let mut level_index: Vec<FxHashMap<&str, usize>> =
            vec![FxHashMap::default(); budgets.len()];
        // (budget, span index, threshold, consumed).
        let mut crossings: Vec<(usize, usize, f64, f64)> = Vec::new();
        for (i, span) in spans.iter().enumerate() {
            let mut bits = Bits::with_capacity(width);
            for k in 0..rule_count {
                if span.rules.get(k) {
                    bits.set(k + 1);
                }
            }
            let mut warned = false;
            let mut top: Option<(usize, f64, f64, bool)> = None;
            for (b, budget) in budgets.iter().enumerate() {
                let Some(Some((key, running))) = charged.get(b).map(|c| c[i]) else {
                    continue;
                };
                let consumed = before[key] + running;
                let utilization = consumed / budget.limit;
                let exceeded = consumed > budget.limit;
                if exceeded {
                    bits.set(rule_count + b + 1);
                    check_counts[rule_count + b] += 1;
                }
                warned |= budget.counts_warned && utilization >= budget.warn_min;
                if top.is_none_or(|(_, highest, ..)| utilization > highest) {
                    top = Some((b, utilization, consumed, exceeded));
                }
                let previous = consumed - span.cost.unwrap_or(0.0);
                for threshold in &budget.thresholds {
                    let level = threshold * budget.limit;
                    let crossed = if *threshold < 1.0 {
                        previous < level && consumed >= level
                    } else {
                        previous <= level && consumed > level
                    };
                    if crossed {
                        crossings.push((b, i, *threshold, consumed));
                    }
                }
                let subject = subjects[key].as_str();
                match level_index[b].get(subject) {
                    Some(at) => levels[b][*at].1 = consumed,
                    None => {
                        level_index[b].insert(subject, levels[b].len());
                        levels[b].push((subject.to_string(), consumed));
                    }
                }
            }
            if warned {
                bits.set(0);
            }
            for (k, count) in check_counts[..rule_count].iter_mut().enumerate() {
                *count += u64::from(span.rules.get(k));
            }
            let index = match code_index.entry(bits) {
                Entry::Occupied(entry) => *entry.get(),
                Entry::Vacant(entry) => {
                    verdicts.push(self.verdicts.verdict(entry.key()));
                    code_counts.push(0);
                    *entry.insert(verdicts.len() - 1)
                }
            };
            code[span.position] = Some(index);
            code_counts[index] += 1;
            if let Some((b, utilization, consumed, exceeded)) = top {
                let limit = budgets[b].limit;
                tag_best[span.position] = Some(b as u32);
                tag_consumed[span.position] = Some(round(consumed, 9));
                tag_remaining[span.position] = Some(round((limit - consumed).max(0.0), 9));
                tag_utilization[span.position] = Some(round(utilization, 6));
                tag_exceeded[span.position] = Some(exceeded);
            }
        }
        // Events budget by budget, in span order.
        crossings.sort_by_key(|(b, i, ..)| (*b, *i));
        let events = PyList::empty(py);
        for (b, i, threshold, consumed) in crossings {
            let span = &spans[i];
            let (key, _) = charged[b][i].expect("a crossing span is charged");
            let subject = &subjects[key];
            events.append((
                span.position,
                b,
                threshold,
                span.event_time,
                subject,
                &labels[key],
                consumed,
            ))?;
        }
        let levels_out = PyList::empty(py);
        for (b, subjects) in levels.iter().enumerate() {
            for (subject, consumed) in subjects {
                levels_out.append((b, subject, *consumed))?;
            }
        }
        // Spans per verdict result (the metrics count results, not codes).
        let mut result_counts: Vec<(&str, u64)> = Vec::new();
        for (verdict, count) in verdicts.iter().zip(&code_counts) {
            let result = self.verdicts.result(verdict);
            match result_counts.iter_mut().find(|(r, _)| *r == result) {
                Some((_, total)) => *total += count,
                None => result_counts.push((result, *count)),
            }
        }
        let tags = if is_charged {
            let mut names = Views::with_capacity(rows);
            let mut periods = Views::with_capacity(rows);
            let mut limits = Vec::with_capacity(rows);
            for best in &tag_best {
                match best {
                    Some(b) => {
                        let budget = &budgets[*b as usize];
                        names.push(budget.name.as_bytes());
                        periods.push(budget.period.as_bytes());
                        limits.push(Some(budget.limit));
                    }
                    None => {
                        names.push_null();
                        periods.push_null();
                        limits.push(None);
                    }
                }
            }
            let forecasts = match &forecast {
                Some((now, windows)) => {
                    forecast_column(budgets, &tag_best, &tag_consumed, *now, windows)
                }
                None => None,
            };
            Some(PyTuple::new(
                py,
                [
                    names.to_py(py)?.into_pyobject(py)?.into_any(),
                    periods.to_py(py)?.into_pyobject(py)?.into_any(),
                    f64_column(py, &limits)?.into_any(),
                    f64_column(py, &tag_consumed)?.into_any(),
                    f64_column(py, &tag_remaining)?.into_any(),
                    f64_column(py, &tag_utilization)?.into_any(),
                    bool_column(py, &tag_exceeded)?.into_any(),
                    match forecasts {
                        Some(views) => views.to_py(py)?.into_pyobject(py)?.into_any(),
                        None => py.None().into_bound(py),
                    },
                ],
            )?)
        } else {
            None
        };
        let groups = if repeated {
            None
        } else {
            Some(Bound::new(py, self.groups(py, &spans, &relabel)?)?)
        };
        let awu = self.awu(py, &columns, &spans, &verdicts, &code)?;
        let result = (
            self.verdict_columns(py, &verdicts, &code)?,
            tags,
            events,
            levels_out,
            check_counts,
            result_counts,
            groups,
            awu,
        );
        Ok(Some(result.into_pyobject(py)?.into_any()))
    }
}

/// The subjects of a budget keyed on a span attribute over one batch (native.py
/// `SubjectColumn`): per row, the subject as published (redacted, or the overflow subject past
/// the budget's max_subjects), null where the budget charges nothing. The Python side resolves
/// them against the store's cardinality cap; the budget keys on them as it would on a dimension.
#[derive(FromPyObject)]
pub struct SubjectColumn<'py> {
    #[pyo3(attribute)]
    budget: usize,
    #[pyo3(attribute)]
    subjects: Bound<'py, PyAny>,
}

/// The subject `budget` charges `span` to (None: not charged): from its subject column when it
/// has one (taken as given: the value filter ran on the raw values), else from its dimension.
fn budget_subject<'a>(
    budget: &Budget,
    keyed: &'a Option<ArrowIn>,
    span: &Span<'a>,
) -> PyResult<Option<&'a str>> {
    if keyed.is_some() {
        return raw_text(keyed, span.position);
    }
    Ok(match budget.dimension {
        None => Some("*"),
        Some(d) => {
            span.dims[d].filter(|subject| budget.value.as_deref().is_none_or(|v| v == *subject))
        }
    })
}

impl PolicyPlan {
    /// Per budget, its subject column (None: keyed on a dimension or global).
    fn keyed_subjects(
        &self,
        rows: usize,
        subjects: &[SubjectColumn<'_>],
    ) -> PyResult<Vec<Option<ArrowIn>>> {
        let mut keyed: Vec<Option<ArrowIn>> = self.budgets.iter().map(|_| None).collect();
        for column in subjects {
            let array = optional(Some(&column.subjects), &[Kind::String])?;
            match keyed.get_mut(column.budget) {
                Some(slot) if slot.is_none() && array.as_ref().is_some_and(|a| a.len == rows) => {
                    *slot = array;
                }
                _ => {
                    return Err(PyValueError::new_err(
                        "subject column of no budget or of another batch",
                    ))
                }
            }
        }
        Ok(keyed)
    }
}

/// (now in ns, per budget (seconds since its window opened, at least the minimum, seconds left)).
type ForecastSpec = (i64, Vec<Option<(f64, f64)>>);

/// budget_forecast._forecast_rows over the tagged rows: per row, when the budget its tags name
/// runs out at its window's rate (ISO 8601 UTC, to the second), null when not in this window.
/// The same float operations in the same order, from the tags' (rounded) consumed amount; None
/// when an amount is not finite (that module decides then).
fn forecast_column(
    budgets: &[Budget],
    best: &[Option<u32>],
    consumed: &[Option<f64>],
    now_ns: i64,
    windows: &[Option<(f64, f64)>],
) -> Option<Views> {
    let mut out = Views::with_capacity(best.len());
    // Forecasts repeat to the second across spans of a budget.
    let mut last: Option<(i64, String)> = None;
    for (b, c) in best.iter().zip(consumed) {
        let (Some(b), Some(c)) = (b, c) else {
            out.push_null();
            continue;
        };
        let limit = budgets[*b as usize].limit;
        let Some(Some((elapsed, left))) = windows.get(*b as usize) else {
            out.push_null();
            continue;
        };
        if !(c.is_finite() && limit.is_finite()) {
            return None;
        }
        let seconds = if *c >= limit {
            0.0
        } else if *c > 0.0 {
            (limit - c) * elapsed / c
        } else {
            out.push_null();
            continue;
        };
        // Past the window's end the window resets first: no exhaustion to forecast.
        if seconds.is_nan() || left.is_nan() || seconds > *left {
            out.push_null();
            continue;
        }
        // Nanoseconds truncated toward zero, then the time floored to its second.
        let second = (now_ns + (seconds * 1e9) as i64).div_euclid(1_000_000_000);
        match &last {
            Some((at, text)) if *at == second => out.push(text.as_bytes()),
            _ => {
                let text = utc_text(second);
                out.push(text.as_bytes());
                last = Some((second, text));
            }
        }
    }
    Some(out)
}

/// `second` (epoch seconds) as time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)).
fn utc_text(second: i64) -> String {
    let (days, rest) = (second.div_euclid(86_400), second.rem_euclid(86_400));
    // The proleptic Gregorian date of a day number (H. Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// A string column's buffers, None when no value is set (an all-null column writes nothing).
fn views_or_none<'py>(py: Python<'py>, views: &Views, set: usize) -> PyResult<Bound<'py, PyAny>> {
    if set == 0 {
        return Ok(py.None().into_bound(py));
    }
    Ok(views.to_py(py)?.into_pyobject(py)?.into_any())
}

impl PolicyPlan {
    /// The GenOps AWU attributes and events of the decided (evaluated) spans, as
    /// processor/stages/policy/awu.py's polars query computes them: (columns over the batch: spec
    /// version, the six dimensions, operation name, operation type, accounting actual, accounting
    /// unit, each None when all null; genops.policy.evaluated as (rows, times, results, reasons);
    /// genops.cost.calculated as (rows, times, costs, currencies, providers, models) or None when
    /// no span has a cost; [(operation type, summed cost)] in order of first appearance). None
    /// when a decided span has no batch row or start time (that query decides then).
    fn awu<'py>(
        &self,
        py: Python<'py>,
        columns: &Columns,
        spans: &[Span<'_>],
        verdicts: &[Verdict],
        code: &[Option<usize>],
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let awu = &self.awu;
        let rows = code.len();
        let Some(row_column) = columns.row.as_ref() else {
            return Ok(None);
        };
        if spans
            .iter()
            .any(|s| !row_column.is_valid(s.position) || !columns.start.is_valid(s.position))
        {
            return Ok(None);
        }
        // Per decided span, in batch order: the written values.
        let mut decided: Vec<Option<usize>> = vec![None; rows];
        let mut names: Vec<Option<&str>> = Vec::with_capacity(spans.len());
        let mut types: Vec<Option<String>> = Vec::with_capacity(spans.len());
        let mut dims: Vec<[Option<&str>; DIMENSIONS]> = Vec::with_capacity(spans.len());
        let mut actual: Vec<Option<f64>> = Vec::with_capacity(spans.len());
        for (i, span) in spans.iter().enumerate() {
            decided[span.position] = Some(i);
            let mut name = None;
            for source in &awu.operations {
                if let Some(value) = text(&columns.texts[*source], span.position)? {
                    name = Some(value);
                    break;
                }
            }
            names.push(name);
            types.push(name.map(|n| {
                let lower = n.to_lowercase();
                match awu.types.get(&lower) {
                    Some(kind) => kind.clone(),
                    None => lower,
                }
            }));
            // A span's own value is left as it came (spec §2.3); else its resource's or fallback's.
            let mut written = [None; DIMENSIONS];
            for (d, own) in awu.own.iter().enumerate() {
                if text(&columns.texts[*own], span.position)?.is_none() {
                    written[d] = span.dims[d];
                }
            }
            dims.push(written);
            actual.push(span.cost.filter(|c| c.is_finite() && *c >= 0.0));
        }

        let mut version = Views::with_capacity(rows);
        let mut dim_columns: Vec<(Views, usize)> = (0..DIMENSIONS)
            .map(|_| (Views::with_capacity(rows), 0))
            .collect();
        let mut name_column = (Views::with_capacity(rows), 0);
        let mut type_column = (Views::with_capacity(rows), 0);
        let mut actual_column: Vec<Option<f64>> = Vec::with_capacity(rows);
        let mut unit_column = (Views::with_capacity(rows), 0);
        let push = |column: &mut (Views, usize), value: Option<&str>| match value {
            Some(value) => {
                column.0.push(value.as_bytes());
                column.1 += 1;
            }
            None => column.0.push_null(),
        };
        for at in &decided {
            match at {
                Some(i) => {
                    version.push(awu.version.as_bytes());
                    for (d, column) in dim_columns.iter_mut().enumerate() {
                        push(column, dims[*i][d]);
                    }
                    push(&mut name_column, names[*i]);
                    push(&mut type_column, types[*i].as_deref());
                    actual_column.push(actual[*i]);
                    push(&mut unit_column, actual[*i].map(|_| awu.unit.as_str()));
                }
                None => {
                    version.push_null();
                    for column in dim_columns.iter_mut() {
                        column.0.push_null();
                    }
                    name_column.0.push_null();
                    type_column.0.push_null();
                    actual_column.push(None);
                    unit_column.0.push_null();
                }
            }
        }
        let costed = actual.iter().filter(|c| c.is_some()).count();
        let mut written: Vec<Bound<'py, PyAny>> = Vec::with_capacity(DIMENSIONS + 5);
        written.push(views_or_none(py, &version, spans.len())?);
        for (views, set) in &dim_columns {
            written.push(views_or_none(py, views, *set)?);
        }
        written.push(views_or_none(py, &name_column.0, name_column.1)?);
        written.push(views_or_none(py, &type_column.0, type_column.1)?);
        written.push(if costed == 0 {
            py.None().into_bound(py)
        } else {
            f64_column(py, &actual_column)?.into_any()
        });
        written.push(views_or_none(py, &unit_column.0, unit_column.1)?);

        // genops.policy.evaluated at the span's start (the decision is about the unit before it
        // ran), genops.cost.calculated at its end (its start when it has none).
        let event_row = |span: &Span<'_>| row_column.i64_at(span.position);
        let mut results = Views::with_capacity(spans.len());
        let mut reasons = Views::with_capacity(spans.len());
        for span in spans {
            let verdict = &verdicts[code[span.position].expect("a decided span has a verdict")];
            results.push(self.verdicts.result(verdict).as_bytes());
            match self.verdicts.reason(verdict) {
                Some(reason) => reasons.push(reason.as_bytes()),
                None => reasons.push_null(),
            }
        }
        let evaluated = (
            le_bytes(py, &spans.iter().map(event_row).collect::<Vec<_>>())?,
            le_bytes(py, &spans.iter().map(|s| s.raw_start).collect::<Vec<_>>())?,
            results.to_py(py)?,
            reasons.to_py(py)?,
        )
            .into_pyobject(py)?
            .into_any();
        let calculated = if costed == 0 {
            py.None().into_bound(py)
        } else {
            let mut event_rows = Vec::with_capacity(costed);
            let mut times = Vec::with_capacity(costed);
            let mut costs = Vec::with_capacity(costed);
            let mut currencies = Views::with_capacity(costed);
            let mut providers = Views::with_capacity(costed);
            let mut models = Views::with_capacity(costed);
            for (span, cost) in spans.iter().zip(&actual) {
                let Some(cost) = cost else { continue };
                event_rows.push(event_row(span));
                times.push(
                    span.raw_end
                        .filter(|end| *end > 0)
                        .unwrap_or(span.raw_start),
                );
                costs.push(Some(*cost));
                currencies.push(awu.unit.as_bytes());
                for (views, column) in [
                    (&mut providers, self.cost_provider),
                    (&mut models, self.cost_model),
                ] {
                    match text(&columns.texts[column], span.position)? {
                        Some(value) => views.push(value.as_bytes()),
                        None => views.push_null(),
                    }
                }
            }
            (
                le_bytes(py, &event_rows)?,
                le_bytes(py, &times)?,
                f64_column(py, &costs)?,
                currencies.to_py(py)?,
                providers.to_py(py)?,
                models.to_py(py)?,
            )
                .into_pyobject(py)?
                .into_any()
        };
        // Cost per operation type, summed in span order from 0.0 (as seed_metrics sums them).
        let mut sums: Vec<(Option<&str>, f64)> = Vec::new();
        for (kind, cost) in types.iter().zip(&actual) {
            let Some(cost) = cost else { continue };
            let kind = kind.as_deref();
            match sums.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, sum)) => *sum += cost,
                None => sums.push((kind, 0.0 + cost)),
            }
        }
        let out = (PyTuple::new(py, written)?, evaluated, calculated, sums);
        Ok(Some(out.into_pyobject(py)?))
    }

    /// VIOLATIONS (list offsets, validity, names), RESULT and REASON_CODE per row of the batch.
    fn verdict_columns<'py>(
        &self,
        py: Python<'py>,
        verdicts: &[Verdict],
        code: &[Option<usize>],
    ) -> PyResult<Bound<'py, PyTuple>> {
        let rows = code.len();
        let mut offsets: Vec<i64> = Vec::with_capacity(rows + 1);
        offsets.push(0);
        let mut listed = Bitmap::with_capacity(rows);
        let mut names = Views::with_capacity(rows);
        let mut results = Views::with_capacity(rows);
        let mut reasons = Views::with_capacity(rows);
        let mut count: i64 = 0;
        for index in code {
            let verdict = index.map(|i| &verdicts[i]);
            match verdict.filter(|v| !v.violated.is_empty()) {
                Some(verdict) => {
                    for k in &verdict.violated {
                        names.push(self.verdicts.checks[*k].0.as_bytes());
                    }
                    count += verdict.violated.len() as i64;
                    listed.push(true);
                }
                None => listed.push(false),
            }
            offsets.push(count);
            match verdict {
                Some(verdict) => {
                    results.push(self.verdicts.result(verdict).as_bytes());
                    match self.verdicts.reason(verdict) {
                        Some(reason) => reasons.push(reason.as_bytes()),
                        None => reasons.push_null(),
                    }
                }
                None => {
                    results.push_null();
                    reasons.push_null();
                }
            }
        }
        (
            (
                listed.validity_to_py(py),
                le_bytes(py, &offsets)?,
                count as usize,
                names.to_py(py)?,
            ),
            results.to_py(py)?,
            reasons.to_py(py)?,
        )
            .into_pyobject(py)
    }

    /// Per metric label combination, the operation sums (see GovernanceMetrics.record_operations).
    fn groups<'py, 'a>(
        &self,
        py: Python<'py>,
        spans: &[Span<'a>],
        relabel: &Bound<'py, PyAny>,
    ) -> PyResult<OperationGroups> {
        let label_of = |span: &Span<'a>, source: usize| -> Option<&'a str> {
            match source {
                LABEL_MODEL => span.model,
                LABEL_PROVIDER => span.provider,
                d => span.dims[d],
            }
        };
        // Label values interned per label: the Python side maps each distinct value once.
        let width = self.labels.len();
        let mut distinct: Vec<Vec<Option<&'a str>>> = vec![Vec::new(); width];
        let mut seen: Vec<FxHashMap<Option<&'a str>, u32>> = vec![FxHashMap::default(); width];
        let mut codes: Vec<u32> = Vec::with_capacity(spans.len() * width);
        for span in spans {
            for (l, source) in self.labels.iter().enumerate() {
                let value = label_of(span, *source);
                let code = *seen[l].entry(value).or_insert_with(|| {
                    distinct[l].push(value);
                    distinct[l].len() as u32 - 1
                });
                codes.push(code);
            }
        }
        let listed = PyList::empty(py);
        for values in &distinct {
            listed.append(PyList::new(py, values)?)?;
        }
        // Null as "unknown" and capped values as "other": values mapped alike are one series.
        let mapped: Vec<Vec<Bound<'py, PyAny>>> = relabel.call1((listed,))?.extract()?;
        if mapped.len() != width
            || mapped
                .iter()
                .zip(&distinct)
                .any(|(m, d)| m.len() != d.len())
        {
            return Err(PyValueError::new_err("relabel returned other labels"));
        }
        let mut canonical: Vec<Vec<u32>> = Vec::with_capacity(width);
        let mut texts: Vec<Vec<String>> = Vec::with_capacity(width);
        for values in &mapped {
            let mut first: FxHashMap<String, u32> = FxHashMap::default();
            let mut column = Vec::with_capacity(values.len());
            let mut text_column = Vec::with_capacity(values.len());
            for (i, value) in values.iter().enumerate() {
                let text: String = value.extract()?;
                column.push(*first.entry(text.clone()).or_insert(i as u32));
                text_column.push(text);
            }
            canonical.push(column);
            texts.push(text_column);
        }
        for (at, code) in codes.iter_mut().enumerate() {
            *code = canonical[at % width.max(1)][*code as usize];
        }
        let mut groups: FxHashMap<&[u32], usize> = FxHashMap::default();
        let mut keys: Vec<u32> = Vec::new();
        let mut span_group = Vec::with_capacity(spans.len());
        for at in 0..spans.len() {
            let key = &codes[at * width..(at + 1) * width];
            let next = groups.len();
            let group = *groups.entry(key).or_insert_with(|| {
                keys.extend_from_slice(key);
                next
            });
            span_group.push(group);
        }
        let mut sums = vec![Group::new(); groups.len()];
        for (span, group) in spans.iter().zip(span_group) {
            sums[group].add(span);
        }
        // Without labels polars sums one literal group as a whole column (in blocks, not
        // compensated): the caller sums these costs of the evaluated spans with polars.
        let costs = self
            .labels
            .is_empty()
            .then(|| spans.iter().map(|s| s.cost).collect());
        Ok(OperationGroups {
            labels: mapped
                .into_iter()
                .map(|values| values.into_iter().map(Bound::unbind).collect())
                .collect(),
            texts,
            keys,
            sums,
            costs,
        })
    }
}

/// A batch's operation sums per metric series (label combination), added to the series'
/// totals here for the series Python already resolved (see operation_totals.rs).
#[pyclass]
pub struct OperationGroups {
    /// Per label, the series label of each distinct value (what `keys` index), as Python
    /// objects (for the groups handed back) and as text.
    labels: Vec<Vec<Py<PyAny>>>,
    texts: Vec<Vec<String>>,
    /// Per group, one index into `texts` per label.
    keys: Vec<u32>,
    sums: Vec<Group>,
    /// Without labels: the evaluated spans' costs, which the caller sums (see `groups`).
    costs: Option<Vec<Option<f64>>>,
}

#[pymethods]
impl OperationGroups {
    fn __len__(&self) -> usize {
        self.sums.len()
    }

    /// The evaluated spans' costs (f64 column buffers), only for a plan without labels.
    fn costs<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.costs.as_ref().map(|c| f64_column(py, c)).transpose()
    }

    fn set_cost(&mut self, group: usize, cost: f64) {
        self.sums[group].cost = Kahan {
            sum: cost,
            carry: 0.0,
        };
    }

    /// Adds each group, in batch order, to its series in `totals` (when given); returns the
    /// groups of no series there as (labels, cost, tokens input, tokens output, operations,
    /// errors, [(bucket, latencies in it)] or None, latency sum, latencies). The caller holds
    /// GovernanceMetrics' update lock.
    #[pyo3(signature = (totals=None))]
    fn add_to<'py>(
        &self,
        py: Python<'py>,
        totals: Option<&Bound<'py, OperationTotals>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut rest: Vec<usize> = Vec::new();
        match totals {
            Some(totals) => {
                let mut state = totals.get().lock();
                let width = self.texts.len();
                if state.width() != width {
                    return Err(PyValueError::new_err("totals of another label set"));
                }
                // A batch has few distinct values per label: each is looked up once.
                let ids: Vec<Vec<Option<u32>>> = self
                    .texts
                    .iter()
                    .enumerate()
                    .map(|(l, values)| values.iter().map(|v| state.label_id(l, v)).collect())
                    .collect();
                let mut key: Vec<u32> = Vec::with_capacity(width);
                for (g, group) in self.sums.iter().enumerate() {
                    key.clear();
                    key.extend(
                        self.keys[g * width..(g + 1) * width]
                            .iter()
                            .enumerate()
                            .map_while(|(l, code)| ids[l][*code as usize]),
                    );
                    let series = (key.len() == width).then(|| state.series(&key)).flatten();
                    match series {
                        Some(series) => state.add(series, group.amounts()),
                        None => rest.push(g),
                    }
                }
            }
            None => rest.extend(0..self.sums.len()),
        }
        let listed = PyList::empty(py);
        let width = self.labels.len();
        for g in rest {
            let group = &self.sums[g];
            let key = &self.keys[g * width..(g + 1) * width];
            let labels = key
                .iter()
                .zip(&self.labels)
                .map(|(code, values)| values[*code as usize].bind(py));
            let buckets = (!group.latencies.is_empty()).then(|| group.hits().collect::<Vec<_>>());
            listed.append((
                PyTuple::new(py, labels)?,
                group.cost.sum,
                group.tokens_input,
                group.tokens_output,
                group.count,
                group.errors,
                buckets,
                group.latency_sum,
                group.latencies.clone(),
            ))?;
        }
        Ok(listed)
    }
}

#[cfg(test)]
#[path = "tests/policy_tests.rs"]
mod policy_tests;
