"""Renders the dashboard's main panels to a PNG straight from Prometheus, without Grafana.

    python -m gpuwarden.dashboards.render --prometheus.url http://127.0.0.1:9090 --out fleet.png --range 15m

The panels, queries, legends, units and threshold lines are read from the generated dashboard
model itself, so the picture shows what Grafana would (same queries, same lines). Needs the
``render`` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuwarden.durations import parse as parse_duration
from gpuwarden.prom import PrometheusClient, PrometheusError, Series

from . import queries

if TYPE_CHECKING:
    import numpy as np

DASHBOARD = Path(__file__).resolve().parent / "gpu-fleet.json"

# The panels drawn, in reading order (two per row), by their title in the dashboard.
MAIN_PANELS = (
    "Temperature",
    "Power",
    "Utilization",
    "Memory pressure",
    "Throttling",
    "Active alerts",
    "ECC errors",
    "Failure risk",
)
# The stats written in the header line.
HEADER_STATS = ("GPUs total", "GPUs available", "GPUs unhealthy", "Jobs pending", "Alerts firing")

_COLORS = {"green": "tab:green", "blue": "tab:blue", "orange": "tab:orange", "red": "tab:red"}
_LEGEND_MAX = 10  # more series than this: the legend lists the non-zero ones
_POINTS = 240  # samples per series across the range, like a Grafana panel of medium width


class RenderError(Exception):
    """A panel could not be rendered (names the panel and what went wrong)."""


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: ``{{label}}`` replaced by the series' value of that label."""
    if not fmt or fmt == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{labels.get('__name__', '')}{{{inner}}}"
    out = fmt
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
    return out


def variable_values(range_s: float, step_s: float, scrape_s: float, instance: str, gpu: str) -> dict[str, str]:
    """What Grafana would put in place of each variable for this range and step."""
    return {
        "instance": instance,
        "gpu": gpu,
        # Grafana: max($__interval + scrape interval, 4 * scrape interval).
        "__rate_interval": format_duration(max(step_s + scrape_s, 4 * scrape_s)),
        "__interval": format_duration(step_s),
        "__range": format_duration(range_s),
    }


def format_duration(seconds: float) -> str:
    """A Grafana-style interval for ``seconds``: whole seconds, at least 1s (``$__interval``)."""
    return f"{max(1, int(round(seconds)))}s"


def _drawable(s: Series) -> Series:
    """``s`` with NaN where Prometheus answered NaN or ±Inf (nothing to draw there)."""
    import numpy as np

    return Series(s.labels, s.times, np.where(np.isfinite(s.values), s.values, np.nan))


def _panels_by_title(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in model["panels"] if p.get("type") != "row"}


def _threshold_lines(panel: dict[str, Any]) -> list[tuple[float, str]]:
    defaults = panel["fieldConfig"]["defaults"]
    if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off") == "off":
        return []
    return [
        (s["value"], _COLORS.get(s["color"], s["color"]))
        for s in defaults["thresholds"]["steps"]
        if s["value"] is not None
    ]


def _format_axis(ax: Any, unit: str) -> None:
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    if unit == "percentunit":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif unit == "bytes":
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 2**30:.0f} GiB"))
    else:
        suffix = {"celsius": " °C", "watt": " W", "s": " s"}.get(unit, "")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{suffix}"))


def _overridden(panel: dict[str, Any], name: str) -> dict[str, Any]:
    """The override properties Grafana applies to the series ``name`` (later overrides win)."""
    props: dict[str, Any] = {}
    for o in panel["fieldConfig"].get("overrides", []):
        m = o["matcher"]
        hit = (m["id"] == "byName" and m["options"] == name) or (
            m["id"] == "byRegexp" and re.fullmatch(m["options"], name) is not None
        )
        for prop in o["properties"] if hit else []:
            props[prop["id"]] = prop["value"]
    return props


def _stacked(panel: dict[str, Any], name: str) -> bool:
    """Whether Grafana would stack this series: the panel's default, unless an override says not."""
    default = panel["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {})
    mode: str = _overridden(panel, name).get("custom.stacking", default).get("mode", "none")
    return mode != "none"


def _draw_panel(ax: Any, panel: dict[str, Any], series: list[tuple[str, Series]]) -> None:
    import matplotlib.dates as mdates

    defaults = panel["fieldConfig"]["defaults"]
    ax.set_title(panel["title"], loc="left", fontsize=11, fontweight="bold")
    ax.grid(True, alpha=0.3)
    # Stacked series add up point by point (query_range answers share one time grid).
    base: dict[float, float] = {}
    crowded = len(series) > _LEGEND_MAX
    shown = 0
    for name, s in series:
        s = _drawable(s)
        values: np.ndarray | list[float] = s.values
        if _stacked(panel, name):
            values = [
                v + base.get(t, 0.0) if not math.isnan(v) else math.nan for t, v in zip(s.times, s.values, strict=False)
            ]
            for t, v in zip(s.times, s.values, strict=False):
                base[t] = base.get(t, 0.0) + (0.0 if math.isnan(v) else v)
        times = [datetime.fromtimestamp(t, tz=UTC) for t in s.times]
        # A crowded legend lists only the series that ever left zero (the ones worth reading).
        quiet = crowded and all(math.isnan(v) or v == 0 for v in s.values)
        shown += not quiet
        # Dashed where the dashboard draws it dashed (limits, thresholds, the agent's totals).
        props = _overridden(panel, name)
        style = "--" if props.get("custom.lineStyle", {}).get("fill") == "dash" else "-"
        colour = _COLORS.get(props.get("color", {}).get("fixedColor", ""))
        ax.plot(times, values, style, color=colour, linewidth=1.2, label="_" + name if quiet else name)
    for value, color in _threshold_lines(panel):
        ax.axhline(value, color=color, linestyle="--", linewidth=1, alpha=0.9)
    if "min" in defaults or "max" in defaults:
        ax.set_ylim(defaults.get("min"), defaults.get("max"))
    _format_axis(ax, defaults.get("unit", "short"))
    # Minute ticks repeat on ranges of a few minutes: let matplotlib pick the precision.
    locator = mdates.AutoDateLocator(tz=UTC, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC, show_offset=False))
    if shown:
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=7,
            framealpha=0.6,
            ncol=1 if shown <= 12 else 2,
            borderaxespad=0,
        )
    if not series:
        ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", fontsize=14, color="grey")
    elif crowded and len(series) > shown:
        ax.text(
            1.01,
            0.0,
            f"{len(series) - shown} series at 0 not listed",
            transform=ax.transAxes,
            fontsize=7,
            color="grey",
            va="bottom",
        )


