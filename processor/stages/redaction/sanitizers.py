"""URL query-string and SQL literal sanitising: the redaction stage's `url_sanitizer` and
`db_sanitizer.sql` options (named as in the Collector's redaction processor).

Both are the reference for their Rust twins in processor/native/src/stages/sanitize.rs, which the native
redactor runs; tests/stages/redaction/test_redaction_sanitizers.py checks the two give the same text on the same
input. Both scan a value once, left to right, without backtracking or recursion, so a huge or
malformed value costs time linear in its length and never raises.
"""

from __future__ import annotations

from dataclasses import dataclass

# Kinds of sanitiser, as the rules name them and the native redactor takes them.
URL_QUERY = "url_query"
SQL = "sql"
# The slot names the stage counts their rewrites under (genops_redaction_total{detector}).
URL_SANITIZER_NAME = "url_sanitizer"
SQL_SANITIZER_NAME = "db_sanitizer"
# What a literal becomes: the placeholder SQL itself uses for a bound value.
SQL_PLACEHOLDER = "?"
# The span attributes that make a span a database client's (semantic conventions, current and
# deprecated): its name is then sanitised as SQL. The first system key that is present decides the
# dialect.
DB_SYSTEM_KEYS = ("db.system.name", "db.system")
DB_QUERY_KEYS = ("db.query.text", "db.statement")
# Systems that read "..." as a string literal (MySQL and MariaDB without ANSI_QUOTES, their default).
DOUBLE_QUOTED_STRING_SYSTEMS = frozenset({"mysql", "mariadb"})


@dataclass(frozen=True)
class Sanitizer:
    """One sanitiser the rules enabled: its kind, the attribute keys it reads (an anchored regex)
    and, for URLs, what a parameter's value becomes."""

    kind: str  # URL_QUERY | SQL
    key_regex: str
    mask: str = ""
    # Also span names: a database span's as SQL, a URL with a query inside any other span's name.
    span_names: bool = True

    @property
    def name(self) -> str:
        return URL_SANITIZER_NAME if self.kind == URL_QUERY else SQL_SANITIZER_NAME

    def apply(self, text: str, double_quoted_strings: bool = False) -> str:
        if self.kind == URL_QUERY:
            return sanitize_url_query(text, self.mask)
        return sanitize_sql(text, double_quoted_strings)

    def apply_to_span_name(self, name: str, double_quoted_strings: bool = False) -> str:
        if self.kind == URL_QUERY:
            return sanitize_urls_in_text(name, self.mask)
        return sanitize_sql(name, double_quoted_strings)


def reads_double_quoted_strings(system: str | None) -> bool:
    """Whether a database system of this name reads "..." as a string literal. ASCII case is
    ignored (the conventions' values are lower case; a differently cased one masks more)."""
    return system is not None and system.encode().lower().decode() in DOUBLE_QUOTED_STRING_SYSTEMS


# Separators of query-string parameters. `?` and `#` are separators too: after the first one the
# rest of a URL is query or fragment, and a fragment may carry parameters as well (an OAuth
# implicit flow's `#access_token=...`, a hash-routed `#/path?token=...`).
_PARAM_SEPARATORS = frozenset("&?#")


def sanitize_url_query(text: str, mask: str) -> str:
    """`text` with the value of every `key=value` parameter after its first `?` or `#` replaced
    by `mask` (keys, separators and empty values kept). A value given as a whole query string
    (`url.query`, no `?`) is all parameters."""
    start = _first_of(text, "?#")
    if start < 0:
        if "=" not in text or "://" in text or text.startswith("/"):
            return text
        start = -1  # a bare query string: parameters from the first character
    out = [text[: start + 1]]
    i = start + 1
    n = len(text)
    while i <= n:
        j = i
        while j < n and text[j] not in _PARAM_SEPARATORS:
            j += 1
        part = text[i:j]
        eq = part.find("=")
        if eq >= 0 and eq + 1 < len(part):
            out.append(part[: eq + 1] + mask)
        else:
            out.append(part)
        if j < n:
            out.append(text[j])
        i = j + 1
    return "".join(out)


# What separates the words of a span name (`GET https://a.io/s?q=1 HTTP/1.1`): ASCII whitespace,
# as the Rust twin reads it byte by byte.
_WORD_SEPARATORS = frozenset(" \t\n\r\x0b\x0c")


