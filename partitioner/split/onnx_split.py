"""Cut an ONNX model into per-device sub-models ("stages") following a placement, plus a manifest.

Why our own splitter rather than `onnx.utils.extract_model`: extract_model walks the graph once per
requested output and re-runs the checker and shape inference per call, which is slow on big graphs and
needs one call per stage. Here one pass over the node list decides every stage, shape inference runs once
on the whole model, and each stage's ModelProto is assembled directly from the protos it needs
(bench/split_speed.py measures both).

Stages: a DAG placement can visit a device more than once (edge -> cloud -> edge -> cloud). Nodes are
taken in a topological order that stays on the current device while it has ready nodes (Kahn's algorithm
with a device preference), and each maximal run on one device becomes a stage. Because stages are runs of
one topological order, every tensor flows from an earlier stage to a later one: the stage graph is
acyclic by construction and the global stage order is a valid execution order.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from onnx import helper

from devices.errors import first_line
from partitioner.errors import PartitionerError
from partitioner.split.manifest import (
    MANIFEST_FILE,
    SplitManifest,
    Stage,
    StageInput,
    StageOutput,
    StageRef,
    TensorSpec,
    load_manifest,
)
from partitioner.graph.onnx_loading import infer_shapes, load_compute_model
from partitioner.graph.onnx_reads import node_inputs

if TYPE_CHECKING:
    from partitioner.plan.plan_file import Plan

logger = logging.getLogger(__name__)

# Protobuf refuses to serialise a message over 2 GiB: bigger stages keep their weights in a side file.
_EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000


@dataclass
class _StagePlan:
    """A stage before it becomes a ModelProto: its device and its node positions in the graph."""

    device: str
    node_positions: list[int]


def plan_stages(model: onnx.ModelProto, placement: Mapping[str, str]) -> list[_StagePlan]:
    """Group the nodes into stages: maximal same-device runs of a device-sticky topological order.

    Kahn's algorithm keeps taking ready nodes of the current device (lowest graph position first, so the
    order stays close to the exporter's); only when the current device has none ready does it switch to
    the device of the lowest-positioned ready node. Independent branches placed on different devices thus
    become one stage per device instead of alternating stages.
    """
    nodes = model.graph.node
    names = [node.name for node in nodes]
    missing = [name for name in names if name not in placement]
    if missing:
        raise PartitionerError(
            f"the placement has no device for {len(missing)} node(s) of the model, e.g. {missing[0]!r}")
    producer_of = {output: position for position, node in enumerate(nodes) for output in node.output if output}
    successors: list[set[int]] = [set() for _ in nodes]
    indegree = [0] * len(nodes)
    for position, node in enumerate(nodes):
        predecessors = {producer_of[name] for name in node_inputs(node) if name in producer_of}
        predecessors.discard(position)
        indegree[position] = len(predecessors)
        for predecessor in predecessors:
            successors[predecessor].add(position)

    ready_by_device: dict[str, list[int]] = defaultdict(list)
    for position, degree in enumerate(indegree):
        if degree == 0:
            heapq.heappush(ready_by_device[placement[names[position]]], position)
    stages: list[_StagePlan] = []
    current: str | None = None
    taken = 0
    while taken < len(nodes):
        if current is None or not ready_by_device[current]:
            candidates = [(queue[0], device) for device, queue in ready_by_device.items() if queue]
            if not candidates:
                raise PartitionerError("the model's graph has a cycle, so it has no execution order to split")
            current = min(candidates)[1]
            stages.append(_StagePlan(current, []))
        position = heapq.heappop(ready_by_device[current])
        stages[-1].node_positions.append(position)
        taken += 1
        for successor in successors[position]:
            indegree[successor] -= 1
            if indegree[successor] == 0:
                heapq.heappush(ready_by_device[placement[names[successor]]], successor)
    return stages


def split_model(model: onnx.ModelProto | str | Path, placement: Mapping[str, str], source: str, sink: str,
                out_dir: str | Path, devices: Iterable[str] = (), model_reference: str | None = None,
                plan_sha256: str | None = None, check: bool = True) -> SplitManifest:
    """Write one ONNX file per stage and `manifest.json` into `out_dir`; return the manifest.

    `placement` maps every canonical node id (see `partitioner.graph.onnx_names`) to a device; `devices` lists
    devices that hold no node but still take part (the source/sink). `model_reference` is the whole
    model's path recorded for the source agent's fallback (default: the path given, else none).
    """
    model_path = None if isinstance(model, onnx.ModelProto) else Path(model)
    model, folded = load_compute_model(model)
    graph = model.graph
    unknown = sorted(set(placement) - {node.name for node in graph.node} - set(folded))
    if unknown:
        raise PartitionerError(
            f"the placement names {len(unknown)} node(s) the model does not have, e.g. {unknown[0]!r}: "
            "was it planned for another model?")
    initializer_names = {item.name for item in graph.initializer}
    graph_input_names = [item.name for item in graph.input if item.name not in initializer_names]
    graph_output_names = [item.name for item in graph.output]
    for name in graph_output_names:
        if name in initializer_names:
            raise PartitionerError(f"graph output {name!r} is a constant initializer, which no stage produces")

    stage_plans = plan_stages(model, placement)
    stage_of_tensor: dict[str, int] = {}
    consumed_by_stage: list[list[str]] = []
    for index, plan in enumerate(stage_plans):
        produced: set[str] = set()
        consumed: list[str] = []
        for position in plan.node_positions:
            node = graph.node[position]
            consumed.extend(name for name in node_inputs(node)
                            if name not in produced and name not in initializer_names)
            produced.update(name for name in node.output if name)
        consumed_by_stage.append(list(dict.fromkeys(consumed)))
        for name in produced:
            stage_of_tensor[name] = index
    for name in graph_input_names:
        stage_of_tensor.setdefault(name, -1)  # -1: delivered by the client to the source device

    refs = [StageRef(plan.device, index) for index, plan in enumerate(stage_plans)]
    consumers: dict[str, list[StageRef]] = defaultdict(list)
    for index, names in enumerate(consumed_by_stage):
        for name in names:
            if name not in stage_of_tensor:
                raise PartitionerError(f"tensor {name!r} is read by stage {index} but no node or graph input makes it")
            consumers[name].append(refs[index])
    graph_outputs = set(graph_output_names)

    def origin(name: str) -> StageRef | None:
        index = stage_of_tensor[name]
        return None if index < 0 else refs[index]

    outputs_by_stage: list[list[StageOutput]] = [[] for _ in stage_plans]
    source_outputs: list[StageOutput] = []
    for name, index in stage_of_tensor.items():
        if name in consumers or name in graph_outputs:
            item = StageOutput(name, consumers.get(name, []), name in graph_outputs)
            (source_outputs if index < 0 else outputs_by_stage[index]).append(item)

    value_infos = _value_infos(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages: list[Stage] = []
    for index, plan in enumerate(stage_plans):
        outputs = outputs_by_stage[index] or _dead_end_outputs(graph, plan)
        stage = Stage(
            index=index,
            device=plan.device,
            file=f"stage_{index:02d}_{_file_safe(plan.device)}.onnx",
            nodes=[graph.node[position].name for position in plan.node_positions],
            inputs=[StageInput(name, origin(name)) for name in consumed_by_stage[index]],
            outputs=outputs,
        )
        stage_model = _stage_model(model, plan, stage, value_infos)
        if check:
            try:
                onnx.checker.check_model(stage_model)
            except (onnx.checker.ValidationError, ValueError) as error:
                raise PartitionerError(f"stage {index} ({plan.device}) cut from the model is not valid ONNX, so this "
                                       f"model cannot be split: {first_line(error)}") from None
        _save(stage_model, out_dir / stage.file)
        stages.append(stage)

    all_devices = list(dict.fromkeys([*devices, source, *(plan.device for plan in stage_plans), sink]))
    if model_reference is None:
        model_reference = str(model_path.resolve()) if model_path is not None else ""
    manifest = SplitManifest(
        model=model_reference,
        source=source,
        sink=sink,
        devices=all_devices,
        graph_inputs=[_spec(value_infos[name]) for name in graph_input_names],
        graph_outputs=[_spec(value_infos[name]) for name in graph_output_names],
        stages=stages,
        source_outputs=source_outputs,
        sink_inputs=[StageInput(name, origin(name)) for name in graph_output_names],
        plan_sha256=plan_sha256,
    )
    manifest.save(out_dir)
    logger.info("split %d nodes into %d stage(s) on %s", len(graph.node), len(stages), ", ".join(all_devices))
    return manifest


def plan_content_hash(plan_path: str | Path) -> str:
    """SHA-256 of the plan file and of the model it names: a changed model must not reuse an old split."""
    from partitioner.plan.plan_file import load_plan

    plan = load_plan(plan_path)  # first: a missing or bad plan is reported as such
    return _content_hash(Path(plan_path), _model_digest(plan))


def _model_digest(plan: Plan) -> str | None:
    """The SHA-256 of the model file the plan names as it is now (None if there is no such file)."""
    from partitioner.graph.model_identity import file_sha256

    return file_sha256(plan.model_path) if plan.model_path is not None and plan.model_path.is_file() else None


def _content_hash(plan_path: Path, model_digest: str | None) -> str:
    digest = hashlib.sha256(plan_path.read_bytes())
    if model_digest is not None:
        digest.update(model_digest.encode())
    return digest.hexdigest()


def split_plan(plan_path: str | Path, out_dir: str | Path, check: bool = True, force: bool = False) -> SplitManifest:
    """Split the model a plan names, following the plan's placement (`edgecloud split`).

    The plan records the SHA-256 of the model it was made for: when the file now holds another model,
    the plan's node ids and costs describe something else, so the split is refused unless `force`."""
    from partitioner.plan.plan_file import load_plan

    plan = load_plan(plan_path)
    return _split_read_plan(Path(plan_path), plan, _model_digest(plan), out_dir, check, force)


