"""The split manifest: which stage runs where, in which order, and which tensors travel between them.

A plan says where each ONNX node runs; the manifest says what that means at run time. Agents read only
the manifest (and the stage files beside it), never the plan's placement, so the routing rules live in
one place. The format is JSON with a version (`format: "edgecloud.split/1"`), documented in the README:

    {"format": "edgecloud.split/1",
     "model": "/abs/path/model.onnx",            # the whole model: the source device's fallback
     "plan_sha256": "...",                        # content hash of the plan (and model) split, or null
     "source": "edge", "sink": "edge",
     "graph_inputs":  [{"name": "input",  "dtype": "float32", "shape": ["batch", 3, 64, 64]}],
     "graph_outputs": [{"name": "output", "dtype": "float32", "shape": ["batch", 10]}],
     "stage_order": [0, 1, 2],
     "devices": {"edge": {"stages": [0, 2]}, "cloud": {"stages": [1]}},
     "source_outputs": [{"tensor": "input", "to": [{"device": "edge", "stage": 0}]}],
     "sink_inputs":    [{"tensor": "output", "from": {"device": "edge", "stage": 2}}],
     "stages": [{"index": 0, "device": "edge", "file": "stage_00_edge.onnx", "nodes": ["conv_1", ...],
                 "inputs":  [{"tensor": "input", "from": "source"}],
                 "outputs": [{"tensor": "t7", "to": [{"device": "cloud", "stage": 1}, "sink"]}]}, ...]}

`"source"` is the graph input as the client delivers it to the source device; `"sink"` is the answer
the sink device returns to the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devices.json_files import read_json_file, write_json_file
from partitioner.errors import PartitionerError

MANIFEST_FORMAT = "edgecloud.split/1"
MANIFEST_FILE = "manifest.json"
SOURCE = "source"
SINK = "sink"


@dataclass(frozen=True)
class StageRef:
    """One stage, named by the device that runs it and its index in the global stage order."""

    device: str
    stage: int

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "stage": self.stage}


@dataclass
class StageInput:
    """A tensor a stage (or the sink) receives; `origin` None means the client's graph input."""

    tensor: str
    origin: StageRef | None

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "from": SOURCE if self.origin is None else self.origin.to_dict()}


@dataclass
class StageOutput:
    """A tensor a stage (or the source) hands on: to later stages and/or the sink (the client's answer)."""

    tensor: str
    destinations: list[StageRef] = field(default_factory=list)
    to_sink: bool = False

    def devices(self, sink: str) -> set[str]:
        """The devices that need this tensor: where it must be present after its producer ran."""
        needed = {ref.device for ref in self.destinations}
        if self.to_sink:
            needed.add(sink)
        return needed

    def to_dict(self) -> dict[str, Any]:
        targets: list[Any] = [ref.to_dict() for ref in self.destinations]
        if self.to_sink:
            targets.append(SINK)
        return {"tensor": self.tensor, "to": targets}


@dataclass
class Stage:
    """A run of nodes on one device, cut out as one ONNX file; stages run in `index` order."""

    index: int
    device: str
    file: str
    nodes: list[str]
    inputs: list[StageInput]
    outputs: list[StageOutput]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "device": self.device, "file": self.file, "nodes": self.nodes,
                "inputs": [item.to_dict() for item in self.inputs],
                "outputs": [item.to_dict() for item in self.outputs]}


