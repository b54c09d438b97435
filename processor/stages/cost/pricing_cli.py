"""`genops-sidecar pricing check|import|build|diff|quote`: validate, convert, rebuild, compare and try out
pricing tables."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from pathlib import Path

import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client import CollectorRegistry

from processor.config import CostConfig
from processor.core import genai_attributes as ga
from processor.core.decode import decode_traces
from processor.files.safe_yaml import dump_yaml
from processor.stages.cost import billing_dimensions as bd
from processor.stages.cost.catalogue.build import BuildOptions, build
from processor.stages.cost.catalogue.genai_prices_source import SourceError
from processor.stages.cost.pricing_diff import diff_tables
from processor.stages.cost.pricing_diff import render as render_diff
from processor.stages.cost.pricing_table import (
    PRICE_FIELDS,
    PricingError,
    default_table_path,
    load_table,
    parse_document,
)
from processor.stages.cost.stage import (
    COST_MODEL,
    COST_PARTS,
    COST_PROVIDER,
    COST_STATUS,
    COST_TOTAL,
    ESTIMATED,
    PRICED,
    CostStage,
)

PRICING_ENV = "GENOPS_COST_PRICING_FILE"

# litellm's `litellm_provider` and route prefixes → our provider names.
LITELLM_PROVIDERS = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "vertex_ai-language-models": "google.vertex_ai",
    "vertex_ai": "google.vertex_ai",
    "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock",
    "azure": "azure.openai",
    "azure_ai": "azure.ai.inference",
    "mistral": "mistral",
    "codestral": "mistral",
    "text-completion-codestral": "mistral",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "deepseek": "deepseek",
    "xai": "xai",
    "groq": "groq",
    "together_ai": "together",
    "fireworks_ai": "fireworks",
    "perplexity": "perplexity",
}
GENAI_PRICES_PROVIDERS = {"aws": "aws.bedrock", "azure": "azure.openai", "x_ai": "xai"}
# input_cost_per_token_above_200k_tokens, cache_read_input_token_cost_above_200k_tokens, ...
_LITELLM_TIER = re.compile(
    r"^(input|output|cache_read_input|cache_creation_input)_(?:cost_per_token|token_cost)_above_(\d+)k_tokens$"
)
_LITELLM_TIER_FIELD = {
    "input": "input",
    "output": "output",
    "cache_read_input": "cache_read",
    "cache_creation_input": "cache_write",
}


def add_pricing_commands(subparsers: argparse._SubParsersAction) -> None:
    pricing = subparsers.add_parser("pricing", help="check, import and try pricing tables")
    commands = pricing.add_subparsers(dest="pricing_command", required=True)

    check = commands.add_parser("check", help="validate a pricing file or directory")
    check.add_argument("file")
    check.set_defaults(handler=run_check)

    imported = commands.add_parser("import", help="convert a litellm or genai-prices file into our format")
    imported.add_argument("--from", dest="source_format", choices=("litellm", "genai-prices"), required=True)
    imported.add_argument("file")
    imported.add_argument("-o", "--output", help="YAML file to write (default: stdout)")
    imported.add_argument("--version", dest="table_version", help="version of the new table (default: today)")

    imported.set_defaults(handler=run_import)

    built = commands.add_parser("build", help="rebuild the catalogue from genai-prices and litellm data files")
    built.add_argument(
        "--genai-prices", required=True, help='"installed" (the genai-prices package) or a genai-prices data file'
    )
    built.add_argument("--litellm", required=True, help="litellm's model_prices_and_context_window.json")
    built.add_argument("--litellm-version", default="unknown", help="the litellm release the file comes from")
    built.add_argument("--overrides", required=True, help="the reviewed overrides (a pricing table file)")
    built.add_argument("-o", "--output", required=True, help="the table directory to write")
    built.add_argument("--report", help="where to write the report of disagreements and unconverted entries")
    built.add_argument("--source-names", help="where to write the sources' model names (gzip JSON, for the lint)")
    built.add_argument("--as-of", help="date the sources were read, YYYY-MM-DD (default: today)")
    built.add_argument("--version", dest="table_version", help="version of the new table (default: the as-of date)")
    built.set_defaults(handler=run_build)

    compared = commands.add_parser("diff", help="added, removed and changed prices between two tables")
    compared.add_argument("old")
    compared.add_argument("new")
    compared.set_defaults(handler=run_diff)

    quote = commands.add_parser("quote", help="price one request")
    quote.add_argument("model")
    quote.add_argument("--input", type=int, default=0, help="input tokens, cached ones included")
    quote.add_argument("--output", type=int, default=0, help="output tokens, reasoning included")
    quote.add_argument("--cache-read", type=int, default=None)
    quote.add_argument("--cache-write", type=int, default=None)
    quote.add_argument("--reasoning", type=int, default=None)
    quote.add_argument("--provider", default=None)
    quote.add_argument("--service-tier", default=None, help="batch, flex, priority... (default: standard)")
    quote.add_argument("--cache-write-1h", type=int, default=None, help="of the cache writes, 1-hour ones")
    quote.add_argument("--audio-input", type=int, default=None, help="of the input tokens, audio ones")
    quote.add_argument("--audio-output", type=int, default=None, help="of the output tokens, audio ones")
    quote.add_argument("--search-context-size", default=None, help="low, medium or high (search fees)")
    quote.add_argument("--at", default=None, help="date of the request, YYYY-MM-DD (default: today)")
    quote.add_argument("--pricing", default=None, help=f"table (default: ${PRICING_ENV}, else the shipped tables)")
    quote.set_defaults(handler=run_quote)


def run_check(args: argparse.Namespace) -> int:
    try:
        table = load_table(args.file)
    except PricingError as exc:
        print(f"invalid: {args.file}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"valid: {args.file}")
    print(f"  version: {table.version}")
    print(f"  models: {table.model_count} ({len(table.entries)} price entries)")
    print(f"  providers: {', '.join(table.providers)}")
    undocumented = [e.origin for e in table.entries if not e.source or e.as_of is None]
    for origin in undocumented:
        print(f"  warning: {origin}: no source or as_of date")
    return 0


def run_build(args: argparse.Namespace) -> int:
    try:
        as_of = dt.date.fromisoformat(args.as_of) if args.as_of else dt.datetime.now(dt.UTC).date()
    except ValueError:
        print(f"error: --as-of must be a date (YYYY-MM-DD), not {args.as_of!r}", file=sys.stderr)
        return 2
    options = BuildOptions(
        genai_prices=args.genai_prices,
        litellm=args.litellm,
        overrides=Path(args.overrides),
        out=Path(args.output),
        report=Path(args.report) if args.report else None,
        as_of=as_of,
        version=args.table_version or as_of.isoformat(),
        litellm_version=args.litellm_version,
        source_names=Path(args.source_names) if args.source_names else None,
    )
    try:
        facts = build(options)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PricingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {facts.models} models over {len(facts.providers)} providers to {options.out}; "
        f"{len(facts.disagreements)} disagreements over 1%, {len(facts.unconvertible)} entries not converted"
        + (f" (report: {options.report})" if options.report else "")
    )
    return 0


def run_diff(args: argparse.Namespace) -> int:
    """Exit 0: same prices; 1: they differ (the changes printed); 2: a table cannot be loaded."""
    tables = []
    for path in (args.old, args.new):
        try:
            tables.append(load_table(path))
        except PricingError as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 2
    diff = diff_tables(*tables)
    for line in render_diff(diff):
        print(line)
    old, new = tables
    counts = f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed"
    print(f"{old.version} -> {new.version}: {counts}", file=sys.stderr)
    return 0 if diff.empty else 1


def run_quote(args: argparse.Namespace) -> int:
    """Prices one request as the sidecar does: a span with these attributes through the cost stage
    itself (its native engine, billing dimensions and all), on the table given."""
    path = args.pricing or os.environ.get(PRICING_ENV) or default_table_path()
    try:
        day = dt.date.fromisoformat(args.at) if args.at else dt.datetime.now(dt.UTC).date()
        stage = CostStage(CostConfig(pricing_file=str(path)), CollectorRegistry(), watch=False)
    except (PricingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    modality = {"audio_input": args.audio_input, "audio_output": args.audio_output}
    attributes = {
        "gen_ai.request.model": args.model,
        "gen_ai.provider.name": args.provider,
        "gen_ai.usage.input_tokens": args.input,
        "gen_ai.usage.output_tokens": args.output,
        "gen_ai.usage.cache_read.input_tokens": args.cache_read,
        "gen_ai.usage.cache_write.input_tokens": args.cache_write,
        "gen_ai.usage.reasoning.output_tokens": args.reasoning,
        bd.SERVICE_TIER_SOURCES[-1]: args.service_tier,
        bd.CACHE_WRITE_1H_SOURCES[0]: args.cache_write_1h,
        bd.SEARCH_CONTEXT_SOURCES[0]: args.search_context_size,
        **{bd.MODALITY_SOURCES[kind][0]: count for kind, count in modality.items()},
    }
    start_ns = (day - dt.date(1970, 1, 1)).days * bd.NS_PER_DAY
    try:
        written = _priced_span(stage, attributes, start_ns)
    finally:
        stage.close()
    table = stage.table
    if written.get(COST_STATUS) not in (PRICED, ESTIMATED):
        print(f"no price for {args.model!r} (provider {args.provider or 'any'}) on {day} in {path}", file=sys.stderr)
        return 1
    print(f"model: {written[COST_MODEL]} ({written[COST_PROVIDER]}), pricing version {table.version}, {day}")
    if written[COST_STATUS] == ESTIMATED:
        print(f"  estimated: {args.model!r} is not {written[COST_MODEL]} nor one of its snapshots, only near it")
    if written.get(bd.COST_SERVICE_TIER):
        print(f"  service tier: {written[bd.COST_SERVICE_TIER]}")
    if written.get(bd.COST_ASSUMED):
        print(f"  assumed: {written[bd.COST_ASSUMED]}")
    for part in COST_PARTS:
        print(f"  {part:<12} ${written.get(f'genops.cost.{part}') or 0.0:.6f}")
    print(f"  {'total':<12} ${written[COST_TOTAL]:.6f}")
    return 0


def _priced_span(stage: CostStage, attributes: dict[str, object], start_ns: int) -> dict[str, object]:
    """What the cost stage writes on one span with `attributes` (None values left out)."""
    values = []
    for key, value in attributes.items():
        if value is None:
            continue
        any_value = (
            common_pb2.AnyValue(int_value=value)
            if isinstance(value, int)
            else common_pb2.AnyValue(string_value=str(value))
        )
        values.append(common_pb2.KeyValue(key=key, value=any_value))
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        spans=[
                            trace_pb2.Span(
                                name="pricing quote",
                                start_time_unix_nano=start_ns,
                                end_time_unix_nano=start_ns,
                                attributes=values,
                            )
                        ]
                    )
                ]
            )
        ]
    )
    changes = stage.process(decode_traces(request.SerializeToString(), stage.wanted_keys()))
    return {name: column[0] for name, column in changes.set_attributes.items()}


def run_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_text()
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    version = args.table_version or dt.datetime.now(dt.UTC).date().isoformat()
    converter = from_litellm if args.source_format == "litellm" else from_genai_prices
    try:
        table, skipped = converter(document, version)
    except ValueError as exc:
        print(f"error: {path} is not a {args.source_format} file: {exc}", file=sys.stderr)
        return 2
    _, _, problems = parse_document(table, str(path))
    if problems:
        print("error: the converted table does not validate:", file=sys.stderr)
        for problem in problems[:20]:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    out = dump_yaml(table, sort_keys=False, allow_unicode=True, width=120)
    if args.output:
        Path(args.output).write_text(out)
        print(f"wrote {len(table['models'])} models to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(out)
    for note in skipped:
        print(f"skipped: {note}", file=sys.stderr)
    return 0


def _clean(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if v is not None and v != [] and v != ""}


def from_litellm(document: object, version: str) -> tuple[dict, list[str]]:
    """litellm's model_prices_and_context_window.json: model name → costs per *token*."""
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object keyed by model name")
    today = dt.datetime.now(dt.UTC).date().isoformat()
    models: list[dict] = []
    skipped: list[str] = []
    seen: set[tuple[str, str]] = set()
    for key, spec in document.items():
        if key == "sample_spec" or not isinstance(spec, dict):
            continue
        if spec.get("input_cost_per_token") is None:
            skipped.append(f"{key}: no per-token input price")
            continue
        route = str(spec.get("litellm_provider", ""))
        provider = LITELLM_PROVIDERS.get(route) or ga.normalize_provider(route)
        if not provider:
            skipped.append(f"{key}: no litellm_provider")
            continue
        model = key
        head, sep, rest = key.partition("/")
        if sep and (head == route or head in LITELLM_PROVIDERS):
            model = rest
        if (provider, model.lower()) in seen:
            continue
        seen.add((provider, model.lower()))
        tiers: dict[int, dict] = {}
        for field, value in spec.items():
            found = _LITELLM_TIER.match(field)
            if found and value is not None:
                tier = tiers.setdefault(int(found.group(2)) * 1000, {})
                tier[_LITELLM_TIER_FIELD[found.group(1)]] = _per_million(value)
        entry = {
            "model": model,
            "provider": provider,
            "input": _per_million(spec.get("input_cost_per_token")),
            "output": _per_million(spec.get("output_cost_per_token")) or 0.0,
            "cache_read": _per_million(spec.get("cache_read_input_token_cost")),
            "cache_write": _per_million(spec.get("cache_creation_input_token_cost")),
            "reasoning": _per_million(spec.get("output_cost_per_reasoning_token")),
            "request": spec.get("input_cost_per_request"),
            "tiers": [{"above_input_tokens": size, **prices} for size, prices in sorted(tiers.items())],
            "source": spec.get("source")
            or "https://github.com/BerriAI/litellm/blob/main/model_prices_and_context_window.json",
            "as_of": today,
        }
        models.append(_clean(entry))
    return {"version": version, "currency": "USD", "models": models}, skipped


