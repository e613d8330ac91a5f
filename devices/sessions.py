"""The one way edgecloud makes an onnxruntime session: the profiler, the host probe and the agents alike.

Why one factory: what a session is allowed to do decides what it measures and how it shares a host.
- Thread spinning is off. onnxruntime's idle pool threads spin by default; on a machine shared with
  other processes (other agents, the other session the profiler alternates with) spinning threads take
  the cores the working ones need: resnet18 at 2 threads measured 38 ms spinning vs 11 ms not, under
  load. Agents on one host are exactly that case, so they no longer spin either.
- A fixed intra-op thread count and one inter-op thread, so that several sessions on one host do not
  oversubscribe it.
- `optimize=False` runs every ONNX node as its own kernel, which is what per-node profiling needs.
- A model onnxruntime cannot load is one `DeviceError` sentence, not onnxruntime's own exception types.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from devices.errors import DeviceError, first_line

if TYPE_CHECKING:
    import onnxruntime

NO_SPINNING = "0"


def make_session(model: str | Path | bytes, threads: int = 1, *, optimize: bool = True,
                 profile_prefix: str | None = None) -> "onnxruntime.InferenceSession":
    """A CPU session for an ONNX file or serialized model under edgecloud's session policy."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", NO_SPINNING)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise DeviceError(f"onnxruntime cannot load the model: {first_line(error)}") from None
