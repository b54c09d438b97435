"""Hypothesis strategies for span attributes of every OTLP value type, and the keys a decoder is asked for."""

from __future__ import annotations

import math

from hypothesis import strategies as st

from processor.core.decode import WantedKeys

KEYS = ["gen_ai.request.model", "gen_ai.usage.input_tokens", "genops.team", "user.email", "n", "nested"]


WANTED = WantedKeys(
    item=frozenset([*KEYS[:4], "absent.key"]), resource=frozenset({"service.name", "genops.team"}), values=True
)


scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False) | st.sampled_from([math.inf, -math.inf, 1e16, 1e-5, 0.0001, -0.0, 123456789.0]),
    st.booleans(),
    st.binary(max_size=6),
)


values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from("abc"), scalars, max_size=2))


attributes = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)
