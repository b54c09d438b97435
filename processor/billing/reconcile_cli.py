"""`genops-sidecar reconcile`: the ledger against FOCUS exports and OpenAI / Anthropic cost reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from processor.billing.sources import (
    COST_COLUMNS,
    BillingFileError,
    read_anthropic_costs,
    read_focus,
    read_openai_costs,
)

FORMATS = ("table", "csv", "html")


def _reconcile(args: argparse.Namespace) -> int:
    from processor.billing.ledger_cli import open_reading_store
    from processor.billing.reconcile import reconcile
    from processor.billing.reconcile_report import as_csv, as_html, as_prometheus, as_table
    from processor.config import ConfigError, config_path, load_config
    from processor.files.error_text import one_line
    from processor.stages.policy.ledger import read_rows
    from processor.stages.redaction.stage import build_outbound

    if not (args.focus or args.openai_costs or args.anthropic_costs):
        print("genops-sidecar reconcile: give --focus, --openai-costs or --anthropic-costs", file=sys.stderr)
        return 2
    try:
        lines = [
            *(line for path in args.focus for line in read_focus(Path(path), args.cost_column)),
            *(line for path in args.openai_costs for line in read_openai_costs(Path(path))),
            *(line for path in args.anthropic_costs for line in read_anthropic_costs(Path(path))),
        ]
        config = load_config(config_path(args))
        store = open_reading_store(config.policy)
    except (BillingFileError, ConfigError, ValueError, OSError) as exc:
        print(f"genops-sidecar reconcile: {one_line(exc)}", file=sys.stderr)
        return 2
    try:
        rows = read_rows(store)
        result = reconcile(lines, rows, build_outbound(config.redaction))
        if not args.no_record:
            _record(store, result)
    except Exception as exc:
        print(f"genops-sidecar reconcile: cannot read the state store: {type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        store.close()
    render = {"table": as_table, "csv": as_csv, "html": as_html}[args.format]
    output = render(result)
    if args.output:
        Path(args.output).write_text(output, encoding="utf-8")
    else:
        sys.stdout.write(output)
    if args.metrics_file:
        Path(args.metrics_file).write_text(as_prometheus(result), encoding="utf-8")
    return 0


def _record(store, result) -> None:
    """The last day's figures into the store, for the sidecars' /metrics (stages/policy/reconcile_metrics.py)."""
    from processor.stages.policy.reconcile_metrics import record_last_day

    try:
        record_last_day(store, result.last_day)
    except Exception as exc:
        # The report stands without it; only the sidecars' gauge keeps its previous figures.
        print(
            f"genops-sidecar reconcile: the drift was not recorded in the state store: {type(exc).__name__}",
            file=sys.stderr,
        )


def add_reconcile_command(commands, parents) -> None:
    command = commands.add_parser(
        "reconcile", help="compare the ledger with provider billing (FOCUS, OpenAI, Anthropic)", parents=parents
    )
    command.add_argument("--focus", action="append", default=[], metavar="CSV", help="FOCUS 1.x billing export")
    command.add_argument("--openai-costs", action="append", default=[], metavar="JSON", help="OpenAI costs report")
    command.add_argument("--anthropic-costs", action="append", default=[], metavar="JSON", help="Anthropic cost report")
    command.add_argument("--cost-column", choices=COST_COLUMNS, default="BilledCost", help="FOCUS column compared")
    command.add_argument("--format", choices=FORMATS, default="table")
    command.add_argument("--output", help="write the report here instead of standard output")
    command.add_argument(
        "--metrics-file", help=f"also write {'genops_reconciliation_drift_ratio'} in Prometheus text format here"
    )
    command.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the last day's drift in the state store (sidecars' /metrics show the last recorded)",
    )
    command.set_defaults(handler=_reconcile)