def sanitize_urls_in_text(text: str, mask: str) -> str:
    """`text` (a span name) with the query of every word that is a URL with one sanitised as
    `sanitize_url_query` does; the other words, the URL's path and the separators stay, so the span
    stays findable. A word is a URL when it has `://` before its first `?`/`#` or starts with `/`
    (a bare `a=b` word is not: outside a URL attribute it is prose)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        j = i
        while j < n and text[j] not in _WORD_SEPARATORS:
            j += 1
        word = text[i:j]
        query = _first_of(word, "?#")
        if query > 0 and (word.startswith("/") or "://" in word[:query]):
            word = sanitize_url_query(word, mask)
        out.append(word)
        while j < n and text[j] in _WORD_SEPARATORS:
            out.append(text[j])
            j += 1
        i = j
    return "".join(out)


def _first_of(text: str, chars: str) -> int:
    found = [i for i in (text.find(c) for c in chars) if i >= 0]
    return min(found) if found else -1


def _ident(c: str) -> bool:
    # ASCII letters, digits, `_`, `$`, and every non-ASCII character (identifiers may hold them);
    # the Rust twin decides by byte, which is the same for UTF-8.
    return (c.isascii() and (c.isalnum() or c in "_$")) or not c.isascii()


def _digit(c: str) -> bool:
    return "0" <= c <= "9"


# One-letter prefixes of string literals: N'national', E'escape', X'hex', B'bits', R'raw'.
_STRING_PREFIXES = frozenset("NnEeXxBbRr")


def sanitize_sql(text: str, double_quoted_strings: bool = False) -> str:
    """`text` with every string literal ('...', with '' and backslash escapes, prefixed N'...',
    dollar-quoted $$...$$ / $tag$...$tag$) and numeric literal replaced by `?`. Identifiers
    (also "quoted" and `quoted` ones), keywords, placeholders ($1, ?, :name, :1, @p1, %s) and
    comments stay; literals inside comments are replaced too. A literal without its end runs to
    the end of the value (or of its comment): it is replaced whole, never left half. With
    `double_quoted_strings` (MySQL, MariaDB) "..." is a string literal as well."""
    out: list[str] = []
    _lex(text, 0, len(text), True, double_quoted_strings, out)
    return "".join(out)


def _lex(text: str, i: int, end: int, comments: bool, double_quoted: bool, out: list[str]) -> None:
    """Sanitises text[i:end] into `out`. Comment bodies are lexed once more with `comments`
    off, so nesting never recurses deeper than that."""
    while i < end:
        c = text[i]
        nxt = text[i + 1] if i + 1 < end else ""
        if c == "'" or (c == '"' and double_quoted):
            out.append(SQL_PLACEHOLDER)
            i = _string_end(text, i + 1, end, c)
        elif c in '"`':
            j = _quoted_end(text, i + 1, end, c)
            out.append(text[i:j])
            i = j
        elif comments and c == "-" and nxt == "-":
            j = text.find("\n", i + 2, end)
            j = end if j < 0 else j
            out.append("--")
            _lex(text, i + 2, j, False, double_quoted, out)
            i = j
        elif comments and c == "/" and nxt == "*":
            j = text.find("*/", i + 2, end)
            body_end = end if j < 0 else j
            out.append("/*")
            _lex(text, i + 2, body_end, False, double_quoted, out)
            if j >= 0:
                out.append("*/")
                i = j + 2
            else:
                i = end
        elif c == "$":
            i = _dollar(text, i, end, out)
        elif c in ":@" and _digit(nxt):
            # A positional placeholder (:1, @1): kept with its number.
            j = i + 1
            while j < end and _digit(text[j]):
                j += 1
            out.append(text[i:j])
            i = j
        elif _digit(c) or (c == "." and _digit(nxt)):
            out.append(SQL_PLACEHOLDER)
            i = _number_end(text, i, end)
        elif _ident(c):
            j = i + 1
            while j < end and _ident(text[j]):
                j += 1
            if j == i + 1 and c in _STRING_PREFIXES and j < end and text[j] == "'":
                out.append(SQL_PLACEHOLDER)
                i = _string_end(text, j + 1, end, "'")
            else:
                out.append(text[i:j])
                i = j
        else:
            out.append(c)
            i += 1


def _string_end(text: str, i: int, end: int, quote: str) -> int:
    """Just past the `quote` that closes a string literal whose body starts at `i` (`end` if none):
    a doubled quote is a quote inside it, and so is a backslash-escaped one (as MySQL reads them;
    reading one where a dialect would not masks more, never less)."""
    while i < end:
        c = text[i]
        if c == "\\":
            i += 2
        elif c == quote:
            if i + 1 < end and text[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return end


def _quoted_end(text: str, i: int, end: int, quote: str) -> int:
    while i < end:
        if text[i] == quote:
            if i + 1 < end and text[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return end


def _number_end(text: str, i: int, end: int) -> int:
    # Digits, a fraction, an exponent, a hex form: everything up to the next character that is not
    # a letter, digit or `.`, so a malformed number (`1e`, `12abc`) goes whole.
    hex_form = text.startswith(("0x", "0X"), i, end)
    j = i
    while j < end:
        c = text[j]
        exponent_sign = c in "+-" and j > i and text[j - 1] in "eE" and not hex_form
        if exponent_sign or (c.isascii() and (c.isalnum() or c in "._")):
            j += 1
        else:
            break
    return j


def _dollar(text: str, i: int, end: int, out: list[str]) -> int:
    """At a `$`: a placeholder `$1`, a dollar-quoted string `$tag$...$tag$`, or a plain `$`."""
    j = i + 1
    if j < end and _digit(text[j]):
        while j < end and _digit(text[j]):
            j += 1
        out.append(text[i:j])
        return j
    while j < end and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
        j += 1
    # Not a digit after the `$` (that was a placeholder): `$$` or a tag that starts with a letter.
    if j < end and text[j] == "$":
        tag = text[i : j + 1]
        close = text.find(tag, j + 1, end)
        out.append(SQL_PLACEHOLDER)
        return end if close < 0 else close + len(tag)
    out.append(text[i:j])
    return j
