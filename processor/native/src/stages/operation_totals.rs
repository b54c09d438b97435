//! The running totals of the per-operation metrics (cost, tokens, operations, errors, latency
//! histogram) in single-process mode, per series (label combination).
//!
//! prometheus_client keeps each value in its own Python object; adding a batch's ~1300 group sums
//! to them attribute by attribute cost more than summing the groups. Here the totals are one
//! array per series, which `OperationGroups.add_to` (policy.rs) adds a batch into in one call, and
//! each metric child reads its value through a `TotalValue` standing in for its MutexValue, so
//! prometheus_client still writes the exposition (names, labels, `_created`, bucket sums) itself.
//! In multiprocess mode the children keep their own (file-backed) values: the totals are added up
//! here all the same, and `changes` hands over what moved since the last call, for
//! processor/stages/policy/operation_totals.py to write to the files now and then instead of on every batch.

use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rustc_hash::FxHashMap;

/// Per series: cost, tokens input, tokens output, tokens, operations, errors, latency sum, then
/// the latency histogram's 13 bucket counts (not cumulative; prometheus_client adds them up).
pub const SLOTS: usize = 7 + 13;
const COST: usize = 0;
const TOKENS_INPUT: usize = 1;
const TOKENS_OUTPUT: usize = 2;
const TOKENS: usize = 3;
const OPERATIONS: usize = 4;
const ERRORS: usize = 5;
const LATENCY_SUM: usize = 6;
const BUCKETS: usize = 7;

/// One group's sums, as the Python path adds them to a series.
pub struct Amounts<I: Iterator<Item = (usize, f64)>> {
    pub cost: f64,
    pub tokens_input: f64,
    pub tokens_output: f64,
    pub tokens: f64,
    pub operations: f64,
    pub errors: f64,
    /// (bucket, latencies in it) and the latency sum, or None without a latency.
    pub latency: Option<(I, f64)>,
}

#[derive(Default)]
pub struct State {
    /// Per label: its values so far, numbered (series keys are these numbers).
    interned: Vec<FxHashMap<String, u32>>,
    /// Label value numbers (one per label) -> series; several keys may share a series.
    index: FxHashMap<Box<[u32]>, u32>,
    rows: Vec<[f64; SLOTS]>,
    /// Per series: the values `changes` last handed over.
    reported: Vec<[f64; SLOTS]>,
    /// Series added to since the last `changes`, each once (`marked`).
    dirty: Vec<u32>,
    marked: Vec<bool>,
}

impl State {
    pub fn width(&self) -> usize {
        self.interned.len()
    }

    /// The number of a label value, or None if no series key has it.
    pub fn label_id(&self, label: usize, value: &str) -> Option<u32> {
        self.interned[label].get(value).copied()
    }

    pub fn series(&self, key: &[u32]) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// Adds in the order and with the skips of GovernanceMetrics._add_groups, so that values
    /// match the in-place adds to MutexValue to the last bit.
    pub fn add<I: Iterator<Item = (usize, f64)>>(&mut self, series: u32, amounts: Amounts<I>) {
        self.touch(series);
        let row = &mut self.rows[series as usize];
        row[COST] += amounts.cost;
        row[TOKENS_INPUT] += amounts.tokens_input;
        row[TOKENS_OUTPUT] += amounts.tokens_output;
        row[TOKENS] += amounts.tokens;
        row[OPERATIONS] += amounts.operations;
        if amounts.errors != 0.0 {
            row[ERRORS] += amounts.errors;
        }
        if let Some((hits, sum)) = amounts.latency {
            for (bucket, count) in hits {
                row[BUCKETS + bucket] += count;
            }
            row[LATENCY_SUM] += sum;
        }
    }

    fn touch(&mut self, series: u32) {
        let marked = &mut self.marked[series as usize];
        if !*marked {
            *marked = true;
            self.dirty.push(series);
        }
    }
}

#[pyclass(frozen)]
pub struct OperationTotals {
    state: Mutex<State>,
}

impl OperationTotals {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("operation totals")
    }
}

#[pymethods]
impl OperationTotals {
    /// `width`: the number of metric labels.
    #[new]
    fn new(width: usize) -> Self {
        OperationTotals {
            state: Mutex::new(State {
                interned: vec![FxHashMap::default(); width],
                ..State::default()
            }),
        }
    }

    fn __len__(&self) -> usize {
        self.lock().rows.len()
    }

