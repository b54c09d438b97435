"""`genops-sidecar ledger`: the spend ledger as a terminal table, CSV or JSON; and GET /v1/ledger.

Both read the rows the policy stage keeps in the budget state store (processor/stages/policy/ledger.py). The
command opens the configured store itself (the SQLite file or Redis the sidecar writes), without
the spill guard: it only reads.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import structlog

from processor.config import ConfigError, PolicyConfig
from processor.core.attribution import dimension_key
from processor.core.outbound import OutboundRedaction
from processor.stages.cost.stage import COST_PARTS
from processor.stages.policy.budget_state import BudgetStore, RedisStore, SqliteStore, default_state_path
from processor.stages.policy.budget_store_guard import UNAVAILABLE
from processor.stages.policy.ledger import MODEL_KEY, PROVIDER_KEY, LedgerRow, ledger_keys, read_rows

log = structlog.get_logger(__name__)

LEDGER_PATH = "/v1/ledger"
FORMATS = ("table", "csv", "json")
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")


def open_reading_store(config: PolicyConfig) -> BudgetStore:
    """The store the sidecar with this config writes, opened to read (an error if there is none)."""
    if config.state_backend == "memory":
        raise ValueError("policy.state_backend is memory: the ledger lives in the serving process (GET /v1/ledger)")
    if config.state_backend == "redis":
        return RedisStore(config.redis_url)
    path = config.state_path or str(default_state_path())
    if not Path(path).is_file():
        raise ValueError(f"no budget state file at {path} (policy.state_path): nothing charged yet")
    return SqliteStore(path)


def redacted_rows(rows: Sequence[LedgerRow], outbound: OutboundRedaction) -> list[LedgerRow]:
    """Rows as they may leave the process (stored redacted already; again for rows of older rules)."""
    return [
        LedgerRow(
            row.day,
            outbound.label(PROVIDER_KEY, row.provider),
            outbound.label(MODEL_KEY, row.model),
            tuple((k, outbound.label(dimension_key(k), v)) for k, v in row.keys),
            row.usd_total,
            row.usd_parts,
            row.tokens,
            row.spans,
        )
        for row in rows
    ]


def header(rows: Sequence[LedgerRow]) -> list[str]:
    return [
        "day",
        "provider",
        "model",
        *ledger_keys(rows),
        "usd_total",
        *(f"usd_{p}" for p in COST_PARTS),
        *(f"tokens_{t}" for t in TOKEN_KINDS),
        "spans",
    ]


def cells(row: LedgerRow, keys: Sequence[str]) -> list[str]:
    values = dict(row.keys)
    return [
        row.day,
        row.provider,
        row.model,
        *(values.get(k, "") for k in keys),
        f"{row.usd_total:.6f}",
        *(f"{row.usd_parts.get(p, 0.0):.6f}" for p in COST_PARTS),
        *(str(row.tokens.get(t, 0)) for t in TOKEN_KINDS),
        str(row.spans),
    ]


def render(rows: Sequence[LedgerRow], fmt: str) -> str:
    keys = ledger_keys(rows)
    if fmt == "json":
        return json.dumps({"rows": [r.as_json() for r in rows]}, indent=2) + "\n"
    table = [header(rows), *(cells(r, keys) for r in rows)]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(table)
        return out.getvalue()
    return text_table(table)


def text_table(table: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; columns of numbers right-aligned."""
    if not table:
        return ""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    numeric = [all(_is_number(row[i]) for row in table[1:]) and len(table) > 1 for i in range(len(widths))]
    lines = []
    for row in table:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines) + "\n"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return cell == ""
    return True


def _day(text: str) -> str:
    return dt.date.fromisoformat(text).isoformat()


def http_ledger(store: BudgetStore, outbound: OutboundRedaction, path: str) -> tuple[int, bytes, str]:
    """Answers `GET /v1/ledger?since=YYYY-MM-DD&until=YYYY-MM-DD&provider=&model=&<key>=`."""
    query = {key: values[-1] for key, values in parse_qs(urlsplit(path).query).items()}
    try:
        since, until = (_day(query.pop(name)) if name in query else "" for name in ("since", "until"))
    except ValueError:
        return _json(400, {"error": "since and until are days: YYYY-MM-DD"})
    try:
        rows = redacted_rows(read_rows(store, since, until), outbound)
    except Exception as exc:
        # Not the client's error text: it may name the store's address.
        log.warning("ledger read failed", error_type=type(exc).__name__)
        return _json(503, {"error": UNAVAILABLE})
    provider, model = query.pop("provider", None), query.pop("model", None)
    rows = [
        r
        for r in rows
        if (provider is None or r.provider == provider)
        and (model is None or r.model == model)
        and all(dict(r.keys).get(k) == v for k, v in query.items())
    ]
    return _json(200, {"rows": [r.as_json() for r in rows]})


def _json(status: int, body: dict) -> tuple[int, bytes, str]:
    return status, (json.dumps(body) + "\n").encode(), "application/json"


def _ledger(args: argparse.Namespace) -> int:
    from processor.config import config_path, load_config
    from processor.files.error_text import one_line
    from processor.stages.redaction.stage import build_outbound

    try:
        config = load_config(config_path(args))
        since = _day(args.since) if args.since else ""
        until = _day(args.until) if args.until else ""
        store = open_reading_store(config.policy)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"genops-sidecar ledger: {one_line(exc)}", file=sys.stderr)
        return 2
    try:
        rows = redacted_rows(read_rows(store, since, until), build_outbound(config.redaction))
    except Exception as exc:
        print(f"genops-sidecar ledger: cannot read the state store: {type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        store.close()
    sys.stdout.write(render(rows, args.format))
    return 0


def add_ledger_command(commands, parents) -> None:
    ledger = commands.add_parser(
        "ledger", help="print the spend ledger (per day, provider, model, keys)", parents=parents
    )
    ledger.add_argument("--since", help="first day, YYYY-MM-DD (UTC)")
    ledger.add_argument("--until", help="last day, YYYY-MM-DD (UTC)")
    ledger.add_argument("--format", choices=FORMATS, default="table")
    ledger.set_defaults(handler=_ledger)
