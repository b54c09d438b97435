"""What providers billed, read from their exports into one shape: `BillingLine` per day and charge.

- FOCUS 1.x CSV (the FinOps Foundation's billing format, exported by AWS, Azure and Google Cloud:
  Bedrock, Azure OpenAI and Vertex AI charges are lines of it). Read: ChargePeriodStart, ProviderName,
  ServiceName, SkuId, SkuPriceId, ChargeDescription, ResourceName, BilledCost or EffectiveCost,
  BillingCurrency, Tags (a JSON object; a `model` tag names the model where the SKU does not).
- OpenAI's organization costs report (GET /v1/organization/costs, grouped by line_item): pages of
  daily buckets whose results carry amount.value, amount.currency, line_item ("gpt-4o-2024-08-06,
  input") and project_id.
- Anthropic's Admin API cost report (GET /v1/organizations/cost_report): buckets with starting_at
  and results whose amount is a decimal string in cents, with model and description.

A file that cannot be read is one error naming the file and line; a line in another currency than
USD is an error too (the ledger is in USD and the report does not convert).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from processor.files.file_limits import read_text_limited

FOCUS = "focus"
OPENAI = "openai"
ANTHROPIC = "anthropic"
COST_COLUMNS = ("BilledCost", "EffectiveCost")
FOCUS_REQUIRED = ("ChargePeriodStart", "ProviderName", "BillingCurrency")


class BillingFileError(ValueError):
    """A billing file this reader cannot use; the message names the file and where."""


@dataclass(frozen=True)
class BillingLine:
    day: str  # YYYY-MM-DD, UTC day the charge period starts in
    provider: str  # as the source names it: "Microsoft Azure OpenAI Service", "openai", ...
    # Everything that may name the model (SKU, description, line item), searched for ledger models.
    model_text: str
    # The model as the line shows it, for a line no ledger model matches.
    shown_model: str
    usd: float
    source: str


def read_focus(path: Path, cost_column: str = "BilledCost") -> list[BillingLine]:
    if cost_column not in COST_COLUMNS:
        raise BillingFileError(f"cost column must be one of {', '.join(COST_COLUMNS)}")
    text = _read(path)
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in (*FOCUS_REQUIRED, cost_column) if c not in (reader.fieldnames or [])]
    if missing:
        raise BillingFileError(f"{path}: not a FOCUS export: no {missing[0]} column")
    lines = []
    for number, row in enumerate(reader, start=2):
        where = f"{path} line {number}"
        cost = _amount(row.get(cost_column), where, cost_column)
        if cost == 0.0:
            continue
        _usd(row.get("BillingCurrency", ""), where)
        tags = _tags(row.get("Tags") or "", where)
        fields = ("SkuId", "SkuPriceId", "ChargeDescription", "ResourceName", "x_SkuDescription")
        texts = [tags.get("model", ""), *(row.get(f) or "" for f in fields)]
        shown = tags.get("model") or row.get("SkuId") or row.get("ChargeDescription") or "unknown"
        provider = " ".join(filter(None, (row.get("ProviderName"), row.get("ServiceName"))))
        lines.append(BillingLine(_day(row["ChargePeriodStart"], where), provider, " ".join(texts), shown, cost, FOCUS))
    return lines


def read_openai_costs(path: Path) -> list[BillingLine]:
    lines = []
    for page, bucket in _buckets(path):
        where = f"{path} page {page}"
        try:
            day = dt.datetime.fromtimestamp(int(bucket["start_time"]), dt.UTC).date().isoformat()
        except (KeyError, TypeError, ValueError, OverflowError):
            raise BillingFileError(f"{where}: a bucket without a start_time in Unix seconds") from None
        for result in bucket.get("results") or []:
            amount = result.get("amount") or {}
            _usd(str(amount.get("currency", "usd")), where)
            usd = _amount(amount.get("value"), where, "amount.value")
            if usd == 0.0:
                continue
            item = str(result.get("line_item") or "")
            shown = item.partition(",")[0].strip() or "unknown"
            lines.append(BillingLine(day, OPENAI, item, shown, usd, OPENAI))
    return lines


def read_anthropic_costs(path: Path) -> list[BillingLine]:
    lines = []
    for page, bucket in _buckets(path):
        where = f"{path} page {page}"
        day = _day(str(bucket.get("starting_at", "")), where)
        for result in bucket.get("results") or []:
            _usd(str(result.get("currency") or "USD"), where)
            # A decimal string in cents: "123.45" is $1.2345.
            usd = _amount(result.get("amount"), where, "amount") / 100.0
            if usd == 0.0:
                continue
            model = str(result.get("model") or "")
            text = " ".join(filter(None, (model, str(result.get("description") or ""))))
            lines.append(BillingLine(day, ANTHROPIC, text, model or "unknown", usd, ANTHROPIC))
    return lines


def _read(path: Path) -> str:
    try:
        return read_text_limited(path)
    except OSError as exc:
        raise BillingFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BillingFileError(f"{path} is not UTF-8 text") from None
    except ValueError as exc:
        raise BillingFileError(f"{path}: {exc}") from None


def _buckets(path: Path) -> Iterable[tuple[int, dict]]:
    """(page number, bucket) of a report saved as one page, a list of pages or JSON lines."""
    text = _read(path)
    try:
        pages = [json.loads(text)]
    except json.JSONDecodeError:
        try:
            pages = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise BillingFileError(f"{path} is not JSON: line {exc.lineno}: {exc.msg}") from None
    if len(pages) == 1 and isinstance(pages[0], list):
        pages = pages[0]
    for number, page in enumerate(pages, start=1):
        data = page.get("data") if isinstance(page, dict) else None
        if not isinstance(data, list):
            raise BillingFileError(f"{path} page {number}: no data list (a cost report page holds one)")
        for bucket in data:
            if not isinstance(bucket, dict):
                raise BillingFileError(f"{path} page {number}: a bucket that is not an object")
            yield number, bucket


def _amount(value: object, where: str, name: str) -> float:
    try:
        amount = float(str(value).strip()) if value not in (None, "") else 0.0
    except ValueError:
        raise BillingFileError(f"{where}: {name} is not a number: {str(value)[:40]!r}") from None
    if not math.isfinite(amount):
        raise BillingFileError(f"{where}: {name} is not finite")
    return amount


def _usd(currency: str, where: str) -> None:
    if currency.strip().upper() != "USD":
        raise BillingFileError(f"{where}: currency {currency[:10]!r}; the ledger is in USD and is not converted")


def _day(timestamp: str, where: str) -> str:
    try:
        moment = dt.datetime.fromisoformat(timestamp.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BillingFileError(f"{where}: not an ISO 8601 time: {timestamp[:40]!r}") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date().isoformat()


def _tags(text: str, where: str) -> dict[str, str]:
    if not text.strip():
        return {}
    try:
        tags = json.loads(text)
    except json.JSONDecodeError:
        raise BillingFileError(f"{where}: Tags is not a JSON object") from None
    if not isinstance(tags, dict):
        raise BillingFileError(f"{where}: Tags is not a JSON object")
    return {str(k).lower(): str(v) for k, v in tags.items()}
