"""The native scanner reads string values as Python decodes protobuf text: invalid UTF-8 becomes U+FFFD.

Text is checked for ASCII a word at a time before full UTF-8 validation; these requests put
non-ASCII and invalid bytes at every place that check treats differently (inside a word, in the
overlapping last word, in values shorter than a word, past the 12 bytes a view holds inline).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.core import decode
from processor.core.decode import WantedKeys, decode_traces

pytestmark = pytest.mark.skipif(decode._native is None, reason="native scanner not built")

WANTED = WantedKeys(item=frozenset({"text"}), values=True)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _varint(len(content)) + content


def _request(values: list[bytes]) -> bytes:
    """One span per value, its attribute `text` holding the raw bytes as a string value
    (written by hand: the protobuf runtime refuses to serialise invalid UTF-8)."""
    spans = b"".join(
        _field(0x12, _field(0x4A, _field(0x0A, b"text") + _field(0x12, _field(0x0A, value)))) for value in values
    )
    return _field(0x0A, _field(0x12, spans))


ascii_text = st.text(st.characters(max_codepoint=0x7F), max_size=40).map(str.encode)
unicode_text = st.text(max_size=40).map(str.encode)
raw_bytes = st.binary(max_size=40)
# ASCII with one foreign byte at a chosen place: the word checks must find it wherever it sits.
spliced = st.tuples(ascii_text, st.integers(0, 40), st.sampled_from([b"\xc3\xa9", b"\xff", b"\xe2\x82", b"\x80"])).map(
    lambda parts: parts[0][: parts[1]] + parts[2] + parts[0][parts[1] :]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(ascii_text, unicode_text, raw_bytes, spliced), min_size=1, max_size=8))
def test_string_values_decode_like_python(monkeypatch, values):
    monkeypatch.setenv("GENOPS_NATIVE_DECODE", "1")
    batch = decode_traces(_request(values), WANTED)
    expected = [value.decode("utf-8", "replace") for value in values]
    assert batch.frame["text"].to_list() == expected
    assert batch.string_values().sort("owner")["value"].to_list() == expected
