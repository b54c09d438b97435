"""Comparisons for differential tests: the native engine against its oracle, to the last bit."""

from __future__ import annotations

from polars.testing import assert_frame_equal, assert_series_equal
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from processor.core.contract import BatchChanges


def same(native: object, fallback: object, where: str) -> None:
    """Equal values of equal types (floats to the last bit, so 0.0 is not -0.0)."""
    if isinstance(native, list | tuple) and isinstance(fallback, list | tuple):
        assert len(native) == len(fallback), where
        for a, b in zip(native, fallback, strict=True):
            same(a, b, where)
    elif isinstance(native, dict) and isinstance(fallback, dict):
        assert native.keys() == fallback.keys(), where
        for key in native:
            same(native[key], fallback[key], f"{where}.{key}")
    elif isinstance(native, float) and isinstance(fallback, float):
        assert native.hex() == fallback.hex(), f"{where}: {native!r} != {fallback!r}"
    else:
        assert native == fallback and type(native) is type(fallback), f"{where}: {native!r} != {fallback!r}"


def assert_same_changes(native: BatchChanges, reference: BatchChanges) -> None:
    assert native.set_attributes.keys() == reference.set_attributes.keys()
    for key, series in reference.set_attributes.items():
        assert_series_equal(native.set_attributes[key], series)
    assert (native.rewrites is None) == (reference.rewrites is None)
    if reference.rewrites is not None:
        order = ["scope", "owner", "position"]
        assert_frame_equal(native.rewrites.sort(order), reference.rewrites.sort(order))
    assert native.events == reference.events == []


def metric_samples(registry: CollectorRegistry) -> dict[tuple, float]:
    """Every sample the registry exposes, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        # When a series was created differs between the two registries by construction.
        if not sample.name.endswith("_created")
    }
