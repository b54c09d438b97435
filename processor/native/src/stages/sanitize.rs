//! URL query-string and SQL literal sanitising (the rules' `url_sanitizer` and `db_sanitizer.sql`).
//!
//! Twins of processor/stages/redaction/sanitizers.py, which documents what each keeps and replaces; the Python
//! functions are the reference (tests/stages/redaction/test_redaction_sanitizers.py runs both on the same input).
//! Every delimiter is ASCII, so cutting UTF-8 at them always lands on a character boundary. One
//! pass, no recursion beyond a comment's body, no backtracking: linear in the value's length.

use pyo3::prelude::*;

/// What a SQL literal becomes.
const PLACEHOLDER: &str = "?";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    UrlQuery,
    Sql,
}

impl Kind {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "url_query" => Some(Kind::UrlQuery),
            "sql" => Some(Kind::Sql),
            _ => None,
        }
    }
}

fn is_separator(b: u8) -> bool {
    matches!(b, b'&' | b'?' | b'#')
}

/// See processor/stages/redaction/sanitizers.py `sanitize_url_query`.
pub fn url_query(text: &str, mask: &str) -> String {
    let b = text.as_bytes();
    let first = b.iter().position(|c| *c == b'?' || *c == b'#');
    let start = match first {
        Some(at) => at + 1,
        None => {
            if !b.contains(&b'=') || text.contains("://") || text.starts_with('/') {
                return text.to_owned();
            }
            0
        }
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..start]);
    let mut i = start;
    loop {
        let mut j = i;
        while j < b.len() && !is_separator(b[j]) {
            j += 1;
        }
        let part = &text[i..j];
        match part.find('=') {
            Some(eq) if eq + 1 < part.len() => {
                out.push_str(&part[..=eq]);
                out.push_str(mask);
            }
            _ => out.push_str(part),
        }
        if j >= b.len() {
            break;
        }
        out.push(b[j] as char);
        i = j + 1;
    }
    out
}

/// See processor/stages/redaction/sanitizers.py `sanitize_urls_in_text` (span names).
pub fn urls_in_text(text: &str, mask: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let mut j = i;
        while j < b.len() && !is_word_separator(b[j]) {
            j += 1;
        }
        let word = &text[i..j];
        let query = word.bytes().position(|c| c == b'?' || c == b'#');
        match query {
            Some(at) if at > 0 && (word.starts_with('/') || word[..at].contains("://")) => {
                out.push_str(&url_query(word, mask));
            }
            _ => out.push_str(word),
        }
        while j < b.len() && is_word_separator(b[j]) {
            out.push(b[j] as char);
            j += 1;
        }
        i = j;
    }
    out
}