def _split_read_plan(plan_path: Path, plan: Plan, model_digest: str | None, out_dir: str | Path, check: bool,
                     force: bool) -> SplitManifest:
    """`split_plan` once the plan is read and its model hashed (each once: a model can be gigabytes)."""
    if plan.model_path is None:
        raise PartitionerError("the plan was made from a cost graph, not an ONNX model, so there is nothing to split")
    if plan.model_sha256 is not None and model_digest is not None and model_digest != plan.model_sha256:
        if not force:
            raise PartitionerError(
                f"{plan.model_path} is not the model the plan was made for (SHA-256 {model_digest[:12]}..., the plan "
                f"expects {plan.model_sha256[:12]}...); plan it again, or pass --force to split it anyway")
        logger.warning("splitting %s although the plan was made for another file (--force)", plan.model_path)
    return split_model(plan.model_path, plan.placement, plan.source, plan.sink, out_dir,
                       devices=list(plan.devices), model_reference=str(Path(plan.model_path).resolve()),
                       plan_sha256=_content_hash(plan_path, model_digest), check=check)


def split_plan_set(plans_path: str | Path, out_dir: str | Path, check: bool = True,
                   force: bool = False) -> list[SplitManifest]:
    """Split every interval of a plan set (`plan --adaptive`) once, into `out_dir/interval-K`, so that
    agents hold every placement they may switch to before the link changes. The model is hashed once
    and checked against the set's recorded SHA-256 as `split_plan` does."""
    from partitioner.plan.plan_set import load_plan_set

    plans_path, out_dir = Path(plans_path), Path(out_dir)
    intervals = load_plan_set(plans_path)
    digest = _model_digest(intervals[0].plan)
    return [_split_read_plan(plans_path, interval.plan, digest, out_dir / f"interval-{index + 1}", check, force)
            for index, interval in enumerate(intervals)]


