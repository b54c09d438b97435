//! Arrow array buffers: built in Rust and handed to Python as bytes (the scan), or read in place
//! from arrays Python hands in (the rewrite).
//!
//! The Python side wraps built buffers with `pyarrow.Array.from_buffers` and polars imports them
//! without one Python object per value. Strings use the view layout (`string_view`), polars' own
//! string representation, so neither direction converts them.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// An Arrow bitmap (validity or boolean values), least significant bit first.
#[derive(Default)]
pub struct Bitmap {
    bits: Vec<u8>,
    len: usize,
    unset: usize,
}

impl Bitmap {
    pub fn with_capacity(len: usize) -> Self {
        Bitmap {
            bits: Vec::with_capacity(len.div_ceil(8)),
            len: 0,
            unset: 0,
        }
    }

    pub fn push(&mut self, bit: bool) {
        if self.len.is_multiple_of(8) {
            self.bits.push(0);
        }
        if bit {
            *self.bits.last_mut().expect("a byte was pushed") |= 1 << (self.len % 8);
        } else {
            self.unset += 1;
        }
        self.len += 1;
    }

    pub fn to_py<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.bits)
    }

    /// As a validity buffer: None when every slot is valid, which Arrow allows and is cheaper.
    pub fn validity_to_py<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        (self.unset > 0).then(|| self.to_py(py))
    }
}

/// One 16-byte view: the length, then the value itself when it fits, else its first four bytes,
/// the data buffer index (always 0: one buffer) and the offset in that buffer.
pub type View = [u8; 16];

pub const INLINE: usize = 12;

/// The view of `value`, copying it into `data` unless it is short enough to sit inline.
#[inline]
pub fn view_of(value: &[u8], data: &mut Vec<u8>) -> View {
    let mut view = [0u8; 16];
    view[..4].copy_from_slice(&(value.len() as u32).to_le_bytes());
    if value.len() <= INLINE {
        view[4..4 + value.len()].copy_from_slice(value);
    } else {
        view[4..8].copy_from_slice(&value[..4]);
        view[12..].copy_from_slice(&(data.len() as u32).to_le_bytes());
        data.extend_from_slice(value);
    }
    view
}

/// The view of a long value that already sits in data buffer `buffer` at `offset`.
#[inline]
pub fn view_in(value: &[u8], buffer: u32, offset: usize) -> View {
    let mut view = [0u8; 16];
    view[..4].copy_from_slice(&(value.len() as u32).to_le_bytes());
    view[4..8].copy_from_slice(&value[..4]);
    view[8..12].copy_from_slice(&buffer.to_le_bytes());
    view[12..].copy_from_slice(&(offset as u32).to_le_bytes());
    view
}

/// The view of a value `write` appends to `data` (no temporary string); a short one is moved
/// inline and taken back out of `data`.
#[inline]
pub fn view_written(data: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> View {
    let start = data.len();
    write(data);
    let len = data.len() - start;
    let mut view = [0u8; 16];
    view[..4].copy_from_slice(&(len as u32).to_le_bytes());
    if len <= INLINE {
        view[4..4 + len].copy_from_slice(&data[start..]);
        data.truncate(start);
    } else {
        view[4..8].copy_from_slice(&data[start..start + 4]);
        view[12..].copy_from_slice(&(start as u32).to_le_bytes());
    }
    view
}

/// (validity or None, views, data) as Python bytes.
pub type ViewBuffers<'py> = (
    Option<Bound<'py, PyBytes>>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
);

/// A `string_view` / `binary_view` array with a validity bitmap.
pub struct Views {
    views: Vec<View>,
    data: Vec<u8>,
    validity: Bitmap,
}

impl Views {
    pub fn with_capacity(len: usize) -> Self {
        Views {
            views: Vec::with_capacity(len),
            data: Vec::new(),
            validity: Bitmap::with_capacity(len),
        }
    }

