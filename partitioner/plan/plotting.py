"""Pictures of plans: the DAG coloured by device, and latency against bandwidth for every strategy.

matplotlib is imported inside the functions (Agg backend): planning without `--plot` never pays for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partitioner.costs.cost_graph import CostGraph, topological_order
from partitioner.plan.plan_file import Plan

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


@dataclass(frozen=True)
class _Drawing:
    """What the plan plot draws: chains of nodes collapsed into groups, positioned on a grid."""

    group_of: dict[str, int]  # node (or INPUT/OUTPUT) -> group index
    members: list[list[str]]  # group index -> its nodes, in order
    position: list[tuple[float, float]]  # group index -> (depth, rank)


def _collapse_chains(graph: CostGraph, order: list[str], device_of: dict[str, str]) -> tuple[dict[str, int], list[list[str]]]:
    """Groups of nodes: a node joins its predecessor's group when it is that node's only successor,
    that is its only predecessor, both run on one device and neither touches the graph's inputs or
    outputs. A long chain (a sequence of layers with nothing branching off) then becomes one mark."""
    predecessors: dict[str, set[str]] = {name: set() for name in graph.nodes}
    successors: dict[str, set[str]] = {name: set() for name in graph.nodes}
    boundary: set[str] = set()
    for tensor in graph.tensors.values():
        if tensor.producer is None:
            boundary.update(tensor.consumers)
            continue
        if tensor.output:
            boundary.add(tensor.producer)
        for consumer in tensor.consumers:
            predecessors[consumer].add(tensor.producer)
            successors[tensor.producer].add(consumer)
    group_of: dict[str, int] = {}
    members: list[list[str]] = []
    for name in order:
        (before,) = predecessors[name] if len(predecessors[name]) == 1 else (None,)
        if (before is not None and successors[before] == {name} and device_of[before] == device_of[name]
                and name not in boundary and before not in boundary):
            group_of[name] = group_of[before]
            members[group_of[name]].append(name)
        else:
            group_of[name] = len(members)
            members.append([name])
    return group_of, members


def _layout(graph: CostGraph, device_of: dict[str, str]) -> _Drawing:
    """Groups positioned at x = depth (longest path from the inputs over groups), y = rank among the
    groups of that depth; the inputs sit left of depth 0 and the outputs right of the deepest group."""
    order = topological_order(graph)
    group_of, members = _collapse_chains(graph, order, device_of)
    group_producers: list[set[int]] = [set() for _ in members]
    for tensor in graph.tensors.values():
        if tensor.producer is not None:
            for consumer in tensor.consumers:
                if group_of[consumer] != group_of[tensor.producer]:
                    group_producers[group_of[consumer]].add(group_of[tensor.producer])
    depth: list[int] = []
    for producers in group_producers:  # groups are numbered in a topological order
        depth.append(1 + max((depth[p] for p in producers), default=-1))
    used: dict[int, int] = {}
    position: list[tuple[float, float]] = []
    for level in depth:
        rank = used.get(level, 0)
        used[level] = rank + 1
        position.append((float(level), float(rank)))
    group_of[INPUT], group_of[OUTPUT] = len(members), len(members) + 1
    members += [[INPUT], [OUTPUT]]
    position += [(-1.0, 0.0), (float(max(depth, default=-1) + 1), 0.0)]
    return _Drawing(group_of, members, position)


def _size_text(n_bytes: float) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{n_bytes:.0f} B"


def _arc_points(start: tuple[float, float], end: tuple[float, float], bend: float, count: int = 12) -> list[tuple[float, float]]:
    """A quadratic Bezier from start to end bulging `bend` x the length to the side (a polyline)."""
    (x0, y0), (x1, y1) = start, end
    cx, cy = (x0 + x1) / 2 - bend * (y1 - y0), (y0 + y1) / 2 + bend * (x1 - x0)
    return [((1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t**2 * x1, (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t**2 * y1)
            for t in (i / (count - 1) for i in range(count))]


def _spread_labels(candidates: list[tuple[float, list[tuple[float, float]], str]], obstacles: list[tuple[float, float]],
                   x_span: float, y_span: float, at_most: int) -> list[tuple[float, float, str]]:
    """The largest crossing tensors' labels first, each at the first of its candidate spots (along its
    edge) that overlaps neither a label kept before nor an obstacle (node marks, node names); a label
    with no such spot is left out. Distances in axes fractions: a label is about 8 % wide, 6 % tall."""
    kept: list[tuple[float, float, str]] = []

    def clear(x: float, y: float, points: list[tuple[float, float]], width: float, height: float) -> bool:
        return all(abs(x - px) / x_span > width or abs(y - py) / y_span > height for px, py in points)

    for _, spots, text in sorted(candidates, key=lambda candidate: -candidate[0]):
        if len(kept) == at_most:
            break
        for x, y in spots:
            if clear(x, y, [(kx, ky) for kx, ky, _ in kept], 0.08, 0.06) and clear(x, y, obstacles, 0.04, 0.04):
                kept.append((x, y, text))
                break
    return kept


def _name_points(axes, names: list[tuple[tuple[float, float], str]]) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
    """Points (data coordinates) along each node name as `plot_plan` writes it: from 3, 5 points off
    its mark, rotated 35 degrees, about 3.5 points per character at font size 6."""
    to_data = axes.transData.inverted()
    pixels_per_point = axes.figure.dpi / 72.0
    along = np.array([math.cos(math.radians(35)), math.sin(math.radians(35))])
    points: list[tuple[float, float]] = []
    for anchor, text in names:
        base = axes.transData.transform(anchor)
        for distance in np.arange(0.0, 3.5 * len(text), 8.0):
            offset = (np.array([3.0, 5.0]) + distance * along) * pixels_per_point
            x, y = to_data.transform(base + offset)
            points.append((float(x), float(y)))
    return points


def plot_plan(plan: Plan, graph: CostGraph, path: str | Path) -> None:
    """The compute DAG left to right, nodes coloured by device; chains of nodes with nothing branching
    off are collapsed into one mark (sized by its length). Every tensor that crosses devices (graph
    inputs and outputs included) is a thick red dashed edge, the largest labelled with their size where
    labels do not overlap. Edges that skip layers are drawn as arcs, so residual connections stay
    visible beside the main chain. Lines are drawn as collections: thousands of nodes take a second."""
    plt = _pyplot()
    from matplotlib.collections import LineCollection

    device_of = {**plan.layers, INPUT: plan.source, OUTPUT: plan.sink}
    drawing = _layout(graph, device_of)
    position, group_of = drawing.position, drawing.group_of
    colours = {device: plt.get_cmap("tab10")(i % 10) for i, device in enumerate(plan.devices)}
    columns = max(x for x, _ in position) + 2
    rows = max(y for _, y in position) + 1
    figure, axes = plt.subplots(figsize=(min(18.0, max(7.0, 0.3 * columns)), min(10.0, max(3.5, 0.8 * rows + 2.0))))

    lines: dict[bool, list[list[tuple[float, float]]]] = {False: [], True: []}
    labels: list[tuple[float, list[tuple[float, float]], str]] = []
    drawn: set[tuple[int, int, bool]] = set()
    for tensor in graph.tensors.values():
        start = INPUT if tensor.producer is None else tensor.producer
        for end in [*dict.fromkeys(tensor.consumers), *([OUTPUT] if tensor.output else [])]:
            a, b = group_of[start], group_of[end]
            crossing = device_of[start] != device_of[end]
            if a == b or (a, b, crossing) in drawn:
                continue
            drawn.add((a, b, crossing))
            (x0, y0), (x1, y1) = position[a], position[b]
            skips = abs(x1 - x0) > 1 and y0 == y1
            lines[crossing].append(_arc_points(position[a], position[b], 0.12) if skips else [(x0, y0), (x1, y1)])
            if crossing:
                points = lines[crossing][-1] if skips else _arc_points(position[a], position[b], 0.0)
                spots = [points[round(t * (len(points) - 1))] for t in (0.5, 0.3, 0.7, 0.2, 0.8)]
                labels.append((tensor.bytes, spots, _size_text(tensor.bytes)))
    axes.add_collection(LineCollection(lines[False], colors="0.6", linewidths=0.8, zorder=1))
    axes.add_collection(LineCollection(lines[True], colors="red", linewidths=2.2, linestyles="--", zorder=1))

    compute_groups = [index for index, nodes in enumerate(drawing.members) if nodes[0] not in (INPUT, OUTPUT)]
    base_size = 45 if len(compute_groups) <= 150 else 12  # big graphs: dots that do not merge into a bar
    for device, colour in colours.items():
        groups = [g for g in compute_groups if device_of[drawing.members[g][0]] == device]
        count = sum(len(drawing.members[g]) for g in groups)
        axes.scatter([position[g][0] for g in groups], [position[g][1] for g in groups], color=colour,
                     s=[base_size * (1 + math.log2(len(drawing.members[g]))) for g in groups],
                     label=f"{device}: {count} node(s)", zorder=2, edgecolors="black",
                     linewidths=0.4 if base_size > 20 else 0.0)
    for end in (INPUT, OUTPUT):
        axes.scatter(*position[group_of[end]], marker="s", s=90, color=colours.get(device_of[end], "white"), zorder=2,
                     edgecolors="black", linewidths=1.0)
        axes.annotate(f"{end}\n({device_of[end]})", position[group_of[end]], xytext=(0, -14),
                      textcoords="offset points", ha="center", va="top", fontsize=7)
    names: list[tuple[tuple[float, float], str]] = []
    if len(compute_groups) <= LABELLED_NODES_AT_MOST:
        for g in compute_groups:
            nodes = drawing.members[g]
            names.append((position[g], nodes[0] if len(nodes) == 1 else f"{nodes[0]} (+{len(nodes) - 1})"))
            axes.annotate(names[-1][1], position[g], xytext=(3, 5), textcoords="offset points", fontsize=6, rotation=35)
    axes.plot([], [], color="red", linestyle="--", linewidth=2.2,
              label=f"crossing tensors: {len(plan.crossing_tensors)}")

    best = min((value for value in plan.baselines.values() if value is not None), default=None)
    versus = f", best baseline {best * 1e3:.2f} ms" if best is not None else ""
    link_texts = [f"{a}-{b} {link.bandwidth_bps / 1e6:g} Mbit/s, {link.latency_s * 1e3:g} ms"
                  for (a, b), link in plan.links.items()]
    links = "\n".join("; ".join(link_texts[i:i + 2]) for i in range(0, len(link_texts), 2))
    collapsed = (f"\n{len(graph.nodes)} nodes; chains drawn as one mark ({len(compute_groups)} marks)"
                 if len(compute_groups) < len(graph.nodes) else "")
    axes.set_title(f"{plan.objective} plan: {plan.predicted_s * 1e3:.2f} ms{versus}\n{links}{collapsed}", fontsize=10)
    axes.set_xlabel("depth in the DAG (longest path from the inputs)")
    axes.set_yticks([])
    axes.autoscale_view()
    axes.margins(x=0.03, y=0.25)
    obstacles = [*position, *_name_points(axes, names)]  # the limits are final from here on
    for x, y, text in _spread_labels(labels, obstacles, max(columns, 1.0), max(rows, 1.0), at_most=20):
        axes.annotate(text, (x, y), ha="center", va="center", fontsize=7, color="red", zorder=3,
                      bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.8))
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