    /// A new series, all zero; returns its number.
    fn new_series(&self) -> u32 {
        let mut state = self.lock();
        state.rows.push([0.0; SLOTS]);
        state.reported.push([0.0; SLOTS]);
        state.marked.push(false);
        state.rows.len() as u32 - 1
    }

    /// (series, slot, value) of every value that changed since the last call, in series order of
    /// first change, slots ascending.
    fn changes(&self) -> Vec<(u32, usize, f64)> {
        let mut state = self.lock();
        let state = &mut *state;
        let mut out = Vec::new();
        for series in std::mem::take(&mut state.dirty) {
            let s = series as usize;
            state.marked[s] = false;
            for slot in 0..SLOTS {
                let value = state.rows[s][slot];
                // Bitwise, so a change between two NaNs or of a zero's sign still goes out.
                if value.to_bits() != state.reported[s][slot].to_bits() {
                    state.reported[s][slot] = value;
                    out.push((series, slot, value));
                }
            }
        }
        out
    }

    /// From now on `add_to` adds the groups labelled `labels` to `series`.
    fn alias(&self, labels: Vec<String>, series: u32) -> PyResult<()> {
        let mut state = self.lock();
        if labels.len() != state.width() || series as usize >= state.rows.len() {
            return Err(PyValueError::new_err("labels or series out of range"));
        }
        let key: Box<[u32]> = labels
            .into_iter()
            .enumerate()
            .map(|(l, value)| {
                let next = state.interned[l].len() as u32;
                *state.interned[l].entry(value).or_insert(next)
            })
            .collect();
        state.index.insert(key, series);
        Ok(())
    }

    /// One group's sums added to `series` (the polars path's row of GovernanceMetrics._add_groups).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (series, cost, tokens_input, tokens_output, tokens, operations, errors, buckets, latency_sum))]
    fn add(
        &self,
        series: u32,
        cost: f64,
        tokens_input: f64,
        tokens_output: f64,
        tokens: f64,
        operations: f64,
        errors: f64,
        buckets: Option<Vec<(usize, f64)>>,
        latency_sum: f64,
    ) -> PyResult<()> {
        let mut state = self.lock();
        if series as usize >= state.rows.len() || buckets.iter().flatten().any(|(b, _)| *b >= 13) {
            return Err(PyValueError::new_err("series or bucket out of range"));
        }
        let latency = buckets
            .filter(|hits| !hits.is_empty())
            .map(|hits| (hits.into_iter(), latency_sum));
        state.add(
            series,
            Amounts {
                cost,
                tokens_input,
                tokens_output,
                tokens,
                operations,
                errors,
                latency,
            },
        );
        Ok(())
    }

    /// The value holder of one metric child: slot 0 cost, 1 tokens input, 2 tokens output,
    /// 3 tokens, 4 operations, 5 errors, 6 latency sum, 7.. the latency buckets.
    fn value(slf: Py<Self>, py: Python<'_>, series: u32, slot: usize) -> PyResult<TotalValue> {
        if series as usize >= slf.get().lock().rows.len() || slot >= SLOTS {
            return Err(PyValueError::new_err("series or slot out of range"));
        }
        Ok(TotalValue {
            totals: slf.clone_ref(py),
            series,
            slot,
            exemplar: Mutex::new(None),
        })
    }
}

/// What a metric child reads and changes its value through: prometheus_client's MutexValue
/// interface over one slot of an OperationTotals series.
#[pyclass(frozen)]
pub struct TotalValue {
    totals: Py<OperationTotals>,
    series: u32,
    slot: usize,
    exemplar: Mutex<Option<Py<PyAny>>>,
}

#[pymethods]
impl TotalValue {
    fn get(&self) -> f64 {
        self.totals.get().lock().rows[self.series as usize][self.slot]
    }

    fn inc(&self, amount: f64) {
        let mut state = self.totals.get().lock();
        state.touch(self.series);
        state.rows[self.series as usize][self.slot] += amount;
    }

    #[pyo3(signature = (value, timestamp=None))]
    fn set(&self, value: f64, timestamp: Option<Bound<'_, PyAny>>) {
        let _ = timestamp;
        let mut state = self.totals.get().lock();
        state.touch(self.series);
        state.rows[self.series as usize][self.slot] = value;
    }

    fn set_exemplar(&self, exemplar: Py<PyAny>) {
        *self.exemplar.lock().expect("exemplar") = Some(exemplar);
    }

    fn get_exemplar(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.exemplar
            .lock()
            .expect("exemplar")
            .as_ref()
            .map(|e| e.clone_ref(py))
    }
}