def _per_million(value: object) -> float | None:
    if value is None:
        return None
    return round(float(value) * 1_000_000, 9)  # type: ignore[arg-type]


def from_genai_prices(document: object, version: str) -> tuple[dict, list[str]]:
    """pydantic/genai-prices: a provider file (id, models) or data.json (a list of providers)."""
    providers = document if isinstance(document, list) else [document]
    models: list[dict] = []
    skipped: list[str] = []
    seen: set[tuple] = set()
    for provider_doc in providers:
        if not isinstance(provider_doc, dict) or "models" not in provider_doc or "id" not in provider_doc:
            raise ValueError("expected a provider with id and models, or a list of them")
        provider_id = str(provider_doc["id"])
        provider = GENAI_PRICES_PROVIDERS.get(provider_id) or ga.normalize_provider(provider_id)
        urls = provider_doc.get("pricing_urls") or [provider_doc.get("pricing_url")]
        source = urls[0] if urls else None
        for model in provider_doc["models"]:
            try:
                converted = _genai_prices_model(model, provider, source, skipped)
            except (KeyError, TypeError, ValueError) as exc:
                skipped.append(f"{provider_id}/{model.get('id', '?')}: {exc}")
                continue
            for entry in converted:
                # Overlapping match clauses in the source would collide in our table: first one wins.
                key = (provider, entry.get("match"), entry["model"].lower(), entry.get("effective_from"))
                if key in seen:
                    skipped.append(f"{provider_id}/{model['id']}: {entry['model']} already priced by an earlier model")
                    continue
                seen.add(key)
                models.append(entry)
    return {"version": version, "currency": "USD", "models": models}, skipped


