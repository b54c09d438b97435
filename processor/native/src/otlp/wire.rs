//! Protobuf wire-format reading and writing: just what the OTLP scanner and rewriter need.

pub const VARINT: u8 = 0;
pub const I64: u8 = 1;
pub const LEN: u8 = 2;
pub const START_GROUP: u8 = 3;
pub const END_GROUP: u8 = 4;
pub const I32: u8 = 5;
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pub pos: usize,
    /// Field number of the last tag read: a group is skipped up to the end tag of that number.
    last_field: u32,
}

pub type WireResult<T> = Result<T, String>;

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            last_field: 0,
        }
    }

    #[inline]
    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    pub fn varint(&mut self) -> WireResult<u64> {
        // Tags and most lengths are one byte.
        if let Some(&byte) = self.buf.get(self.pos) {
            if byte < 0x80 {
                self.pos += 1;
                return Ok(byte as u64);
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> WireResult<u64> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            value |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    #[inline]
    pub fn tag(&mut self) -> WireResult<(u32, u8)> {
        let tag = self.varint()?;
        // Protobuf field numbers are 1 to 2^29 - 1; parsers refuse others as corrupt.
        let field = match tag >> 3 {
            0 => return Err("field number 0".into()),
            number @ 1..=MAX_FIELD_NUMBER => number as u32,
            number => return Err(format!("field number {number} out of range")),
        };
        self.last_field = field;
        Ok((field, (tag & 7) as u8))
    }

    #[inline]
    pub fn bytes(&mut self) -> WireResult<&'a [u8]> {
        let len = self.varint()? as usize;
        let end = self.pos.checked_add(len).ok_or("length overflow")?;
        if end > self.buf.len() {
            return Err("truncated length-delimited field".into());
        }
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn fixed64(&mut self) -> WireResult<u64> {
        let end = self.pos + 8;
        if end > self.buf.len() {
            return Err("truncated fixed64".into());
        }
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(u64::from_le_bytes(raw))
    }

    /// Skips the field whose tag was just read. Protobuf parsers keep a field of a wire type its
    /// number does not declare, or a group, as an unknown field: callers skip those with this too.
    #[inline]
    pub fn skip(&mut self, wire: u8) -> WireResult<()> {
        if wire == START_GROUP {
            return self.skip_group(self.last_field);
        }
        self.skip_plain(wire)
    }

    /// A group (possibly holding groups) up to its end tag, walked without recursion.
    #[cold]
    fn skip_group(&mut self, field: u32) -> WireResult<()> {
        let mut open = vec![field];
        while let Some(&innermost) = open.last() {
            if self.done() {
                return Err("truncated group".into());
            }
            let (inner, wire) = self.tag()?;
            match wire {
                START_GROUP => open.push(inner),
                END_GROUP if inner == innermost => {
                    open.pop();
                }
                END_GROUP => return Err(format!("group {innermost} ended by field {inner}")),
                other => self.skip_plain(other)?,
            }
        }
        Ok(())
    }

    #[inline]
    fn skip_plain(&mut self, wire: u8) -> WireResult<()> {
        match wire {
            VARINT => {
                self.varint()?;
            }
            I64 => {
                self.fixed64()?;
            }
            LEN => {
                self.bytes()?;
            }
            I32 => {
                if self.pos + 4 > self.buf.len() {
                    return Err("truncated fixed32".into());
                }
                self.pos += 4;
            }
            END_GROUP => return Err("end of a group that was not started".into()),
            other => return Err(format!("invalid wire type {other}")),
        }
        Ok(())
    }
}

#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[inline]
pub fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

/// A length-delimited field: tag, length, bytes.
#[inline]
pub fn put_len(out: &mut Vec<u8>, field: u32, content: &[u8]) {
    put_tag(out, field, LEN);
    put_varint(out, content.len() as u64);
    out.extend_from_slice(content);
}

/// Bytes `put_varint` writes for `value`.
#[inline]
pub fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes `put_len` writes for content of `len` bytes (fields below 16 have one-byte tags).
#[inline]
pub fn len_field_size(field: u32, len: usize) -> usize {
    varint_len(((field as u64) << 3) | LEN as u64) + varint_len(len as u64) + len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skipped(buf: &[u8]) -> WireResult<usize> {
        let mut reader = Reader::new(buf);
        let (_, wire) = reader.tag()?;
        reader.skip(wire)?;
        Ok(reader.pos)
    }

    #[test]
    fn a_group_is_skipped_to_its_own_end_tag() {
        // field 1 group { field 1 varint, field 2 group { field 2 varint } } then a varint.
        let buf = b"\x0b\x08\x01\x13\x10\x02\x14\x0c\x08\x01";
        assert_eq!(skipped(buf), Ok(8));
    }

    #[test]
    fn groups_nested_a_million_deep_are_skipped_without_recursion() {
        let depth = 1_000_000;
        let mut buf = vec![0x0b; depth];
        buf.extend(std::iter::repeat_n(0x0c, depth));
        let small_stack = std::thread::Builder::new().stack_size(64 * 1024);
        let skipped = small_stack
            .spawn(move || skipped(&buf))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(skipped, Ok(2 * depth));
    }

    #[test]
    fn broken_groups_and_wire_types_are_errors() {
        assert!(skipped(b"\x0b\x08\x01").is_err(), "truncated");
        assert!(skipped(b"\x0b\x14").is_err(), "ended by another field");
        assert!(skipped(b"\x0c").is_err(), "end without start");
        assert!(skipped(b"\x0e").is_err(), "wire type 6");
        assert!(skipped(b"\x0f").is_err(), "wire type 7");
        assert!(
            skipped(b"\x80\x80\x80\x80\x10\x01").is_err(),
            "field number 2^29"
        );
    }
}

#[cfg(test)]
#[path = "tests/wire_tests.rs"]
mod wire_tests;
