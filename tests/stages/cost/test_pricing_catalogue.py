"""`genops-sidecar pricing build` on small source files written here, and the catalogue lint: every
model name the sources give for a shipped provider is priced by its own entry or estimated, never
by a sibling's, with the real matcher over the shipped tables."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pytest
import yaml

from processor.stages.cost.catalogue.crosscheck import deduplicate
from processor.stages.cost.catalogue.entries import CatalogueEntry
from processor.stages.cost.model_versions import is_snapshot_of
from processor.stages.cost.pricing_table import default_table_path, load_table, lookup_names
from tests.support.cli import run_in_process

GENAI_PRICES = """\
- id: openai
  pricing_urls: [https://openai.com/api/pricing/]
  models:
    - id: gpt-9
      match:
        or:
          - equals: gpt-9
          - equals: gpt-9-2031-01-01
      prices:
        - prices: {input_mtok: 2, cache_read_mtok: 0.2, output_mtok: 8}
        - constraint: {start_date: 2031-06-01}
          prices: {input_mtok: 1, cache_read_mtok: 0.1, output_mtok: 4, input_audio_mtok: 40, output_image_mtok: 30}
    - id: gpt-9-mini
      match: {starts_with: gpt-9-mini}
      prices:
        input_mtok: {base: 0.5, tiers: [{start: 200000, price: 1}]}
        output_mtok: 2
    - id: gpt-9-anything
      match: {ends_with: -turbo}
      prices: {input_mtok: 9, output_mtok: 9}
    - id: gpt-9-night
      match: {equals: gpt-9-night}
      prices:
        - prices: {input_mtok: 3, output_mtok: 3}
        - constraint: {start_time: "00:00:00Z", end_time: "08:00:00Z"}
          prices: {input_mtok: 1, output_mtok: 1}
- id: google
  models:
    - id: gemini-8-flash
      match:
        or:
          - ends_with: gemini-8-flash
          - starts_with: gemini-8-flash-0
      prices: {input_mtok: 0.1, output_mtok: 0.4}
    - id: claude-w
      match: {starts_with: claude-w@}
      prices: {input_mtok: 3, output_mtok: 15}
- id: anthropic
  models:
    - id: claude-z
      match: {equals: claude-z}
      prices: {input_mtok: 3, output_mtok: 15}
"""

LITELLM = {
    "sample_spec": {"input_cost_per_token": 0},
    "gpt-9": {
        "litellm_provider": "openai",
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 4e-06,
        "input_cost_per_token_priority": 2e-06,
        "output_cost_per_token_priority": 8e-06,
    },
    "gpt-9-mini-2031-02-02": {
        "litellm_provider": "openai",
        "input_cost_per_token": 5e-07,
        "output_cost_per_token": 2e-06,
    },
    "openai/gpt-9-nano": {
        "litellm_provider": "openai",
        "input_cost_per_token": 1e-07,
        "output_cost_per_token": 4e-07,
        "input_cost_per_token_batches": 5e-08,
        "output_cost_per_token_batches": 2e-07,
        "input_cost_per_token_priority": 2e-07,
        "output_cost_per_token_priority": 8e-07,
        "cache_read_input_token_cost_priority": 1e-07,
        "input_cost_per_audio_token": 4e-06,
        "output_cost_per_audio_token": 8e-06,
    },
    "claude-y": {
        "litellm_provider": "anthropic",
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 5e-06,
        "cache_creation_input_token_cost": 1.25e-06,
        "cache_creation_input_token_cost_above_1hr": 2e-06,
        "input_cost_per_token_flex": 5e-07,
        "output_cost_per_token_flex": 4e-06,
    },
    "gemini/gemini-9-flash": {
        "litellm_provider": "gemini",
        "input_cost_per_token": 1e-07,
        "output_cost_per_token": 4e-07,
    },
    "gemini-9-flash": {
        "litellm_provider": "vertex_ai-language-models",
        "input_cost_per_token": 1.5e-07,
        "output_cost_per_token": 6e-07,
    },
    "claude-z": {"litellm_provider": "anthropic", "input_cost_per_token": 4e-06, "output_cost_per_token": 1.5e-05},
    "dall-e-9": {"litellm_provider": "openai", "output_cost_per_image": 0.04},
    "bedrock/us-east-1/anthropic.claude-z-v1:0": {
        "litellm_provider": "bedrock",
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
    },
}

OVERRIDES = """\
version: "2031-07-01"
models:
  - provider: anthropic
    model: claude-z
    input: 3.5
    output: 15
    source: https://www.anthropic.com/pricing#api
    note: "both sources are wrong: the pricing page says $3.50"
"""


@pytest.fixture
def sources(tmp_path):
    genai = tmp_path / "genai-prices.yml"
    genai.write_text(GENAI_PRICES)
    litellm = tmp_path / "prices.json"
    litellm.write_text(json.dumps(LITELLM))
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(OVERRIDES)
    return genai, litellm, overrides


def build(tmp_path, genai, litellm, overrides, *extra: str) -> int:
    return run_in_process(
        "pricing",
        "build",
        "--genai-prices",
        str(genai),
        "--litellm",
        str(litellm),
        "--litellm-version",
        "9.9.9",
        "--overrides",
        str(overrides),
        "-o",
        str(tmp_path / "tables"),
        "--report",
        str(tmp_path / "report.md"),
        "--as-of",
        "2031-07-01",
        *extra,
    )


def test_build_converts_both_sources_with_provenance_and_histories(tmp_path, sources):
    assert build(tmp_path, *sources) == 0
    table = load_table(tmp_path / "tables")
    gpt9 = [e for e in table.entries if e.model == "gpt-9"]
    assert [(e.effective_from, e.effective_to, e.prices["input"]) for e in gpt9] == [
        (None, dt.date(2031, 6, 1), 2),
        (dt.date(2031, 6, 1), None, 1),
    ]
    assert gpt9[0].aliases == ("gpt-9-2031-01-01",)
    assert {e.source for e in gpt9} == {"genai-prices data file genai-prices.yml"}
    assert all(e.as_of == dt.date(2031, 7, 1) for e in table.entries if e.provider == "openai")
    mini = table.entry(table.resolve("openai", "gpt-9-mini-2031-03-03"))
    assert (mini.match, mini.tiers[0].above_input_tokens, mini.tiers[0].prices["input"]) == ("prefix", 200_000, 1)
    # Only LiteLLM has it: its own entry, the route dropped, LiteLLM's release as the source.
    nano = table.entry(table.resolve("openai", "gpt-9-nano"))
    assert (nano.prices["input"], nano.source) == (pytest.approx(0.1), "https://pypi.org/project/litellm/9.9.9/")
    # genai-prices has gpt-9-mini's snapshot already (a prefix entry): no second entry for it.
    assert not [e for e in table.entries if e.model == "gpt-9-mini-2031-02-02"]


def test_build_reports_disagreements_and_applies_overrides(tmp_path, sources):
    assert build(tmp_path, *sources) == 0
    table = load_table(tmp_path / "tables")
    claude = table.entry(table.resolve("anthropic", "claude-z"))
    assert claude.prices["input"] == 3.5
    assert claude.source == "https://www.anthropic.com/pricing#api"
    report = (tmp_path / "report.md").read_text()
    # 3 vs 4 is 25% apart: reported, and the override is what ships.
    assert "| anthropic | claude-z | input | 3 | 4 | 25% | override |" in report
    # gpt-9: LiteLLM has today's price, genai-prices' current period is the same: no disagreement.
    assert "| openai | gpt-9 |" not in report


def test_build_reports_what_it_cannot_convert(tmp_path, sources):
    assert build(tmp_path, *sources) == 0
    report = (tmp_path / "report.md").read_text()
    assert "litellm openai `dall-e-9`: no per-token input price" in report
    assert "litellm aws.bedrock `bedrock/us-east-1/anthropic.claude-z-v1:0`: region or deployment path" in report
    assert "genai-prices openai `gpt-9-anything`: match clause ['ends_with'] not expressible" in report
    assert "genai-prices openai `gpt-9-night`: time-of-day price not modelled" in report
    assert "genai-prices: `output_image_mtok`: 1" in report
    assert "input_audio_mtok" not in report  # carried as a modality price
    assert "litellm anthropic `claude-y`: flex prices are not one factor of the standard prices" in report


def test_build_imports_service_tiers_1h_cache_writes_and_modality_prices(tmp_path, sources):
    assert build(tmp_path, *sources) == 0
    table = load_table(tmp_path / "tables")
    # LiteLLM's per-tier prices as factors, over the provider's rule (OpenAI batch/flex 0.5).
    nano = table.entry(table.resolve("openai", "gpt-9-nano"))
    assert nano.service_tiers == {"batch": 0.5, "flex": 0.5, "priority": 2}
    assert nano.modality_prices == {"audio_input": 4, "audio_output": 8}
    # genai-prices' gpt-9 (kept) gets LiteLLM's priority factor for today's prices only, and its
    # own audio price.
    gpt9 = [e for e in table.entries if e.model == "gpt-9"]
    assert [e.service_tiers.get("priority") for e in gpt9] == [None, 2]
    assert [e.modality_prices for e in gpt9] == [{}, {"audio_input": 40}]
    claude = table.entry(table.resolve("anthropic", "claude-y"))
    assert claude.cache_write_1h_factor == 1.6
    assert claude.service_tiers == {"batch": 0.5}  # the inconsistent flex prices are not taken


def test_build_keeps_the_gemini_api_and_vertex_ai_apart(tmp_path, sources):
    assert build(tmp_path, *sources) == 0
    table = load_table(tmp_path / "tables")
    for spelling, price in [("gcp.gemini", 0.1), ("gemini", 0.1), ("gcp.vertex_ai", 0.15), ("vertex_ai", 0.15)]:
        entry = table.entry(table.resolve(spelling, "gemini-9-flash"))
        assert entry.prices["input"] == pytest.approx(price), spelling
    # Vertex's stable versions are snapshots of the model LiteLLM names.
    assert table.entry(table.resolve("gcp.vertex_ai", "gemini-9-flash-001")).prices["input"] == pytest.approx(0.15)
    assert table.resolve("gcp.gemini", "gemini-9-flash-001") is None
    # genai-prices' one `google` provider: its `ends_with` a model name is that name (the Gemini
    # API's price); its Claude models are the ones Vertex AI serves.
    assert table.entry(table.resolve("gcp.gemini", "gemini-8-flash")).prices["input"] == pytest.approx(0.1)
    assert table.entry(table.resolve("gcp.vertex_ai", "claude-w@20310101")).provider == "google.vertex_ai"
    assert table.resolve("gcp.gemini", "claude-w@20310101") is None


def test_build_is_reproducible(tmp_path, sources):
    assert build(tmp_path, *sources) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "tables").iterdir()}
    assert build(tmp_path, *sources) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "tables").iterdir()} == first


def test_an_override_without_a_note_or_pricing_page_is_refused(tmp_path, sources, capsys):
    genai, litellm, overrides = sources
    overrides.write_text(OVERRIDES.replace("    note:", "    #").replace("https://www.anthropic.com/pricing#api", "x"))
    assert build(tmp_path, genai, litellm, overrides) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "an override needs a note" in err and "Traceback" not in err


def test_a_broken_source_file_is_one_clear_error(tmp_path, sources, capsys):
    genai, litellm, overrides = sources
    litellm.write_text("{not json")
    assert build(tmp_path, genai, litellm, overrides) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read") and err.count("\n") == 1
    genai.write_text("- just: a list\n")
    litellm.write_text("{}")
    assert build(tmp_path, genai, litellm, overrides) == 2
    assert "expected a genai-prices provider" in capsys.readouterr().err


# --- the shipped catalogue -------------------------------------------------------------------

SOURCE_NAMES = default_table_path() / "reports" / "source-names.json.gz"


@pytest.fixture(scope="module")
def shipped():
    return load_table(default_table_path())


def test_the_catalogue_is_large_and_covers_the_providers(shipped):
    assert shipped.model_count >= 1000
    wanted = {
        "openai",
        "anthropic",
        "google",
        "aws.bedrock",
        "azure.openai",
        "mistral",
        "cohere",
        "deepseek",
        "xai",
        "groq",
        "together",
        "fireworks",
        "perplexity",
        "openrouter",
        "moonshot",
        "alibaba",
        "zai",
        "cerebras",
        "minimax",
        "azure.ai.inference",
    }
    assert wanted <= set(shipped.providers)


def own(entry, name: str) -> bool:
    """Whether `entry` prices `name` as that model's own: one of its names, a snapshot of a prefix
    entry, or an explicit regex (a full match the source wrote for exactly these names)."""
    if entry.match == "regex":
        return True
    for candidate in lookup_names(entry.provider, name):
        if candidate in {n.lower() for n in (entry.model, *entry.aliases)}:
            return True
        if entry.match == "prefix" and is_snapshot_of(candidate, entry.model.lower()):
            return True
    return False


def test_catalogue_lint_no_source_name_is_priced_by_a_sibling(shipped):
    names = json.loads(gzip.decompress(SOURCE_NAMES.read_bytes()))
    assert set(names) == {"genai-prices", "litellm"}
    checked, siblings, unpriced = 0, [], []
    for origin, pairs in names.items():
        for provider, name in pairs:
            found = shipped.match(provider, name)
            checked += 1
            if found is None:
                unpriced.append((origin, provider, name))  # a name a source prices, lost by the build
                continue
            if found.near:
                continue  # estimated: never silently priced
            entry = shipped.entry(found.group)
            if entry.provider != provider or not own(entry, name.lower()):
                siblings.append((origin, provider, name, entry.model))
    assert checked >= 3000
    assert siblings == []
    # Every name a source prices is priced by its own entry or estimated, none left unpriced (the
    # dated GLM-5.1-20260406 only genai-prices' zhipuai list names was, before the build kept a
    # duplicate's snapshot names).
    assert unpriced == []


def test_a_dropped_duplicates_snapshot_names_join_the_entry_that_won():
    def entry(model, aliases, input_price):
        return CatalogueEntry("zai", model, "exact", aliases, {"input": input_price})

    kept, dropped = deduplicate(
        (
            entry("GLM-5.1", ("glm-5.1",), 1.4),
            entry("GLM-5.1", ("glm-5.1", "GLM-5.1-20260406", "glm-5.1-20260406", "glm-5.1-air"), 0.8),
        )
    )
    winner = [(e.model, e.aliases, e.prices["input"]) for e in kept]
    assert winner == [("GLM-5.1", ("glm-5.1", "GLM-5.1-20260406"), 1.4)]
    # Not a snapshot (another model): it stays the dropped entry's, reported with it.
    assert [d.model for d in dropped] == ["GLM-5.1"]


def test_the_issues_known_errors_are_corrected(shipped):
    def current(provider, model):
        entry = shipped.entry(shipped.resolve(provider, model))
        history = [e for e in shipped.entries if e.key == entry.key and e.effective_to is None]
        return history[0]

    assert current("openai", "gpt-5.2").prices["input"] == 1.75
    assert current("openai", "gpt-5.2").prices["output"] == 14
    assert current("anthropic", "claude-opus-4-6").prices["input"] == 5
    assert current("google", "gemini-2.5-flash").prices["cache_read"] == 0.03
    assert current("deepseek", "deepseek-chat").prices["output"] == 0.42
    assert shipped.resolve("google", "gemini-3-flash-preview") is not None
    regional = current("aws.bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    world = current("aws.bedrock", "global.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert regional.prices["input"] == pytest.approx(world.prices["input"] * 1.1)
    small = [e for e in shipped.entries if e.provider == "mistral" and e.model == "mistral-small-latest"]
    # -latest moved to a newer model: the alias carries what it cost when.
    assert [(e.effective_from, e.effective_to, e.prices["input"]) for e in small] == [
        (None, dt.date(2026, 3, 16), 0.1),
        (dt.date(2026, 3, 16), None, 0.15),
    ]


def test_every_shipped_file_fits_a_configmap():
    for path in default_table_path().glob("*.yaml"):
        assert path.stat().st_size < 1024 * 1024 // 2, path.name
    # The overrides are a table the sidecar loads: each says what it corrects and where.
    overrides = yaml.safe_load((default_table_path() / "overrides.yaml").read_text())
    assert all(m.get("note") and str(m.get("source", "")).startswith("https://") for m in overrides["models"])


# The command pricing_tables/README.md gives for the shipped files (genai-prices 0.2.5 is a test
# dependency; the LiteLLM price map it was built from is kept in pricing_tables/sources/).
LITELLM_VERSION = "1.110.2"
BUILT_ON = "2026-12-07"


def test_the_shipped_catalogue_is_what_the_build_makes_of_its_sources(tmp_path):
    shipped_dir = default_table_path()
    out = tmp_path / "tables"
    code = run_in_process(
        "pricing",
        "build",
        "--genai-prices",
        "installed",
        "--litellm",
        str(shipped_dir / "sources" / f"litellm-{LITELLM_VERSION}-model_prices_and_context_window_backup.json.gz"),
        "--litellm-version",
        LITELLM_VERSION,
        "--overrides",
        str(shipped_dir / "overrides.yaml"),
        "-o",
        str(out),
        "--report",
        str(out / "reports" / "build-report.md"),
        "--source-names",
        str(out / "reports" / "source-names.json.gz"),
        "--as-of",
        BUILT_ON,
    )
    assert code == 0
    generated = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "google-vertex_ai.yaml" in generated
    # Every file the build writes is shipped byte for byte (no hand edit survives a rebuild), and
    # every shipped table file is one the build writes.
    different = [name for name in generated if (shipped_dir / name).read_bytes() != (out / name).read_bytes()]
    assert different == []
    assert {p.name for p in shipped_dir.glob("*.yaml")} == {name for name in generated if name.endswith(".yaml")}