def cached_split(plan_path: str | Path) -> SplitManifest:
    """The split of a plan, made once and kept beside the plan in a folder named by its content hash.

    Several agents of one deployment start at once and may race here: each splits into a private
    temporary folder and renames it into place, so a reader sees either no split or a complete one.
    The plan is read and its model hashed once.
    """
    from partitioner.plan.plan_file import load_plan

    plan_path = Path(plan_path)
    plan = load_plan(plan_path)
    model_digest = _model_digest(plan)
    target = plan_path.parent / f"{plan_path.stem}.split-{_content_hash(plan_path, model_digest)[:16]}"
    _build_once(target, target, plan_path,
                lambda scratch: _split_read_plan(plan_path, plan, model_digest, scratch, check=True, force=False))
    return load_manifest(target)


def cached_split_set(plans_path: str | Path) -> list[SplitManifest]:
    """Every interval of a plan set split once (`split_plan_set`) and kept beside the file in a folder
    named by its content hash, as `cached_split` does for one plan: agents and the client of an adaptive
    deployment all hold every placement they may switch to, split once however many start at once."""
    from partitioner.plan.plan_set import load_plan_set

    plans_path = Path(plans_path)
    intervals = load_plan_set(plans_path)
    target = plans_path.parent / (f"{plans_path.stem}.split-"
                                  f"{_content_hash(plans_path, _model_digest(intervals[0].plan))[:16]}")
    _build_once(target, target / "interval-1", plans_path, lambda scratch: split_plan_set(plans_path, scratch))
    return [load_manifest(target / f"interval-{index + 1}") for index in range(len(intervals))]