    pub fn push(&mut self, value: &[u8]) {
        self.views.push(view_of(value, &mut self.data));
        self.validity.push(true);
    }

    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.views.push(view_written(&mut self.data, write));
        self.validity.push(true);
    }

    /// A text as `push_text` writes it: valid UTF-8 (nearly all of it) goes straight into its
    /// view, a short one inline, instead of being written to `data` and moved back out.
    pub fn push_text(&mut self, raw: &[u8]) {
        if is_utf8(raw) {
            self.push(raw);
        } else {
            self.push_with(|out| push_text(out, raw));
        }
    }

    /// Room for `bytes` more of long values, so `data` is not regrown (and copied) on the way.
    pub fn reserve_data(&mut self, bytes: usize) {
        self.data.reserve(bytes);
    }

    pub fn push_null(&mut self) {
        self.views.push([0u8; 16]);
        self.validity.push(false);
    }

    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<ViewBuffers<'py>> {
        Ok((
            self.validity.validity_to_py(py),
            plain_to_py(py, &[&self.views])?,
            PyBytes::new(py, &self.data),
        ))
    }
}

/// Whether `raw` is valid UTF-8. Most attribute text is short and ASCII: that is checked eight
/// bytes at a time (the last word overlapping), and only other text goes through
/// `std::str::from_utf8`, whose per-call setup costs more than this check on short values.
#[inline]
pub fn is_utf8(raw: &[u8]) -> bool {
    let ascii = if raw.len() >= 8 {
        let mut words = raw.chunks_exact(8);
        let mut seen = u64::from_le_bytes(raw[raw.len() - 8..].try_into().expect("8 bytes"));
        for word in &mut words {
            seen |= u64::from_le_bytes(word.try_into().expect("8 bytes"));
        }
        seen & 0x8080_8080_8080_8080 == 0
    } else {
        raw.iter().fold(0u8, |seen, byte| seen | byte) < 0x80
    };
    ascii || std::str::from_utf8(raw).is_ok()
}

/// Text as Python decodes it from protobuf: invalid UTF-8 becomes U+FFFD.
#[inline]
pub fn push_text(out: &mut Vec<u8>, raw: &[u8]) {
    if is_utf8(raw) {
        out.extend_from_slice(raw);
    } else {
        out.extend_from_slice(String::from_utf8_lossy(raw).as_bytes());
    }
}

/// Appends to the memory of a new bytes object of a known size; a write past its end is
/// recorded (and the object refused), never made.
pub struct Out {
    ptr: *mut u8,
    len: usize,
    pub pos: usize,
    pub overflow: bool,
}

impl Out {
    #[inline]
    pub fn put(&mut self, bytes: &[u8]) {
        if bytes.len() <= self.len - self.pos.min(self.len) {
            // SAFETY: in bounds of the object's `len` bytes, checked just above.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(self.pos), bytes.len())
            };
        } else {
            self.overflow = true;
        }
        self.pos += bytes.len();
    }
}

/// A bytes object of `len` bytes written by `fill` front to back. Unlike `PyBytes::new_with`
/// the memory is not zeroed first (the outputs are up to a megabyte): `fill` must write exactly
/// `len` bytes, else the object is dropped and an error returned, so no unwritten byte is seen.
pub fn bytes_written<'py>(
    py: Python<'py>,
    len: usize,
    fill: impl FnOnce(&mut Out) -> PyResult<()>,
) -> PyResult<Bound<'py, PyBytes>> {
    // SAFETY: a new bytes object of `len` bytes; its memory is ours until it is handed out.
    let (bytes, ptr) = unsafe {
        let raw =
            pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), len as pyo3::ffi::Py_ssize_t);
        let bytes = Bound::from_owned_ptr_or_err(py, raw)?.cast_into_unchecked::<PyBytes>();
        (bytes, pyo3::ffi::PyBytes_AsString(raw) as *mut u8)
    };
    let mut out = Out {
        ptr,
        len,
        pos: 0,
        overflow: false,
    };
    fill(&mut out)?;
    if out.overflow || out.pos != len {
        return Err(PyValueError::new_err(
            "written bytes do not match their measured size",
        ));
    }
    Ok(bytes)
}