def render(
    prom: PrometheusClient,
    out: Path,
    range_s: float,
    end: float | None = None,
    instance: str = ".*",
    gpu: str = ".*",
    dashboard: Path = DASHBOARD,
    panels: Sequence[str] = MAIN_PANELS,
) -> dict[str, int]:
    """Writes the PNG; returns the number of series drawn per panel title."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file, not a window
    import matplotlib.pyplot as plt

    model = json.loads(dashboard.read_text(encoding="utf-8"))
    by_title = _panels_by_title(model)
    missing = [t for t in panels if t not in by_title]
    if missing:
        raise RenderError(f"{dashboard}: no panel titled {', '.join(map(repr, missing))}")
    end = time.time() if end is None else end
    start = end - range_s
    step = max(1.0, range_s / _POINTS)
    values = variable_values(range_s, step, prom.scrape_interval(), instance, gpu)

    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(20, 3.4 * rows + 0.8), squeeze=False)
    drawn: dict[str, int] = {}
    try:
        for ax, title in zip(axes.flat, panels, strict=False):
            panel = by_title[title]
            series: list[tuple[str, Series]] = []
            for target in panel["targets"]:
                expr = queries.substitute(target["expr"], values)
                try:
                    result = prom.query_range(expr, start, end, step)
                except PrometheusError as exc:
                    raise RenderError(f'panel "{title}" target {target["refId"]}: {exc}') from exc
                series += [(legend(target.get("legendFormat", ""), s.labels), s) for s in result]
            series.sort(key=lambda item: item[0])
            _draw_panel(ax, panel, series)
            drawn[title] = len(series)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle(_header(prom, model, by_title, values, end, range_s), fontsize=13, x=0.01, ha="left")
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=90)
    finally:
        plt.close(fig)
    return drawn


def _header(
    prom: PrometheusClient,
    model: dict[str, Any],
    by_title: dict[str, dict[str, Any]],
    values: dict[str, str],
    end: float,
    range_s: float,
) -> str:
    parts = []
    for title in HEADER_STATS:
        panel = by_title.get(title)
        if panel is None:
            continue
        try:
            result = prom.query(queries.substitute(panel["targets"][0]["expr"], values), at=end)
        except PrometheusError:
            result = []
        shown = f"{_drawable(result[0]).values[0]:g}" if result else "–"
        parts.append(f"{title}: {shown}")
    when = datetime.fromtimestamp(end, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{model['title']}   last {format_duration(range_s)} to {when}\n" + "   ·   ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gpuwarden.dashboards.render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--prometheus.url",
        dest="url",
        default="http://127.0.0.1:9090",
        help="Prometheus base URL (default %(default)s)",
    )
    ap.add_argument("--out", type=Path, required=True, help="PNG file to write")
    ap.add_argument(
        "--range",
        dest="range",
        default="15m",
        help="time range ending now, as a Prometheus duration (default %(default)s)",
    )
    ap.add_argument("--end", type=float, default=None, help="end of the range, unix seconds (default now)")
    ap.add_argument("--instance", default=".*", help="regex of exporter instances to show")
    ap.add_argument("--gpu", default=".*", help="regex of GPU indexes to show")
    ap.add_argument("--dashboard", type=Path, default=DASHBOARD, help="dashboard JSON to draw")
    args = ap.parse_args(argv)
    try:
        range_s = parse_duration(args.range)
    except ValueError as exc:
        ap.error(f"--range: {exc}")
    try:
        prom = PrometheusClient(args.url)
    except ValueError as exc:
        ap.error(f"--prometheus.url: {exc}")
    try:
        drawn = render(prom, args.out, range_s, args.end, args.instance, args.gpu, args.dashboard)
    except (RenderError, PrometheusError) as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 1
    empty = [t for t, n in drawn.items() if n == 0]
    print(f"wrote {args.out} ({len(drawn)} panels" + (f"; no data: {', '.join(empty)}" if empty else "") + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
