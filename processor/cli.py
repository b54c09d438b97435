"""`genops-sidecar` command line: serve, validate-config, conformance, the pricing tools, ledger and reconcile."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys

from processor.config import CONFIG_ENV, ConfigError, config_path, load_config
from processor.files.error_text import one_line
from processor.observability import configure_logging

# What an operator can get wrong at start (a port in use, an unusable state file, a broken
# referenced file): one line and exit code 2, not a traceback. RecursionError: a regex or YAML
# nested thousands deep.
STARTUP_ERRORS = (ValueError, OSError, sqlite3.Error, RecursionError)


def _serve(args: argparse.Namespace) -> int:
    from processor.transport.allocator import tune_allocator

    # First, before any library starts a thread: threads keep the malloc arena they first used.
    tune_allocator()
    try:
        config = load_config(config_path(args))
    except ConfigError as exc:
        print(f"genops-sidecar: invalid configuration: {one_line(exc)}", file=sys.stderr)
        return 2
    configure_logging(config.logging.level, config.logging.format)
    # Before polars is imported (here and, through the environment, in worker processes): a batch
    # is too small for polars' thread pool to pay off, and cores are used by worker processes.
    # Measured: 23% less CPU per span with one thread (benchmarks/RESULTS.md).
    os.environ.setdefault("POLARS_MAX_THREADS", "1")
    from processor.stages.assembly import check_stages
    from processor.transport import workers

    try:
        # Checked before any worker starts, so a broken pricing table or rules file is one clear
        # message and exit code 2, not a crash loop of workers.
        check_stages(config)
        return workers.run(config)
    except STARTUP_ERRORS as exc:
        print(f"genops-sidecar: cannot start: {one_line(exc)}", file=sys.stderr)
        return 2


def _validate_config(args: argparse.Namespace) -> int:
    path = args.file or config_path(args)
    try:
        config = load_config(path)
        from prometheus_client import CollectorRegistry

        from processor.stages.assembly import build_stages, check_stages, close_stages

        check_stages(config)
        # Building the stages loads pricing tables, redaction rules and policies, so a broken
        # referenced file fails validation too, not just the YAML of the config itself.
        close_stages(build_stages(config, CollectorRegistry()))
    except (ConfigError, *STARTUP_ERRORS) as exc:
        print(f"invalid: {one_line(exc)}", file=sys.stderr)
        return 1
    print(f"valid: {path or '(embedded defaults)'}")
    return 0


def _conformance(args: argparse.Namespace) -> int:
    """Exit 0: every AWU conforms; 1: violations (one line each); 2: the input cannot be read (or,
    with --listen, the address cannot be bound)."""
    from pathlib import Path

    from processor.stages.policy import conformance

    if (args.file is None) == (args.listen is None):
        print("genops-sidecar: conformance: give a FILE or --listen HOST:PORT (one of them)", file=sys.stderr)
        return 2
    if args.count and args.listen is None:
        print("genops-sidecar: conformance: --count goes with --listen", file=sys.stderr)
        return 2
    try:
        if args.listen is not None:
            from processor.transport.conformance_sink import listen_and_collect

            requests = listen_and_collect(args.listen, args.count)
        else:
            requests = conformance.read_requests(Path(args.file))
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"genops-sidecar: conformance: {one_line(exc)}", file=sys.stderr)
        return 2
    report = conformance.check(requests, args.level)
    for line in conformance.render(report):
        print(line)
    return 0 if report.compliant else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genops-sidecar",
        description="OTLP/gRPC sidecar for the OpenTelemetry Collector: GenAI cost, redaction, budgets.",
    )
    config_help = f"YAML config file (default: ${CONFIG_ENV}, else embedded defaults)"
    parser.add_argument("--config", help=config_help)
    # Also accepted after the command (`serve --config FILE`, the form the README uses); SUPPRESS
    # keeps a value given before the command when none is given after it.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the sidecar", parents=[after])
    serve.set_defaults(handler=_serve)
    validate = commands.add_parser(
        "validate-config", help="check a config file and everything it references", parents=[after]
    )
    validate.add_argument("file", nargs="?", help="config file (default: --config / $GENOPS_CONFIG)")
    validate.set_defaults(handler=_validate_config)
    conformance = commands.add_parser(
        "conformance",
        help="report GenOps v0.1 violations per AI Workload Unit in OTLP trace output",
    )
    conformance.add_argument(
        "file", nargs="?", help="OTLP trace requests: JSON lines (Collector file exporter) or one protobuf"
    )
    conformance.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="instead of a file: be an OTLP/gRPC trace sink there, report on SIGTERM/SIGINT or after --count",
    )
    conformance.add_argument(
        "--count", type=int, default=0, metavar="N", help="with --listen: report after N export requests"
    )
    conformance.add_argument(
        "--level",
        choices=("full", "partial", "auto"),
        default="partial",
        help="§9.1 full or §9.2 partial compliance; auto: full for AWUs whose runtime reserved, partial otherwise",
    )
    conformance.set_defaults(handler=_conformance)
    from processor.stages.cost.pricing_cli import add_pricing_commands

    add_pricing_commands(commands)
    from processor.billing.ledger_cli import add_ledger_command
    from processor.billing.reconcile_cli import add_reconcile_command

    add_ledger_command(commands, [after])
    add_reconcile_command(commands, [after])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        # One-shot commands print their own results; only problems from the stages are logged.
        configure_logging("warning", "console")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