def _genai_prices_model(model: dict, provider: str | None, source: str | None, skipped: list[str]) -> list[dict]:
    matches = _genai_prices_match(model["match"])
    if not matches:
        skipped.append(f"{model['id']}: match clause not expressible as exact/prefix/regex")
        return []
    checked = model.get("prices_checked")
    as_of = checked.isoformat() if isinstance(checked, dt.date) else (checked if isinstance(checked, str) else None)
    prices = model["prices"]
    periods: list[tuple[str | None, dict]] = []
    if isinstance(prices, list):
        for conditional in prices:
            constraint = conditional.get("constraint") or {}
            if "start_time" in constraint:
                skipped.append(f"{model['id']}: time-of-day price not supported, base price kept")
                continue
            start = constraint.get("start_date")
            periods.append((str(start) if start else None, conditional["prices"]))
        periods.sort(key=lambda p: p[0] or "")
    else:
        periods.append((None, prices))
    out: list[dict] = []
    for index, (start, price) in enumerate(periods):
        end = periods[index + 1][0] if index + 1 < len(periods) else None
        fields, tiers = _genai_prices_fields(price)
        if fields.get("input") is None:
            fields["input"] = 0.0
        for kind, name, aliases in matches:
            out.append(
                _clean(
                    {
                        "model": name,
                        "provider": provider,
                        "match": kind,
                        "aliases": aliases,
                        **fields,
                        "tiers": tiers,
                        "effective_from": start,
                        "effective_to": end,
                        "source": source,
                        "as_of": as_of,
                    }
                )
            )
    return out


