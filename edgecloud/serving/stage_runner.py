"""onnxruntime sessions for the stages of a split model, and running them in the manifest's order.

Agents use `StageRunner.run` for the stages of their device; the source device's fallback and the tests
use `run_remaining`, which runs, in the global stage order, every stage whose results are still missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, MutableMapping

import numpy as np
from devices.sessions import make_session
from edgecloud.errors import EdgecloudError
from partitioner.split.manifest import SplitManifest, Stage, concrete_shape

logger = logging.getLogger(__name__)


class StageRunner:
    """Loaded sessions for some stages of one split model (one device's, or all for the fallback)."""

    def __init__(self, manifest: SplitManifest, stages: Iterable[Stage], threads: int = 1) -> None:
        self.manifest = manifest
        self.stages = list(stages)
        self._sessions = {stage.index: make_session(str(manifest.stage_path(stage)), threads)
                          for stage in self.stages}
        self._output_names = {stage.index: [item.tensor for item in stage.outputs] for stage in self.stages}

    def is_ready(self, stage: Stage, tensors: Mapping[str, np.ndarray]) -> bool:
        return all(item.tensor in tensors for item in stage.inputs)

    def is_done(self, stage: Stage, tensors: Mapping[str, np.ndarray]) -> bool:
        return all(item.tensor in tensors for item in stage.outputs)

    def run(self, stage: Stage, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one stage on the tensors it needs (taken from `tensors`) and return its outputs by name."""
        session = self._sessions.get(stage.index)
        if session is None:
            raise EdgecloudError(f"stage {stage.index} is not loaded on this device")
        feeds = {item.tensor: tensors[item.tensor] for item in stage.inputs}
        try:
            results = session.run(self._output_names[stage.index], feeds)
        except Exception as error:  # onnxruntime raises its own exception types
            raise EdgecloudError(f"stage {stage.index} failed in onnxruntime: {error}") from None
        return dict(zip(self._output_names[stage.index], results))

    def run_remaining(self, tensors: MutableMapping[str, np.ndarray]) -> list[tuple[int, float, float]]:
        """Run, in global order, every loaded stage whose outputs are not all in `tensors` yet; results
        are added to `tensors`. Returns (stage index, start, end in unix seconds) of each stage run."""
        ran: list[tuple[int, float, float]] = []
        for stage in self.stages:
            if self.is_done(stage, tensors):
                continue
            started_s = time.time()
            tensors.update(self.run(stage, tensors))
            ran.append((stage.index, started_s, time.time()))
        return ran

    def warm_up(self) -> None:
        """One run of each session on zeros of its input types, so that the first request does not pay
        onnxruntime's first-run set-up. A stage that rejects zeros (e.g. a shape tensor as input) is
        simply left cold."""
        for index, session in self._sessions.items():
            feeds = {item.name: np.zeros(concrete_shape(item.shape), _ORT_TYPES.get(item.type, np.float32))
                     for item in session.get_inputs()}
            try:
                session.run(None, feeds)
            except Exception as error:  # onnxruntime raises its own types; a cold stage is still correct
                logger.debug("stage %d was not warmed up: %s", index, error)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def run_split(manifest: SplitManifest, inputs: Mapping[str, np.ndarray], threads: int = 1) -> dict[str, np.ndarray]:
    """Run every stage of a split in order on one host: the reference the tests compare with."""
    runner = StageRunner(manifest, manifest.stages, threads)
    tensors: dict[str, np.ndarray] = dict(inputs)
    runner.run_remaining(tensors)
    return {spec.name: tensors[spec.name] for spec in manifest.graph_outputs}
