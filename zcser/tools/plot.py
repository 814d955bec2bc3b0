"""`python -m zcser bench --plot PATH`: the benchmark rows as grouped bar charts in one PNG.

Pure row handling (`panels`) is separate from drawing (`plot`), which needs matplotlib
(`pip install 'zcser[plot]'`). Each panel holds the rows of one section that share a unit, one
bar per measured peer, so zcser is only ever compared with numbers from the same run.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

from zcser.errors import UsageError

_SUFFIXES = {"_per_s": "per s", "_us": "µs", "_ms": "ms", "_s": "s"}
_UNIT_IN_CASE = re.compile(r"\(([^()]*?/s|us|µs|ms|s)\)\s*$")
_SKIP = ("case", "note", "peer")


@dataclass
class Panel:
    """One chart: rows of one section in one unit; `bars[label][metric]` is a value."""

    title: str
    unit: str
    higher_is_better: bool
    bars: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        """Every metric in any row, in first-seen order."""
        seen: dict[str, None] = {}
        for values in self.bars.values():
            seen.update(dict.fromkeys(values))
        return list(seen)


def _metric(key: str) -> tuple[str, str | None]:
    """("zcser", "µs") for "zcser_us", ("zcser", "per s") for "zcser_per_s"; (key, None) when
    the key names no unit."""
    for suffix, unit in _SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], unit
    return key, None


def _row_unit(case: str) -> str | None:
    """The unit a row states at the end of its case name, e.g. "(GB/s)"."""
    match = _UNIT_IN_CASE.search(case)
    if match is None:
        return None
    unit = match.group(1)
    return "µs" if unit == "us" else unit


def panels(results: dict[str, list[dict[str, Any]]]) -> list[Panel]:
    """Group benchmark rows into charts. Ratios and notes are left out (they are derived); rows
    naming their peer ({"peer": "mp.Pipe", "peer_us": ...}) merge by case, one bar per peer."""
    out: dict[tuple[str, str], Panel] = {}
    for section, rows in results.items():
        for row in rows:
            case = str(row.get("case", "?"))
            case_unit = _row_unit(case)
            label = _UNIT_IN_CASE.sub("", case).strip()
            for key, value in row.items():
                if key in _SKIP or key.startswith("ratio") or isinstance(value, bool):
                    continue
                if not isinstance(value, (int, float)):
                    continue
                metric, unit = _metric(key)
                if metric.startswith("peer") and isinstance(row.get("peer"), str):
                    # {"peer": "mp.Pipe", "peer_us": 80.0, "peer_p99_us": 140.0}
                    metric = row["peer"] + metric[len("peer") :].replace("_", " ")
                unit = unit or case_unit or "value"
                panel = out.get((section, unit))
                if panel is None:
                    faster = unit.endswith("/s") or unit == "per s"
                    panel = Panel(f"{section} ({unit})", unit, faster)
                    out[(section, unit)] = panel
                panel.bars.setdefault(label, {})[metric] = float(value)
    return [p for p in out.values() if p.bars]


def _colours(names: list[str]) -> dict[str, Any]:
    """zcser's own metrics in blues, each peer its own colour, stable across panels."""
    import matplotlib

    ours = [m for m in names if m.startswith("zcser") or m.startswith("out_of_band")]
    peers = [m for m in names if m not in ours]
    blues = matplotlib.colormaps["Blues"]
    others = matplotlib.colormaps["tab10"]
    colours: dict[str, Any] = {}
    for i, name in enumerate(ours):
        colours[name] = blues(0.85 - 0.3 * i / max(1, len(ours)))
    palette = [others(i) for i in range(10) if i != 0]
    for i, name in enumerate(peers):
        colours[name] = palette[i % len(palette)]
    return colours


def plot(results: dict[str, list[dict[str, Any]]], path: str, subtitle: str = "") -> None:
    """Draw every panel into one PNG at `path` (log scale: the values span decades)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError("--plot needs matplotlib: pip install 'zcser[plot]'") from exc
    charts = panels(results)
    if not charts:
        raise UsageError("nothing to plot: the benchmark produced no numeric rows")
    every = list(dict.fromkeys(m for p in charts for m in p.metrics))
    colours = _colours(every)
    heights = [1.2 + 0.55 * sum(len(v) for v in p.bars.values()) / 2 for p in charts]
    fig, axes = plt.subplots(
        len(charts),
        1,
        figsize=(11, sum(heights) + 1),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
        layout="constrained",
    )
    for ax, panel in zip(axes[:, 0], charts, strict=True):
        _draw(ax, panel, colours)
    title = "zcser benchmarks, peers measured in the same run"
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw(ax: Any, panel: Panel, colours: dict[str, Any]) -> None:
    """Horizontal grouped bars: one group per row, one bar per metric present in that row."""
    metrics = panel.metrics
    labels = list(panel.bars)
    height = 0.8 / max(1, len(metrics))
    for i, metric in enumerate(metrics):
        ys, xs = [], []
        for j, label in enumerate(labels):
            value = panel.bars[label].get(metric)
            if value is not None and value > 0:
                ys.append(j + (i - (len(metrics) - 1) / 2) * height)
                xs.append(value)
        bars = ax.barh(ys, xs, height=height, color=colours[metric], label=metric)
        ax.bar_label(bars, labels=[_short(x) for x in xs], fontsize=6, padding=2)
    values = [v for row in panel.bars.values() for v in row.values() if v > 0]
    ax.set_xscale("log")
    ax.set_xlim(10 ** math.floor(math.log10(min(values))), max(values) * 3)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(["\n".join(textwrap.wrap(lbl, 44)) for lbl in labels], fontsize=7)
    ax.invert_yaxis()
    better = "higher is better" if panel.higher_is_better else "lower is better"
    ax.set_xlabel(f"{panel.unit} (log scale, {better})", fontsize=8)
    ax.set_title(panel.title, fontsize=9, loc="left")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(axis="x", which="both", alpha=0.25)


def _short(value: float) -> str:
    """A bar label with three significant digits."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