def _genai_prices_fields(price: dict) -> tuple[dict, list[dict]]:
    names = {
        "input_mtok": "input",
        "output_mtok": "output",
        "cache_read_mtok": "cache_read",
        "cache_write_mtok": "cache_write",
    }
    fields: dict = {}
    tiers: dict[int, dict] = {}
    for theirs, ours in names.items():
        value = price.get(theirs)
        if isinstance(value, dict):
            fields[ours] = float(value["base"])
            for tier in value.get("tiers", []):
                tiers.setdefault(int(tier["start"]), {})[ours] = float(tier["price"])
        elif value is not None:
            fields[ours] = float(value)
    if price.get("requests_kcount") is not None:
        fields["request"] = float(price["requests_kcount"]) / 1000
    assert set(fields) <= {*PRICE_FIELDS, "request"}
    return fields, [{"above_input_tokens": size, **t} for size, t in sorted(tiers.items())]


def _genai_prices_match(clause: dict) -> list[tuple[str, str, list[str]]]:
    """genai-prices match clauses → (kind, name, aliases) entries; `and` clauses are not supported."""
    if "equals" in clause:
        return [("exact", clause["equals"], [])]
    if "starts_with" in clause:
        return [("prefix", clause["starts_with"], [])]
    if "regex" in clause:
        return [("regex", clause["regex"], [])]
    if "contains" in clause:
        return [("regex", f".*{re.escape(clause['contains'])}.*", [])]
    if "ends_with" in clause:
        return [("regex", f".*{re.escape(clause['ends_with'])}", [])]
    if "or" in clause:
        parts = [m for sub in clause["or"] for m in _genai_prices_match(sub)]
        exact = [name for kind, name, _ in parts if kind == "exact"]
        others = [p for p in parts if p[0] != "exact"]
        if exact:
            others.insert(0, ("exact", exact[0], exact[1:]))
        return others
    return []
