"""A reconciliation as a terminal table, CSV, a self-contained HTML page, and Prometheus text.

The HTML page has no external assets (no script, font or stylesheet link): its chart of daily
billed vs attributed spend is inline SVG, so the page opens the same from a mail attachment, an
artifact store or a air-gapped laptop. Every text in it is HTML-escaped.
"""

from __future__ import annotations

import csv
import html
import io

from processor.billing.ledger_cli import text_table
from processor.billing.reconcile import BILLED_ONLY, SEEN_ONLY, ReconciledRow, Reconciliation
from processor.stages.policy.reconcile_metrics import DAY_METRIC, DRIFT_METRIC

BILLED_COLOUR = "#1f5fbf"
OURS_COLOUR = "#e8740c"
HEADER = ["day", "provider", "model", "billed_usd", "ours_usd", "difference_usd", "share", "status"]


def _cells(row: ReconciledRow) -> list[str]:
    share = "" if row.share is None else f"{row.share:.4f}"
    return [
        row.day,
        row.provider,
        row.model,
        f"{row.billed_usd:.6f}",
        f"{row.ours_usd:.6f}",
        f"{row.difference_usd:.6f}",
        share,
        row.status,
    ]


def as_table(result: Reconciliation) -> str:
    table = [HEADER, *(_cells(r) for r in result.rows)]
    body = text_table(table)
    total = f"total billed {result.billed_usd:.6f} USD, attributed {result.ours_usd:.6f} USD"
    last = result.last_day
    if last is not None and last.drift_ratio is not None:
        total += f"; drift on {last.day}: {last.drift_ratio:+.2%}"
    counts = (
        f"{len(result.unmatched(BILLED_ONLY))} billed lines no span shows, "
        f"{len(result.unmatched(SEEN_ONLY))} attributed rows never billed"
    )
    return body + total + "\n" + counts + "\n"


def as_csv(result: Reconciliation) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(_cells(r) for r in result.rows)
    return out.getvalue()


def as_prometheus(result: Reconciliation) -> str:
    """For node_exporter's textfile collector (a CronJob running `reconcile --metrics-file`)."""
    last = result.last_day
    if last is None or last.drift_ratio is None:
        return ""
    import datetime as dt

    day_start = dt.datetime.fromisoformat(last.day).replace(tzinfo=dt.UTC).timestamp()
    return (
        f"# HELP {DRIFT_METRIC} (billed - attributed) / billed for the last reconciled day.\n"
        f"# TYPE {DRIFT_METRIC} gauge\n{DRIFT_METRIC} {last.drift_ratio!r}\n"
        f"# HELP {DAY_METRIC} Start (UTC) of the day {DRIFT_METRIC} is for.\n"
        f"# TYPE {DAY_METRIC} gauge\n{DAY_METRIC} {day_start!r}\n"
    )


def chart_svg(result: Reconciliation, width: int = 900, height: int = 320) -> str:
    """Bars per day: billed and attributed side by side, with a dollar axis."""
    days = result.days
    left, bottom, top = 70, 40, 20
    plot_w, plot_h = width - left - 20, height - bottom - top
    peak = max([d.billed_usd for d in days] + [d.ours_usd for d in days] + [1e-9])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Daily billed vs attributed spend">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    for i in range(5):
        value = peak * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#dddddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">${value:,.2f}</text>')
    slot = plot_w / max(len(days), 1)
    bar = slot * 0.35
    for i, day in enumerate(days):
        x = left + i * slot + slot * 0.12
        bars = ((0, day.billed_usd, BILLED_COLOUR, "billed"), (bar, day.ours_usd, OURS_COLOUR, "attributed"))
        for offset, value, colour, what in bars:
            h = plot_h * value / peak
            parts.append(
                f'<rect x="{x + offset:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{html.escape(day.day)} {what}: ${value:,.4f}</title></rect>'
            )
        parts.append(
            f'<text x="{x + bar:.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle">'
            f"{html.escape(day.day[5:])}</text>"
        )
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333333"/>')
    legend_y = height - 8
    parts.append(f'<rect x="{left}" y="{legend_y - 9}" width="10" height="10" fill="{BILLED_COLOUR}"/>')
    parts.append(f'<text x="{left + 14}" y="{legend_y}" font-size="11">billed</text>')
    parts.append(f'<rect x="{left + 70}" y="{legend_y - 9}" width="10" height="10" fill="{OURS_COLOUR}"/>')
    parts.append(f'<text x="{left + 84}" y="{legend_y}" font-size="11">attributed (genops ledger)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def as_html(result: Reconciliation, title: str = "Spend reconciliation") -> str:
    rows = "\n".join(
        '<tr class="{}">{}</tr>'.format(
            html.escape(r.status), "".join(f"<td>{html.escape(cell)}</td>" for cell in _cells(r))
        )
        for r in result.rows
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    last = result.last_day
    drift = "" if last is None or last.drift_ratio is None else f"; drift on {last.day}: {last.drift_ratio:+.2%}"
    summary = (
        f"Billed {result.billed_usd:,.4f} USD, attributed {result.ours_usd:,.4f} USD{drift}. "
        f"{len(result.unmatched(BILLED_ONLY))} billed lines no span shows; "
        f"{len(result.unmatched(SEEN_ONLY))} attributed rows never billed."
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; }}
td:nth-child(n+4):nth-child(-n+7) {{ text-align: right; }}
tr.{BILLED_ONLY} {{ background: #fde8e8; }}
tr.{SEEN_ONLY} {{ background: #fff6d6; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(summary)}</p>
{chart_svg(result)}
<table><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
</body></html>
"""
