"""Turn a results JSON into a markdown report and PNG plots.

    python -m bench.report bench/results/latest.json   # writes latest.md, latest-*.png

Files land beside the JSON, named after it: ``STEM.md``, ``STEM-standing.png``
(ratios only, one panel per plane: netplane's standing against each peer,
right of 1 means netplane is better),
``STEM-percentiles.png`` (latency percentiles per side) and
``STEM-programming.png`` (programming latency against cluster size) and
``STEM-over_time.png`` (the soak's p99 per minute and traffic kind). A plot
no scenario feeds is skipped, and a stale file of that name is removed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

NETPLANE = "netplane"
TIMES, DASH = "\u00d7", "\u2013"  # the multiplication sign and the en dash
PLOTS = ("standing", "percentiles", "programming", "over_time")


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 10_000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def summary(values: list[float] | None) -> tuple[float, float, float] | None:
    """(median, min, max), or None without values."""
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def standing(netplane: float, peer: float, better: str) -> float | None:
    """How many times better netplane is than the peer: >1 netplane better, <1 peer better."""
    if netplane <= 0 or peer <= 0:
        return None
    return peer / netplane if better == "lower" else netplane / peer


def ratio_cell(netplane: float, peer: float, better: str) -> str:
    ratio = netplane / peer if peer else float("inf")
    s = standing(netplane, peer, better)
    if s is None:
        return f"{fmt(ratio)}"
    if abs(s - 1) < 0.005:
        verdict = "even"
    elif s > 1:
        verdict = f"netplane better, {s:.2f}{TIMES}"
    else:
        verdict = f"peer better, {1 / s:.2f}{TIMES}"
    return f"{fmt(ratio)} ({verdict})"


def _medians(sc: dict[str, Any], side: str, metric: str) -> tuple[float, float, float] | None:
    return summary(sc["samples"].get(side, {}).get(metric))


def scenario_md(sc: dict[str, Any], runs: int) -> list[str]:
    sides: list[str] = sc["sides"]
    peers = sides[1:]
    out = [f"## {sc['title']} (`{sc['name']}`)", "", sc.get("description", ""), ""]
    if not peers:
        out.append(f"**No peer.** {sc.get('peer_note', '')}".rstrip())
    else:
        out.append(f"**Peer:** {', '.join(peers)}. {sc.get('peer_note', '')}".rstrip())
    if sc.get("params"):
        params = ", ".join(f"{k} {v}" for k, v in sc["params"].items())
        out += ["", f"Parameters: {params}."]
    head = ["metric", "unit", "better"] + [f"{s} median (min{DASH}max)" for s in sides]
    head += [f"netplane/{p}" for p in peers]
    out += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in sc["metrics"]:
        cells = [m.get("title") or m["name"], m["unit"], m["better"]]
        meds = {}
        for side in sides:
            s = _medians(sc, side, m["name"])
            meds[side] = s[0] if s else None
            cells.append(f"{fmt(s[0])} ({fmt(s[1])}{DASH}{fmt(s[2])})" if s else "—")
        for p in peers:
            a, b = meds[sides[0]], meds[p]  # the first side is netplane's
            cells.append(ratio_cell(a, b, m["better"]) if a is not None and b else "—")
        out.append("| " + " | ".join(cells) + " |")
    order = sc.get("order") or []
    if order and sc.get("interleaved"):
        rounds = len(order) // max(len(sc.get("sides") or [1]), 1)
        out += [
            "",
            f"Run order: {rounds} rounds with every side's server up and their load runs "
            f"taking turns (warm-ups not shown); {sc.get('duration_s', 0)} s.",
        ]
    elif order:
        out += [
            "",
            f"Run order (warm-ups not shown): {', '.join(order)}; {sc.get('duration_s', 0)} s.",
        ]
    for err in sc.get("errors") or []:
        out += ["", f"**Error:** {err}"]
    return [*out, ""]


def markdown(doc: dict[str, Any], plots: dict[str, Path]) -> str:
    m = doc["machine"]
    vers = m.get("versions", {})
    libs = ", ".join(f"{k} {v}" for k, v in vers.items() if k != NETPLANE and v)
    tools = "; ".join(f"{k}: {v}" for k, v in (m.get("tools") or {}).items()) or "none present"
    pin = doc.get("pinning") or "not pinned"
    kind = "quick smoke run (figures not meaningful)" if doc.get("quick") else "full run"
    out = [
        "# netplane benchmark results",
        "",
        f"- Run: {doc['started_utc']} UTC, {kind}, {doc['runs']} measured runs per side, "
        f"{doc.get('duration_s', 0)} s; `{doc.get('command', 'python -m bench')}`",
        f"- Machine: {m.get('cpu_model')}, {m.get('cores')} cores, "
        f"{m.get('memory_mb')} MB, {m.get('kernel')}",
        f"- Software: {m.get('python')}, netplane {vers.get(NETPLANE)} "
        f"(commit {(m.get('git_commit') or '?')[:12]}); {libs}",
        f"- Peer tools present: {tools}",
        f"- Pinning: {pin}",
        "",
        f"Each cell is the median over the runs, with the spread (min{DASH}max). The sides ran "
        "in alternation (netplane, peer, netplane, peer, ...) after warm-ups. The ratio is "
        "netplane's median over the peer's; the *better* column says whether lower or "
        "higher wins, and the verdict in brackets says who is ahead and by how much.",
        "",
    ]
    for sc in doc["scenarios"]:
        out += scenario_md(sc, doc["runs"])
    if plots:
        out += ["## Plots", ""]
        captions = {
            "standing": "netplane's standing against each peer, one panel per plane (>1: netplane better)",
            "percentiles": "latency percentiles per side",
            "programming": "programming latency against cluster size",
            "over_time": "p99 latency over the soak, per minute and traffic kind",
        }
        for key, path in plots.items():
            out += [f"![{captions[key]}]({path.name})", ""]
    return "\n".join(out)


def _plain(axis: Any) -> None:
    """Plain numbers, not powers of ten, on a log axis; no minor labels."""
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v)))
    axis.set_minor_formatter(NullFormatter())


# The standing plot has one panel per plane, against other software only:
# scenarios that compare netplane with itself (``--workers 2``, one socket
# per frontend) stay in the markdown tables. Load-generator CPU is context
# for a run, not a standing, so it is left out of the plot too.
PANELS = (
    ("L4 proxy", ("l4", "kernel")),
    ("Ingress", ("ingress", "gateway")),
    ("DNS", ("dns", "scale")),
)
CONTEXT_METRICS = frozenset(("conn_load_cpu_pct", "udp_load_cpu_pct", "load_cpu_pct"))
PEER_MARKERS = "osD^v<>Ph*"
STANDING_TICKS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def panel_of_first(panel: str) -> str:
    """The scenario a panel is named for; rows of its other scenarios carry their name."""
    return next(names[0] for title, names in PANELS if title == panel)


def standing_rows(doc: dict[str, Any]) -> dict[str, list[tuple[str, str, float]]]:
    """Per panel title: (metric title, peer, standing) for every metric netplane and a peer share."""
    panel_of = {name: title for title, names in PANELS for name in names}
    rows: dict[str, list[tuple[str, str, float]]] = {title: [] for title, _ in PANELS}
    for sc in doc["scenarios"]:
        panel = panel_of.get(sc["name"])
        if panel is None:
            continue
        for m in sc["metrics"]:
            if m["name"].split("@")[0] in CONTEXT_METRICS:
                continue
            a = _medians(sc, NETPLANE, m["name"])
            for peer in sc["sides"][1:]:
                if peer.startswith(NETPLANE):  # netplane against itself: markdown only
                    continue
                b = _medians(sc, peer, m["name"])
                s = standing(a[0], b[0], m["better"]) if a and b else None
                if s is not None:
                    title = m.get("title") or m["name"]
                    if sc["name"] != panel_of_first(panel):
                        title = f"{sc['name']}: {title}"
                    rows[panel].append((title, peer, s))
    return {title: r for title, r in rows.items() if r}


def plot_standing(doc: dict[str, Any], path: Path) -> bool:
    """Ratios only, one panel per plane: a row per metric, a marker per peer, log x, 1 = even."""
    panels = standing_rows(doc)
    if not panels:
        return False
    heights = [max(2, len(dict.fromkeys(t for t, _, _ in r))) for r in panels.values()]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, 1.0 + 0.28 * sum(heights) + 0.9 * len(panels)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    values = [s for r in panels.values() for _, _, s in r]
    lo, hi = min(*values, 1.0) / 1.5, max(*values, 1.0) * 1.5
    for ax, (title, rows) in zip(axes[:, 0], panels.items(), strict=True):
        metrics = list(dict.fromkeys(t for t, _, _ in rows))
        peers = list(dict.fromkeys(p for _, p, _ in rows))
        ax.axvspan(lo, 1.0, color="tab:red", alpha=0.06)
        ax.axvspan(1.0, hi, color="tab:green", alpha=0.06)
        ax.axvline(1.0, color="black", linewidth=1)
        for i, peer in enumerate(peers):
            pts = [(metrics.index(t), s) for t, p, s in rows if p == peer]
            ax.scatter(
                [s for _, s in pts],
                [y for y, _ in pts],
                marker=PEER_MARKERS[i % len(PEER_MARKERS)],
                s=36,
                label=f"vs {peer}",
                zorder=3,
            )
        ax.set_yticks(range(len(metrics)), metrics, fontsize=8)
        ax.set_ylim(len(metrics) - 0.5, -0.5)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(FixedLocator([t for t in STANDING_TICKS if lo <= t <= hi]))
        _plain(ax.xaxis)
        ax.grid(axis="x", which="major", linewidth=0.3)
        ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
        ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(peers))
    axes[-1, 0].set_xlabel(
        f"netplane's standing against the peer ({TIMES}, log scale): right of 1 netplane is "
        "better, left of it the peer"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_percentiles(doc: dict[str, Any], path: Path) -> bool:
    rows = [
        (sc["name"], row)
        for sc in doc["scenarios"]
        for row in (sc.get("series") or {}).get("latency_percentiles") or []
    ]
    if not rows:
        return False
    keys = list(dict.fromkeys(k for _, row in rows for k in row["values"]))
    fig, ax = plt.subplots(figsize=(max(6, 2 + 1.6 * len(rows)), 4.5))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(rows))]
        ys = [row["values"].get(key, 0) for _, row in rows]
        bars = ax.bar(xs, ys, width, label=key)
        ax.bar_label(bars, labels=[fmt(y) for y in ys], fontsize=7)
    ax.set_xticks(
        range(len(rows)),
        [f"{name}\n{row['group']}\n{row['side']}" for name, row in rows],
        fontsize=8,
    )
    ax.set_yscale("log")
    every = [v for _, row in rows for v in row["values"].values() if v and v > 0]
    ax.set_ylim(min(every) / 4, max(every) * 4)  # spans a power of ten
    _plain(ax.yaxis)
    ax.set_ylabel(f"latency ({rows[0][1].get('unit', 'ms')}, log scale)")
    ax.set_title("Latency percentiles per side (medians over runs)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_programming(doc: dict[str, Any], path: Path) -> bool:
    lines: dict[str, list[dict[str, Any]]] = {}
    xlabel, unit = "cluster size", "ms"
    for sc in doc["scenarios"]:
        prog = (sc.get("series") or {}).get("programming_latency") or {}
        xlabel, unit = prog.get("x", xlabel), prog.get("unit", unit)
        for pt in prog.get("points") or []:
            lines.setdefault(f"{pt['side']} ({pt['stage']})", []).append(pt)
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in lines.items():
        pts.sort(key=lambda p: p["size"])
        xs = [p["size"] for p in pts]
        for key, style in (("p50", "-o"), ("p99", "--s")):
            ax.plot(xs, [p.get(key) for p in pts], style, label=f"{label} {key}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({p["size"] for pts in lines.values() for p in pts})
    ax.set_xticks(sizes, [fmt(x) for x in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ys = [p[k] for pts in lines.values() for p in pts for k in ("p50", "p99") if p.get(k)]
    ax.set_ylim(min(ys) / 4, max(ys) * 4)  # spans a power of ten, so a labelled tick
    _plain(ax.yaxis)
    ax.set_xlabel(f"cluster size ({xlabel}, log scale)")
    ax.set_ylabel(f"programming latency ({unit}, log scale)")
    ax.set_title("Programming latency against cluster size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_over_time(doc: dict[str, Any], path: Path) -> bool:
    """One line per kind: a percentile per time bin (the soak's p99 per minute)."""
    series = [
        s["series"]["latency_over_time"]
        for s in doc["scenarios"]
        if (s.get("series") or {}).get("latency_over_time")
    ]
    if not series:
        return False
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 4 * len(series)), squeeze=False)
    for ax, ser in zip(axes[:, 0], series, strict=True):
        for kind, ys in ser["lines"].items():
            pts = [(i + 1, y) for i, y in enumerate(ys) if y is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], "-o", markersize=3, label=kind)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(ser.get("x", "bin"))
        ax.set_ylabel(f"p99 ({ser.get('unit', 'ms')})")
        ax.set_ylim(bottom=0)
        ax.set_title(ser.get("title", "Latency over time"))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def generate(json_path: Path) -> dict[str, Path]:
    """Write STEM.md and the plots beside ``json_path``; returns what was written."""
    doc = json.loads(json_path.read_text())
    stem = json_path.with_suffix("")
    plotters = {"standing": plot_standing, "percentiles": plot_percentiles}
    plotters["programming"] = plot_programming
    plotters["over_time"] = plot_over_time
    plots: dict[str, Path] = {}
    for key in PLOTS:
        png = Path(f"{stem}-{key}.png")
        if plotters[key](doc, png):
            plots[key] = png
        else:
            png.unlink(missing_ok=True)
    md = stem.with_suffix(".md")
    md.write_text(markdown(doc, plots))
    return {"md": md, **plots}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, nargs="?", default=Path("bench/results/latest.json"))
    args = ap.parse_args(argv)
    for path in generate(args.json).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