def _build_once(folder: Path, target: Path, plan_path: Path, build: Callable[[Path], object]) -> None:
    """Run `build` into a private temporary folder and rename that to `folder`, unless `folder` is
    complete already (`target`, inside it, holds a manifest); a racing process that renamed first wins."""
    if (target / MANIFEST_FILE).is_file():
        return
    scratch = Path(tempfile.mkdtemp(prefix=f".{plan_path.stem}.split-", dir=plan_path.parent))
    try:
        build(scratch)
        try:
            os.rename(scratch, folder)
        except OSError:
            if not (target / MANIFEST_FILE).is_file():
                raise
            logger.debug("another process finished the split of %s first", plan_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Name -> typed ValueInfo for every tensor, from one shape inference pass over the whole model."""
    graph = infer_shapes(model).graph
    infos = {item.name: item for item in (*graph.value_info, *graph.input, *graph.output)}
    for item in model.graph.initializer:
        infos.setdefault(item.name, helper.make_tensor_value_info(item.name, item.data_type, item.dims))
    return infos


def _typed(name: str, value_infos: Mapping[str, onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    info = value_infos.get(name)
    if info is None or not info.type.ListFields():
        raise PartitionerError(f"tensor {name!r} crosses a stage boundary but its type is unknown after shape inference")
    return info


def _spec(info: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = info.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    shape = tuple(dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
                  for dim in tensor_type.shape.dim)
    return TensorSpec(info.name, dtype, shape)


def _dead_end_outputs(graph: onnx.GraphProto, plan: _StagePlan) -> list[StageOutput]:
    """A stage whose results nobody needs (dead nodes) still needs one graph output to be valid ONNX."""
    last = graph.node[plan.node_positions[-1]]
    return [StageOutput(name) for name in last.output if name][:1]


def _stage_model(model: onnx.ModelProto, plan: _StagePlan, stage: Stage,
                 value_infos: Mapping[str, onnx.ValueInfoProto]) -> onnx.ModelProto:
    source_graph = model.graph
    nodes = [source_graph.node[position] for position in plan.node_positions]
    used = {name for node in nodes for name in node_inputs(node)}
    stage_model = onnx.ModelProto(ir_version=model.ir_version, producer_name="edgecloud.split",
                                  producer_version=model.producer_version, domain=model.domain,
                                  model_version=model.model_version)
    stage_model.opset_import.extend(model.opset_import)
    stage_model.functions.extend(model.functions)
    graph = stage_model.graph
    graph.name = f"{source_graph.name or 'model'}_stage{stage.index}_{stage.device}"
    graph.node.extend(nodes)
    graph.initializer.extend(item for item in source_graph.initializer if item.name in used)
    graph.sparse_initializer.extend(item for item in source_graph.sparse_initializer if item.values.name in used)
    graph.input.extend(_typed(item.tensor, value_infos) for item in stage.inputs)
    graph.output.extend(_typed(item.tensor, value_infos) for item in stage.outputs)
    return stage_model


def _save(model: onnx.ModelProto, path: Path) -> None:
    weight_bytes = sum(len(item.raw_data) for item in model.graph.initializer)
    if weight_bytes > _EXTERNAL_DATA_THRESHOLD_BYTES:
        onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
    else:
        onnx.save(model, str(path))


def _file_safe(device: str) -> str:
    return "".join(char if char.isalnum() or char in "-_" else "_" for char in device)
