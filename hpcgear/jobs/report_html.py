"""A project's report as one self-contained HTML page with inline SVG charts.

Pure: a :class:`ReportData` in, HTML text out. No scripts, no fonts, no
stylesheets or images from anywhere else, so the page opens offline and can be
mailed or archived. Every label is HTML-escaped (user text is data).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CHART_IDS",
    "HEADER_PX",
    "PAGE_PX",
    "SECTION_PX",
    "ProvEdge",
    "ProvNode",
    "ReportData",
    "render_report_html",
]

#: Element ids of the chart regions, in page order (tests screenshot them).
CHART_IDS = ("jobs-over-time", "core-hours-by-gear", "core-hours-by-user", "wait-vs-run",
             "failure-kinds", "provenance")
#: Fixed layout (CSS pixels): the header block, then one section per chart, so a
#: chart's region on a screenshot is known: top = HEADER_PX + i * SECTION_PX.
HEADER_PX = 300
SECTION_PX = 380
PAGE_PX = 960

STATE_COLORS = {
    "complete": "#2e7d32", "failed": "#c62828", "cancelled": "#757575", "running": "#1565c0",
    "queued": "#6a1b9a", "pending": "#ef6c00", "submitting": "#00838f", "staging": "#558b2f",
}
BAR = "#1565c0"
W, H = 900, 320


@dataclass(frozen=True, slots=True)
class ProvNode:
    id: str
    label: str
    kind: str  # "file" | "job"
    state: str | None = None


@dataclass(frozen=True, slots=True)
class ProvEdge:
    source: str
    target: str


@dataclass
class ReportData:
    project: str
    generated: str
    totals: Mapping[str, Any]
    buckets: Sequence[str] = ()
    by_state: Mapping[str, Sequence[int]] = field(default_factory=dict)
    core_by_gear: Sequence[tuple[str, float]] = ()
    core_by_user: Sequence[tuple[str, float]] = ()
    wait_run: Sequence[tuple[float, float, str]] = ()  # (wait s, run s, state)
    failure_kinds: Sequence[tuple[str, int]] = ()
    session: str | None = None
    prov_nodes: Sequence[ProvNode] = ()
    prov_edges: Sequence[ProvEdge] = ()


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _svg(body: list[str], width: int = W, height: int = H, label: str = "") -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">'
            + "".join(body) + "</svg>")


def _nothing(label: str) -> str:
    return _svg([f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="muted">'
                 f"no data for {_e(label)}</text>"], label=label)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return float(step * exp)
    return float(10 * exp)


def stacked_columns(buckets: Sequence[str], series: Mapping[str, Sequence[int]], label: str) -> str:
    """Columns per bucket, stacked by state."""
    if not buckets or not any(sum(v) for v in series.values()):
        return _nothing(label)
    left, right, top, bottom = 50, 130, 20, 50
    pw, ph = W - left - right, H - top - bottom
    totals = [sum(series[s][i] for s in series) for i in range(len(buckets))]
    top_value = _nice_max(max(totals))
    step = pw / len(buckets)
    bar_w = max(1.0, step * 0.8)
    body = [f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" class="axis"/>']
    for k in range(5):
        v = top_value * k / 4
        y = top + ph - ph * k / 4
        body.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    for i, b in enumerate(buckets):
        x = left + i * step + (step - bar_w) / 2
        y = top + ph
        for state, counts in series.items():
            n = counts[i]
            if not n:
                continue
            h = ph * n / top_value
            y -= h
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                        f'fill="{STATE_COLORS.get(state, "#999")}"><title>{_e(b)} {_e(state)}: '
                        f"{n}</title></rect>")
        if len(buckets) <= 16 or i % math.ceil(len(buckets) / 16) == 0:
            body.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + ph + 16}" '
                        f'text-anchor="middle" class="small">{_e(b)}</text>')
    for j, state in enumerate(series):
        y = top + 14 + j * 18
        body.append(f'<rect x="{W - right + 16}" y="{y - 10}" width="12" height="12" '
                    f'fill="{STATE_COLORS.get(state, "#999")}"/>'
                    f'<text x="{W - right + 34}" y="{y}">{_e(state)}</text>')
    return _svg(body, label=label)


def horizontal_bars(
    items: Sequence[tuple[str, float]], label: str, unit: str, *, whole: bool = False
) -> str:
    """One bar per item, longest first (at most 12)."""
    items = sorted(items, key=lambda kv: -kv[1])[:12]
    if not items or not any(v > 0 for _, v in items):
        return _nothing(label)
    left, right, top = 200, 90, 14
    row = min(24.0, (H - 2 * top) / len(items))
    top_value = max(v for _, v in items)
    body = []
    for i, (name, v) in enumerate(items):
        y = top + i * row
        w = (W - left - right) * (v / top_value if top_value else 0)
        body.append(f'<text x="{left - 8}" y="{y + row * 0.65:.1f}" text-anchor="end">'
                    f"{_e(name[:28])}</text>"
                    f'<rect x="{left}" y="{y + 2:.1f}" width="{max(w, 1):.1f}" '
                    f'height="{row - 4:.1f}" fill="{BAR}"><title>{_e(name)}: {v:.2f} '
                    f"{_e(unit)}</title></rect>"
                    f'<text x="{left + w + 6:.1f}" y="{y + row * 0.65:.1f}">'
                    f"{int(v) if whole else round(v, 1)}</text>")
    return _svg(body, label=label)


def scatter(points: Sequence[tuple[float, float, str]], label: str) -> str:
    """Queue wait (x) against run time (y), in minutes, coloured by state."""
    if not points:
        return _nothing(label)
    left, right, top, bottom = 60, 20, 20, 50
    pw, ph = W - left - right, H - top - bottom
    xmax = _nice_max(max(p[0] for p in points) / 60)
    ymax = _nice_max(max(p[1] for p in points) / 60)
    body = [f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" class="axis"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" class="axis"/>',
            f'<text x="{left + pw / 2}" y="{H - 10}" text-anchor="middle">queue wait (min)</text>',
            f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" '
            'text-anchor="middle">run time (min)</text>']
    for k in range(5):
        body.append(f'<text x="{left + pw * k / 4:.1f}" y="{top + ph + 16}" text-anchor="middle" '
                    f'class="small">{xmax * k / 4:g}</text>'
                    f'<text x="{left - 6}" y="{top + ph - ph * k / 4 + 4:.1f}" text-anchor="end" '
                    f'class="small">{ymax * k / 4:g}</text>')
    for wait, run, state in points[:2000]:
        x = left + pw * (wait / 60) / xmax
        y = top + ph - ph * (run / 60) / ymax
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" '
                    f'fill="{STATE_COLORS.get(state, "#999")}" fill-opacity="0.75"/>')
    return _svg(body, label=label)


def provenance_graph(nodes: Sequence[ProvNode], edges: Sequence[ProvEdge], label: str) -> str:
    """Files and jobs in columns by depth; arrows input -> job -> output."""
    if not nodes:
        return _nothing(label)
    preds: dict[str, list[str]] = {n.id: [] for n in nodes}
    for e in edges:
        if e.target in preds and e.source in preds:
            preds[e.target].append(e.source)
    depth: dict[str, int] = {}

    def d(nid: str, seen: frozenset[str] = frozenset()) -> int:
        if nid not in depth:
            ps = [p for p in preds.get(nid, []) if p not in seen]
            depth[nid] = 1 + max((d(p, seen | {nid}) for p in ps), default=-1)
        return depth[nid]

    for n in nodes:
        d(n.id)
    columns: dict[int, list[ProvNode]] = {}
    for n in nodes:
        columns.setdefault(depth[n.id], []).append(n)
    ncols = max(columns) + 1
    nw, nh, gap_y = 170, 34, 14
    col_w = max(nw + 40, 0)
    height = max(H, 40 + max(len(c) for c in columns.values()) * (nh + gap_y))
    width = max(W, 40 + ncols * col_w)
    pos: dict[str, tuple[float, float]] = {}
    for c, members in columns.items():
        for i, n in enumerate(members):
            pos[n.id] = (20 + c * col_w, 20 + i * (nh + gap_y))
    body = ['<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
            "</defs>"]
    for e in edges:
        if e.source in pos and e.target in pos:
            (x1, y1), (x2, y2) = pos[e.source], pos[e.target]
            body.append(f'<line x1="{x1 + nw:.0f}" y1="{y1 + nh / 2:.0f}" x2="{x2:.0f}" '
                        f'y2="{y2 + nh / 2:.0f}" stroke="#555" stroke-width="1.5" '
                        'marker-end="url(#arrow)"/>')
    for n in nodes:
        x, y = pos[n.id]
        if n.kind == "job":
            fill = STATE_COLORS.get(n.state or "", "#999")
            shape = (f'<rect x="{x}" y="{y}" width="{nw}" height="{nh}" rx="10" fill="{fill}"/>')
            color = "#fff"
        else:
            shape = (f'<rect x="{x}" y="{y}" width="{nw}" height="{nh}" fill="#e3f2fd" '
                     'stroke="#1565c0"/>')
            color = "#0d47a1"
        body.append(f'<g>{shape}<text x="{x + nw / 2}" y="{y + nh / 2 + 4}" text-anchor="middle" '
                    f'fill="{color}" class="small">{_e(n.label[:26])}</text>'
                    f"<title>{_e(n.label)}</title></g>")
    return _svg(body, width=width, height=height, label=label)


CSS = f"""
body{{font-family:sans-serif;margin:0;color:#212121;background:#fff;width:{PAGE_PX}px}}
header{{height:{HEADER_PX}px;overflow:hidden;padding:0 24px;box-sizing:border-box}}
h1{{font-size:22px;margin:0;padding-top:16px}} h2{{font-size:16px;margin:0;height:40px;
line-height:40px}}
.muted{{fill:#757575;color:#757575}} svg text{{font-size:12px;fill:#212121}}
svg text.small{{font-size:10px}} svg .axis{{stroke:#9e9e9e}}
section{{height:{SECTION_PX}px;overflow:hidden;padding:0 24px;box-sizing:border-box;
border-top:1px solid #e0e0e0}}
section.graph{{height:auto;min-height:{SECTION_PX}px;overflow:auto}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{padding:1px 10px;text-align:right}}
th{{background:#f5f5f5}}
"""


def render_report_html(data: ReportData) -> str:
    """The whole page."""
    t = data.totals
    rate = t.get("success_rate")
    summary = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
        for k, v in (
            ("jobs", t.get("jobs", 0)), ("complete", t.get("complete", 0)),
            ("failed", t.get("failed", 0)), ("cancelled", t.get("cancelled", 0)),
            ("success rate", f"{100 * rate:.0f}%" if rate is not None else "-"),
            ("core-hours", t.get("core_hours", 0)), ("GPU-hours", t.get("gpu_hours", 0)),
            ("wall hours", t.get("wall_hours", 0)),
            ("mean queue wait (s)", t.get("mean_wait_seconds") or "-"),
        )
    )
    charts = [
        ("jobs-over-time", "Jobs over time by state",
         stacked_columns(data.buckets, data.by_state, "jobs over time")),
        ("core-hours-by-gear", "Core-hours by gear",
         horizontal_bars(data.core_by_gear, "core-hours by gear", "core-hours")),
        ("core-hours-by-user", "Core-hours by user",
         horizontal_bars(data.core_by_user, "core-hours by user", "core-hours")),
        ("wait-vs-run", "Queue wait against run time", scatter(data.wait_run, "wait vs run")),
        ("failure-kinds", "Failure kinds",
         horizontal_bars([(k, float(n)) for k, n in data.failure_kinds], "failure kinds",
                         "jobs", whole=True)),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hpcgear report: {_e(data.project)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<header><h1>hpcgear report: {_e(data.project)}</h1>",
        f'<p class="muted">generated {_e(data.generated)}</p>',
        f"<table>{summary}</table></header>",
    ]
    for cid, title, svg in charts:
        parts.append(f'<section class="chart" id="{cid}"><h2>{_e(title)}</h2>{svg}</section>')
    title = f"Provenance of session {data.session}" if data.session else "Provenance"
    parts.append(f'<section class="graph" id="provenance"><h2>{_e(title)}</h2>'
                 f"{provenance_graph(data.prov_nodes, data.prov_edges, 'provenance')}</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