def concrete_shape(shape: Iterable[int | str | None]) -> list[int]:
    """A shape with every symbolic or unknown dimension taken as 1 (a batch of one): for warm-up runs
    and example inputs."""
    return [size if isinstance(size, int) else 1 for size in shape]


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: what the client must send or will receive (symbolic dims as strings)."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class SplitManifest:
    """Everything an agent or a client needs to know about a split model."""

    model: str
    source: str
    sink: str
    devices: list[str]
    graph_inputs: list[TensorSpec]
    graph_outputs: list[TensorSpec]
    stages: list[Stage]
    source_outputs: list[StageOutput]
    sink_inputs: list[StageInput]
    plan_sha256: str | None = None
    directory: Path | None = None  # where the stage files are; set by `load_manifest`/`save`

    def input_problem(self, tensors: Mapping[str, np.ndarray]) -> str | None:
        """Why `tensors` are not the model's graph inputs (names, dtypes, fixed dimensions), or None.
        The client checks before sending and the source agent again on arrival."""
        specs = {spec.name: spec for spec in self.graph_inputs}
        if set(tensors) != set(specs):
            return f"the request carries tensors {sorted(tensors)}, the model takes {sorted(specs)}"
        for name, array in tensors.items():
            spec = specs[name]
            fixed = all(size == expected for size, expected in zip(array.shape, spec.shape) if isinstance(expected, int))
            if array.dtype.name != spec.dtype or array.ndim != len(spec.shape) or not fixed:
                return (f"input {name!r} is {array.dtype.name}{list(array.shape)}, the model takes "
                        f"{spec.dtype}{list(spec.shape)}")
        return None

    def stages_of(self, device: str) -> list[Stage]:
        """The stages `device` runs, in execution order (possibly none: a pure source/sink device)."""
        return [stage for stage in self.stages if stage.device == device]

    def stage_path(self, stage: Stage) -> Path:
        if self.directory is None:
            raise PartitionerError("the manifest was not loaded from or saved to a folder, so its stage files have no location")
        return self.directory / stage.file

    def model_path(self) -> Path:
        path = Path(self.model)
        if not path.is_absolute() and self.directory is not None:
            path = self.directory / path
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "model": self.model,
            "plan_sha256": self.plan_sha256,
            "source": self.source,
            "sink": self.sink,
            "graph_inputs": [spec.to_dict() for spec in self.graph_inputs],
            "graph_outputs": [spec.to_dict() for spec in self.graph_outputs],
            "stage_order": [stage.index for stage in self.stages],
            "devices": {device: {"stages": [stage.index for stage in self.stages_of(device)]}
                        for device in self.devices},
            "source_outputs": [item.to_dict() for item in self.source_outputs],
            "sink_inputs": [item.to_dict() for item in self.sink_inputs],
            "stages": [stage.to_dict() for stage in self.stages],
        }

    def save(self, directory: str | Path) -> Path:
        """Write `manifest.json` into `directory` (the stage files are written by the splitter)."""
        self.directory = Path(directory)
        path = self.directory / MANIFEST_FILE
        write_json_file(path, self.to_dict(), "split manifest", error=PartitionerError)
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], directory: Path | None = None) -> "SplitManifest":
        if data.get("format") != MANIFEST_FORMAT:
            raise PartitionerError(
                f"not a split manifest of format {MANIFEST_FORMAT!r} (found format {data.get('format')!r})")
        try:
            stages = [Stage(index=int(item["index"]), device=str(item["device"]), file=str(item["file"]),
                            nodes=[str(node) for node in item["nodes"]],
                            inputs=[_input_from_dict(entry) for entry in item["inputs"]],
                            outputs=[_output_from_dict(entry) for entry in item["outputs"]])
                      for item in data["stages"]]
            order = {index: position for position, index in enumerate(data["stage_order"])}
            stages.sort(key=lambda stage: order[stage.index])
            return cls(
                model=str(data["model"]),
                source=str(data["source"]),
                sink=str(data["sink"]),
                devices=list(data["devices"]),
                graph_inputs=[_spec_from_dict(item) for item in data["graph_inputs"]],
                graph_outputs=[_spec_from_dict(item) for item in data["graph_outputs"]],
                stages=stages,
                source_outputs=[_output_from_dict(item) for item in data["source_outputs"]],
                sink_inputs=[_input_from_dict(item) for item in data["sink_inputs"]],
                plan_sha256=data.get("plan_sha256"),
                directory=directory,
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as error:
            raise PartitionerError(f"the split manifest is malformed: {error!r} is missing or invalid") from None


def load_manifest(directory: str | Path) -> SplitManifest:
    """Read `manifest.json` from a split folder."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.exists():
        raise PartitionerError(f"no split manifest at {path}; run `edgecloud split` first")
    data = read_json_file(path, "split manifest", expected_format=MANIFEST_FORMAT, error=PartitionerError)
    try:
        return SplitManifest.from_dict(data, directory)
    except PartitionerError as error:  # the sentence names the file, as the reader's do
        raise type(error)(f"split manifest {path}: {error}") from None


def _ref_from_dict(item: dict[str, Any]) -> StageRef:
    return StageRef(device=str(item["device"]), stage=int(item["stage"]))


def _input_from_dict(item: dict[str, Any]) -> StageInput:
    origin = item["from"]
    return StageInput(tensor=str(item["tensor"]), origin=None if origin == SOURCE else _ref_from_dict(origin))


def _output_from_dict(item: dict[str, Any]) -> StageOutput:
    targets = item["to"]
    return StageOutput(tensor=str(item["tensor"]),
                       destinations=[_ref_from_dict(target) for target in targets if target != SINK],
                       to_sink=SINK in targets)


def _spec_from_dict(item: dict[str, Any]) -> TensorSpec:
    return TensorSpec(name=str(item["name"]), dtype=str(item["dtype"]), shape=tuple(item["shape"]))