/// Python's `" \t\n\r\x0b\x0c"` (ASCII whitespace, vertical tab included).
fn is_word_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Whether a database system of this name reads "..." as a string literal (MySQL and MariaDB
/// without ANSI_QUOTES); see sanitizers.py `reads_double_quoted_strings`.
pub fn reads_double_quoted_strings(system: &[u8]) -> bool {
    system.eq_ignore_ascii_case(b"mysql") || system.eq_ignore_ascii_case(b"mariadb")
}

fn ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn find(b: &[u8], from: usize, end: usize, needle: &[u8]) -> Option<usize> {
    if from > end || end - from < needle.len() {
        return None;
    }
    memchr::memmem::find(&b[from..end], needle).map(|at| from + at)
}

/// See processor/stages/redaction/sanitizers.py `sanitize_sql`; `double_quoted`: "..." is a
/// string literal (MySQL, MariaDB).
pub fn sql(text: &str, double_quoted: bool) -> String {
    let mut out = String::with_capacity(text.len());
    lex(text, 0, text.len(), true, double_quoted, &mut out);
    out
}

fn lex(
    text: &str,
    mut i: usize,
    end: usize,
    comments: bool,
    double_quoted: bool,
    out: &mut String,
) {
    let b = text.as_bytes();
    while i < end {
        let c = b[i];
        let next = if i + 1 < end { b[i + 1] } else { 0 };
        if c == b'\'' || (c == b'"' && double_quoted) {
            out.push_str(PLACEHOLDER);
            i = string_end(b, i + 1, end, c);
        } else if c == b'"' || c == b'`' {
            let j = quoted_end(b, i + 1, end, c);
            out.push_str(&text[i..j]);
            i = j;
        } else if comments && c == b'-' && next == b'-' {
            let j = memchr::memchr(b'\n', &b[i + 2..end]).map_or(end, |at| i + 2 + at);
            out.push_str("--");
            lex(text, i + 2, j, false, double_quoted, out);
            i = j;
        } else if comments && c == b'/' && next == b'*' {
            let close = find(b, i + 2, end, b"*/");
            out.push_str("/*");
            lex(text, i + 2, close.unwrap_or(end), false, double_quoted, out);
            match close {
                Some(j) => {
                    out.push_str("*/");
                    i = j + 2;
                }
                None => i = end,
            }
        } else if c == b'$' {
            i = dollar(text, i, end, out);
        } else if (c == b':' || c == b'@') && next.is_ascii_digit() {
            let mut j = i + 1;
            while j < end && b[j].is_ascii_digit() {
                j += 1;
            }
            out.push_str(&text[i..j]);
            i = j;
        } else if c.is_ascii_digit() || (c == b'.' && next.is_ascii_digit()) {
            out.push_str(PLACEHOLDER);
            i = number_end(b, i, end);
        } else if ident(c) {
            let mut j = i + 1;
            while j < end && ident(b[j]) {
                j += 1;
            }
            if j == i + 1 && b"NnEeXxBbRr".contains(&c) && j < end && b[j] == b'\'' {
                out.push_str(PLACEHOLDER);
                i = string_end(b, j + 1, end, b'\'');
            } else {
                out.push_str(&text[i..j]);
                i = j;
            }
        } else {
            out.push(c as char);
            i += 1;
        }
    }
}

fn string_end(b: &[u8], mut i: usize, end: usize, quote: u8) -> usize {
    while i < end {
        if b[i] == b'\\' {
            i += 2;
        } else if b[i] == quote {
            if i + 1 < end && b[i + 1] == quote {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    end
}

fn quoted_end(b: &[u8], mut i: usize, end: usize, quote: u8) -> usize {
    while i < end {
        if b[i] == quote {
            if i + 1 < end && b[i + 1] == quote {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    end
}

fn number_end(b: &[u8], i: usize, end: usize) -> usize {
    let hex = i + 1 < end && b[i] == b'0' && (b[i + 1] | 0x20) == b'x';
    let mut j = i;
    while j < end {
        let c = b[j];
        let exponent_sign = (c == b'+' || c == b'-') && j > i && (b[j - 1] | 0x20) == b'e' && !hex;
        if exponent_sign || c.is_ascii_alphanumeric() || c == b'.' || c == b'_' {
            j += 1;
        } else {
            break;
        }
    }
    j
}

fn dollar(text: &str, i: usize, end: usize, out: &mut String) -> usize {
    let b = text.as_bytes();
    let mut j = i + 1;
    if j < end && b[j].is_ascii_digit() {
        while j < end && b[j].is_ascii_digit() {
            j += 1;
        }
        out.push_str(&text[i..j]);
        return j;
    }
    while j < end && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    if j < end && b[j] == b'$' {
        let tag = &b[i..=j];
        out.push_str(PLACEHOLDER);
        return find(b, j + 1, end, tag).map_or(end, |close| close + tag.len());
    }
    out.push_str(&text[i..j]);
    j
}

/// `sanitize(kind, text, mask, double_quoted=False, span_name=False)`: the native sanitiser's
/// output (of an attribute value, or of a span name), for the differential tests.
#[pyfunction]
#[pyo3(signature = (kind, text, mask, double_quoted=false, span_name=false))]
pub fn sanitize(
    kind: &str,
    text: &str,
    mask: &str,
    double_quoted: bool,
    span_name: bool,
) -> PyResult<String> {
    match Kind::from_name(kind) {
        Some(Kind::UrlQuery) if span_name => Ok(urls_in_text(text, mask)),
        Some(Kind::UrlQuery) => Ok(url_query(text, mask)),
        Some(Kind::Sql) => Ok(sql(text, double_quoted)),
        None => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "unknown sanitizer {kind:?}"
        ))),
    }
}
