"""Pictures of plans: the DAG coloured by device, and latency against bandwidth for every strategy.

matplotlib is imported inside the functions (Agg backend): planning without `--plot` never pays for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from partitioner.costs import CostGraph, topological_order
from partitioner.plan import Plan

INPUT, OUTPUT = "input", "output"  # the graph's inputs (on the source) and outputs (due at the sink)
LABELLED_NODES_AT_MOST = 40  # more node names than this overlap into an unreadable band


@dataclass(frozen=True)
class SweepPoint:
    bandwidth_bps: float
    plan_s: float
    baselines_s: dict[str, float | None]


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _layout(graph: CostGraph) -> dict[str, tuple[float, float]]:
    """Position per node: x = depth (longest path from the inputs), y = rank among nodes of that depth;
    the inputs sit left of depth 0 and the outputs right of the deepest node."""
    order = topological_order(graph)
    producers_of: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for tensor in graph.tensors.values():
        if tensor.producer is not None:
            for consumer in tensor.consumers:
                producers_of[consumer].append(tensor.producer)
    depth: dict[str, int] = {}
    for name in order:
        depth[name] = 1 + max((depth[p] for p in producers_of[name]), default=-1)
    used: dict[int, int] = {}
    position: dict[str, tuple[float, float]] = {}
    for name in order:
        rank = used.get(depth[name], 0)
        used[depth[name]] = rank + 1
        position[name] = (float(depth[name]), float(rank))
    position[INPUT] = (-1.0, 0.0)
    position[OUTPUT] = (float(max(depth.values(), default=-1) + 1), 0.0)
    return position


def _size_text(n_bytes: float) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes:.0f} B"


def plot_plan(plan: Plan, graph: CostGraph, path: str | Path) -> None:
    """The DAG left to right, nodes coloured by device; every tensor that crosses devices (graph inputs
    and outputs included) is a thick red dashed edge labelled with its size. Edges that skip layers are
    drawn as arcs, so residual connections stay visible beside the main chain."""
    plt = _pyplot()
    position = _layout(graph)
    device_of = {**plan.layers, INPUT: plan.source, OUTPUT: plan.sink}
    colours = {device: plt.get_cmap("tab10")(i % 10) for i, device in enumerate(plan.devices)}
    columns = max(x for x, _ in position.values()) + 2
    rows = max(y for _, y in position.values()) + 1
    figure, axes = plt.subplots(figsize=(min(18.0, max(7.0, 0.3 * columns)), min(10.0, max(3.5, 0.8 * rows + 2.0))))

    crossing_edges = 0
    for name, tensor in graph.tensors.items():
        start = INPUT if tensor.producer is None else tensor.producer
        for end in [*dict.fromkeys(tensor.consumers), *([OUTPUT] if tensor.output else [])]:
            crossing = device_of[start] != device_of[end]
            crossing_edges += crossing
            (x0, y0), (x1, y1) = position[start], position[end]
            skips = abs(x1 - x0) > 1 and y0 == y1
            axes.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=1, arrowprops=dict(
                arrowstyle="-", shrinkA=4, shrinkB=4, connectionstyle=f"arc3,rad={-0.25 if skips else 0.0}",
                color="red" if crossing else "0.6", linestyle="--" if crossing else "-",
                linewidth=2.2 if crossing else 0.8))
            if crossing and crossing_edges <= 20:
                axes.annotate(_size_text(tensor.bytes), ((x0 + x1) / 2, (y0 + y1) / 2), xytext=(0, -5),
                              textcoords="offset points", ha="center", va="top", fontsize=7, color="red")

    marker_size = 45 if len(graph.nodes) <= 150 else 12  # big graphs: dots that do not merge into a bar
    for device, colour in colours.items():
        members = [name for name in graph.nodes if device_of[name] == device]
        axes.scatter([position[m][0] for m in members], [position[m][1] for m in members], color=colour,
                     s=marker_size, label=f"{device}: {len(members)} node(s)", zorder=2, edgecolors="black",
                     linewidths=0.4 if marker_size > 20 else 0.0)
    for end in (INPUT, OUTPUT):
        axes.scatter(*position[end], marker="s", s=90, color=colours.get(device_of[end], "white"), zorder=2,
                     edgecolors="black", linewidths=1.0)
        axes.annotate(f"{end}\n({device_of[end]})", position[end], xytext=(0, -14), textcoords="offset points",
                      ha="center", va="top", fontsize=7)
    if len(graph.nodes) <= LABELLED_NODES_AT_MOST:
        for name in graph.nodes:
            axes.annotate(name, position[name], xytext=(3, 5), textcoords="offset points", fontsize=6, rotation=35)
    axes.plot([], [], color="red", linestyle="--", linewidth=2.2,
              label=f"crossing tensors: {len(plan.crossing_tensors)}")

    best = min((value for value in plan.baselines.values() if value is not None), default=None)
    versus = f", best baseline {best * 1e3:.2f} ms" if best is not None else ""
    links = "; ".join(f"{link['from']}-{link['to']} {link['bandwidth_bps'] / 1e6:g} Mbit/s, "
                      f"{link['latency_s'] * 1e3:g} ms" for link in plan.links)
    axes.set_title(f"{plan.objective} plan: {plan.predicted_s * 1e3:.2f} ms{versus}\n{links}", fontsize=10)
    axes.set_xlabel("depth in the DAG (longest path from the inputs)")
    axes.set_yticks([])
    axes.margins(x=0.03, y=0.25)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _leading_digit(value: float) -> int:
    return int(round(value / 10 ** math.floor(math.log10(value)))) if value > 0 else 0


def plot_sweep(points: list[SweepPoint], path: str | Path, objective: str = "latency", title: str = "") -> None:
    """Predicted time per strategy against link bandwidth, both axes logarithmic. The plan is a wide pale
    band under the baselines, so a baseline that equals it shows as markers on the band, not a hidden line."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    figure, axes = plt.subplots(figsize=(8, 5))
    bandwidths_mbps = [p.bandwidth_bps / 1e6 for p in points]
    axes.plot(bandwidths_mbps, [p.plan_s * 1e3 for p in points], color="black", linewidth=7, alpha=0.25,
              solid_capstyle="round", label="plan (ILP)", zorder=1)
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("v", ":"), ("D", "--"), ("x", "-")]
    names = list(points[0].baselines_s) if points else []
    for index, name in enumerate(names):
        marker, line = styles[index % len(styles)]
        values = [p.baselines_s[name] * 1e3 if p.baselines_s[name] is not None else float("nan") for p in points]
        axes.plot(bandwidths_mbps, values, marker=marker, linestyle=line, markersize=5, linewidth=1.2,
                  markerfacecolor="none", label=name, zorder=2)
    axes.set_xscale("log")
    axes.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if _leading_digit(value) in (2, 5) else ""))
    axes.set_xlabel("edge-cloud bandwidth (Mbit/s)")
    axes.set_ylabel(f"predicted {objective} per request (ms)")
    axes.set_title(title or f"{objective} vs bandwidth: plan and baselines", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