/// Primitive values as one little-endian buffer, written straight into the Python bytes object;
/// `parts` are concatenated.
pub fn concat_to_py<'py, T: Copy, const N: usize>(
    py: Python<'py>,
    parts: &[&[T]],
    to_bytes: impl Fn(T) -> [u8; N],
) -> PyResult<Bound<'py, PyBytes>> {
    let total = parts.iter().map(|p| p.len()).sum::<usize>();
    bytes_written(py, total * N, |out| {
        for part in parts {
            for value in part.iter() {
                out.put(&to_bytes(*value));
            }
        }
        Ok(())
    })
}

/// Values whose Arrow buffer holds their little-endian bytes: numbers and string views.
pub trait Plain: Copy {
    fn put_le(self, out: &mut Out);
}

macro_rules! plain_numbers {
    ($($number:ty),*) => {$(
        impl Plain for $number {
            #[inline]
            fn put_le(self, out: &mut Out) {
                out.put(&self.to_le_bytes());
            }
        }
    )*};
}

plain_numbers!(i64, u64, f64, i32, u32);

impl Plain for View {
    #[inline]
    fn put_le(self, out: &mut Out) {
        out.put(&self);
    }
}

/// `parts` concatenated as one Arrow buffer: on a little-endian machine their memory is that
/// buffer already, copied whole (a value at a time cost ~1M instructions per 1k-span batch).
pub fn plain_to_py<'py, T: Plain>(
    py: Python<'py>,
    parts: &[&[T]],
) -> PyResult<Bound<'py, PyBytes>> {
    let total = parts
        .iter()
        .map(|p| std::mem::size_of_val(*p))
        .sum::<usize>();
    bytes_written(py, total, |out| {
        for part in parts {
            if cfg!(target_endian = "little") {
                // SAFETY: T is a primitive number or a byte array: no padding, every byte set.
                let raw = unsafe {
                    std::slice::from_raw_parts(
                        part.as_ptr().cast::<u8>(),
                        std::mem::size_of_val(*part),
                    )
                };
                out.put(raw);
            } else {
                for value in part.iter() {
                    value.put_le(out);
                }
            }
        }
        Ok(())
    })
}

pub fn le_bytes<'py, T: Plain>(py: Python<'py>, values: &[T]) -> PyResult<Bound<'py, PyBytes>> {
    plain_to_py(py, &[values])
}

/// An Arrow array the Python side passed in as (kind, length, offset, buffers, child), its
/// buffers read in place through the buffer protocol. Kinds: "bool", "i64", "f64" (validity,
/// values); "string", "binary" (validity, views, data buffers...); "list" (validity, i64
/// offsets; child: the values array).
pub struct ArrowIn {
    pub kind: Kind,
    pub len: usize,
    offset: usize,
    /// (address, length) of each buffer, taken once: `_held` keeps the memory alive.
    slices: Vec<(usize, usize)>,
    _held: Vec<Option<PyBuffer<i8>>>,
    pub child: Option<Box<ArrowIn>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    I64,
    F64,
    String,
    Binary,
    List,
}

/// (kind, length, offset, buffers, child) as the Python side passes an array.
type ArrowParts<'py> = (
    String,
    usize,
    usize,
    Vec<Option<Bound<'py, PyAny>>>,
    Option<Bound<'py, PyAny>>,
);

impl ArrowIn {
    /// Bytes of all its buffers (and its child's): a bound on what its values encode to, less
    /// the few header bytes each, for sizing an output buffer once.
    pub fn buffer_bytes(&self) -> usize {
        let own: usize = self.slices.iter().map(|(_, len)| len).sum();
        own + self.child.as_ref().map_or(0, |child| child.buffer_bytes())
    }

