"""Reading an ONNX model and giving every tensor a concrete shape for one batch size.

Every stage that opens a user's file goes through `load_onnx_model`, so that a missing, unreadable or
invalid file is always reported the same way: one ModelLoadError sentence naming the path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import onnx
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from devices.errors import first_line
from partitioner.errors import ModelLoadError, PartitionerError

logger = logging.getLogger(__name__)

# Value given to a symbolic dimension other than the batch when the caller names none: the smallest
# size that keeps every op valid. Costs scale with it, hence the warning.
DEFAULT_SYMBOLIC_DIM = 1
# Below IR 4 every initializer must also be a graph input, which sub-models cut from the graph are not.
MIN_SPLITTABLE_IR_VERSION = 4


def load_onnx_model(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """The model, checked by onnx's checker; a ModelProto given is copied, never modified."""
    if isinstance(model, onnx.ModelProto):
        loaded = onnx.ModelProto()
        loaded.CopyFrom(model)
        source = f"model {loaded.graph.name or '(unnamed)'}"
    else:
        path = Path(model)
        source = str(path)
        if not path.exists():
            raise ModelLoadError(f"model file {path} does not exist")
        if not path.is_file():
            raise ModelLoadError(f"{path} is not a file (an ONNX model file is expected)")
        try:
            loaded = onnx.load(path)
        # onnx.load reads a .json or .txt path as JSON or text protobuf: their parse errors are ours too
        except (DecodeError, json_format.Error, text_format.ParseError, OSError, ValueError, RuntimeError) as error:
            raise ModelLoadError(f"{path} is not a readable ONNX model ({first_line(error)})") from None
    if not loaded.HasField("graph") or not loaded.opset_import:
        raise ModelLoadError(f"{source} is not an ONNX model (it has no graph or no opset)")
    try:
        onnx.checker.check_model(loaded)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise ModelLoadError(f"{source} is not a valid ONNX model: {first_line(error)}") from None
    upgrade_ir_version(loaded)
    return loaded


def upgrade_ir_version(model: onnx.ModelProto) -> None:
    """Bring a model below IR 4 to IR 4, in place: initializers stop being graph inputs too.

    IR < 4 requires every initializer to be listed as a graph input; a sub-model cut from such a graph
    keeps only its real inputs and then fails the checker ("... in initializer but not in graph input").
    From IR 4 on, an initializer need not be an input, and the same graph is valid with every opset
    the old model can use, so the upgrade changes nothing onnxruntime computes: the weights merely stop
    being overridable from outside.
    """
    if model.ir_version >= MIN_SPLITTABLE_IR_VERSION:
        return
    initializer_names = {item.name for item in model.graph.initializer}
    initializer_names |= {item.values.name for item in model.graph.sparse_initializer}
    weights = [item for item in model.graph.input if item.name in initializer_names]
    for item in weights:
        model.graph.input.remove(item)
    logger.info("model upgraded from IR %d to IR %d (%d initializer(s) no longer listed as inputs)",
                model.ir_version, MIN_SPLITTABLE_IR_VERSION, len(weights))
    model.ir_version = MIN_SPLITTABLE_IR_VERSION


def load_compute_model(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The model as the planner and the splitter both see it: loaded and checked, IR upgraded, nodes
    under their canonical ids, constant subgraphs folded into initializers. Returns it with the ids of
    the nodes folded away (a placement may still name them). Both stages must call this, so that a
    plan's node ids are the split's."""
    from partitioner.graph.constant_folding import fold_constants
    from partitioner.graph.onnx_names import name_nodes_uniquely

    loaded = load_onnx_model(model)
    name_nodes_uniquely(loaded.graph)
    return loaded, fold_constants(loaded)


def fix_dimensions(model: onnx.ModelProto, batch_size: int,
                   symbolic_dims: Mapping[str, int] | None = None) -> None:
    """Give every symbolic dimension of the graph a value, in place.

    The first dimension of each input is the batch: it becomes `batch_size`, and so does every other
    occurrence of its symbol. Other symbols of the inputs take `symbolic_dims[name]`, else
    DEFAULT_SYMBOLIC_DIM with a warning. value_info entries that keep a symbol are dropped (shape
    inference recomputes them); concrete ones stay, as they may be the only shapes known for custom ops.
    A fixed first dimension is kept at the default batch size of 1 (the model may not even have a batch
    axis); asked for another batch size, it is an error rather than a silently wrong cost, since it
    cannot be changed without rewriting the graph.
    """
    if batch_size < 1:
        raise PartitionerError(f"batch size must be at least 1, got {batch_size}")
    graph = model.graph
    named = dict(symbolic_dims or {})
    initializer_names = {initializer.name for initializer in graph.initializer}
    values: dict[str, int] = {}
    for graph_input in graph.input:
        if graph_input.name in initializer_names or not graph_input.type.HasField("tensor_type"):
            continue
        dims = graph_input.type.tensor_type.shape.dim
        for position, dim in enumerate(dims):
            if position == 0 and dim.HasField("dim_value") and dim.dim_value != batch_size and batch_size != 1:
                raise PartitionerError(
                    f"input {graph_input.name!r} has a fixed batch dimension of {dim.dim_value}, so batch size "
                    f"{batch_size} cannot be applied; export the model with a dynamic batch dimension")
            if dim.HasField("dim_value") or dim.dim_param in values:
                continue
            if not dim.dim_param:
                if position > 0:
                    logger.warning("unnamed dimension %d of input %r set to %d", position, graph_input.name,
                                   DEFAULT_SYMBOLIC_DIM)
                dim.dim_value = batch_size if position == 0 else DEFAULT_SYMBOLIC_DIM
            elif dim.dim_param in named:
                values[dim.dim_param] = named[dim.dim_param]
            elif position == 0:
                values[dim.dim_param] = batch_size
            else:
                logger.warning("symbolic dimension %r of input %r set to %d (pass symbolic_dims to choose)",
                               dim.dim_param, graph_input.name, DEFAULT_SYMBOLIC_DIM)
                values[dim.dim_param] = DEFAULT_SYMBOLIC_DIM
    for value_info in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.dim_param in values:
                dim.dim_value = values[dim.dim_param]
    still_symbolic = [info for info in graph.value_info
                      if any(not dim.HasField("dim_value") for dim in info.type.tensor_type.shape.dim)]
    for info in still_symbolic:
        graph.value_info.remove(info)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference with data propagation, which resolves Shape->Gather->Concat->Reshape chains."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"shape inference failed on model: {first_line(error)}") from None