    pub fn extract(value: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (kind, len, offset, buffers, child): ArrowParts<'_> = value.extract()?;
        let buffers = buffers
            .iter()
            .map(|b| b.as_ref().map(PyBuffer::<i8>::get).transpose())
            .collect::<PyResult<Vec<_>>>()?;
        for buffer in buffers.iter().flatten() {
            if !buffer.is_c_contiguous() {
                return Err(PyValueError::new_err("Arrow buffers are contiguous"));
            }
        }
        let child = child
            .map(|c| ArrowIn::extract(&c).map(Box::new))
            .transpose()?;
        let kind = match kind.as_str() {
            "bool" => Kind::Bool,
            "i64" => Kind::I64,
            "f64" => Kind::F64,
            "string" => Kind::String,
            "binary" => Kind::Binary,
            "list" if child.is_some() => Kind::List,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unsupported Arrow column kind {other}"
                )))
            }
        };
        let slices = buffers
            .iter()
            .map(|b| match b {
                Some(buffer) if buffer.len_bytes() > 0 => {
                    (buffer.buf_ptr() as usize, buffer.len_bytes())
                }
                _ => (0, 0),
            })
            .collect();
        Ok(ArrowIn {
            kind,
            len,
            offset,
            slices,
            _held: buffers,
            child,
        })
    }

    #[inline]
    fn buffer(&self, index: usize) -> &[u8] {
        match self.slices.get(index) {
            Some(&(address, len)) if len > 0 => {
                // The exporter keeps the memory alive and unchanged while `_held` holds it.
                unsafe { std::slice::from_raw_parts(address as *const u8, len) }
            }
            _ => &[],
        }
    }

    #[inline]
    fn bit(bits: &[u8], index: usize) -> bool {
        bits[index / 8] >> (index % 8) & 1 == 1
    }

    #[inline]
    pub fn is_valid(&self, row: usize) -> bool {
        let validity = self.buffer(0);
        validity.is_empty() || Self::bit(validity, self.offset + row)
    }

    #[inline]
    fn word(&self, row: usize) -> [u8; 8] {
        let at = (self.offset + row) * 8;
        self.buffer(1)[at..at + 8].try_into().expect("8 bytes")
    }

    #[inline]
    pub fn bool_at(&self, row: usize) -> bool {
        Self::bit(self.buffer(1), self.offset + row)
    }

    #[inline]
    pub fn i64_at(&self, row: usize) -> i64 {
        i64::from_le_bytes(self.word(row))
    }

    #[inline]
    pub fn f64_at(&self, row: usize) -> f64 {
        f64::from_le_bytes(self.word(row))
    }

    /// The value range of a list row in the child array.
    pub fn list_range(&self, row: usize) -> std::ops::Range<usize> {
        let offsets = self.buffer(1);
        let at = (self.offset + row) * 8;
        let start = i64::from_le_bytes(offsets[at..at + 8].try_into().expect("8 bytes"));
        let end = i64::from_le_bytes(offsets[at + 8..at + 16].try_into().expect("8 bytes"));
        start as usize..end as usize
    }

    #[inline]
    pub fn view_at(&self, row: usize) -> PyResult<&[u8]> {
        match self.view(row) {
            Some(value) => Ok(value),
            None => Err(view_out_of_buffer()),
        }
    }

    #[inline]
    fn view(&self, row: usize) -> Option<&[u8]> {
        let at = (self.offset + row) * 16;
        let view = &self.buffer(1)[at..at + 16];
        let len = u32::from_le_bytes(view[..4].try_into().expect("4 bytes")) as usize;
        if len <= INLINE {
            return Some(&view[4..4 + len]);
        }
        let index = u32::from_le_bytes(view[8..12].try_into().expect("4 bytes")) as usize;
        let start = u32::from_le_bytes(view[12..].try_into().expect("4 bytes")) as usize;
        self.buffer(2 + index).get(start..start + len)
    }
}

#[cold]
fn view_out_of_buffer() -> PyErr {
    PyValueError::new_err("string view out of its data buffer")
}
