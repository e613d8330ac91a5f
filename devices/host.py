"""The `host` device: this machine's figures, measured rather than looked up.

Peak FLOP/s is measured with onnxruntime's own MatMul kernel (the engine the profiler times, with the
same thread count), memory bandwidth with a large numpy copy, memory from /proc/meminfo. Measuring
takes about a second, so the result is cached under the user cache dir (never inside the package) and
re-measured only when the machine it describes changes (CPU model, core count or memory).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from devices.cache import cache_dir
from devices.errors import DeviceError
from devices.json_files import read_json_file, write_json_file
from devices.profiles import HOST_DEVICE_NAME, DeviceProfile
from devices.sessions import make_session

logger = logging.getLogger(__name__)

HOST_CACHE_FILE = "host-profile.json"
# Part of the cache key: bump when the way the host is measured changes.
MEASUREMENT_VERSION = 3
_MATMUL_SIZE = 1024
_COPY_BYTES = 256 * 2**20
# Each figure is the best of the runs made within this budget: a peak is the rate of the least disturbed
# run, and a budget (rather than a run count) gives a busy machine more chances to leave a core free.
_BUDGET_S = 0.6
_MIN_RUNS = 3


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int:
    """Physical memory: MemTotal of /proc/meminfo, or the POSIX page count where there is no /proc."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _matmul_session(threads: int) -> Any:
    import onnx
    from onnx import TensorProto, helper
    shape = [_MATMUL_SIZE, _MATMUL_SIZE]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"], name="matmul")],
        "peak_flops",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return make_session(model.SerializeToString(), threads)


def measure_peak_flops(threads: int, seed: int = 0) -> float:
    """Best FP32 MatMul rate onnxruntime reaches with `threads` threads (FLOP/s)."""
    session = _matmul_session(threads)
    rng = np.random.default_rng(seed)
    feeds = {n: rng.standard_normal((_MATMUL_SIZE, _MATMUL_SIZE), dtype=np.float32) for n in ("a", "b")}
    session.run(None, feeds)
    return 2.0 * _MATMUL_SIZE**3 / _best_time_s(lambda: session.run(None, feeds))


def measure_memory_bandwidth() -> float:
    """Best large-array copy rate, counting the bytes read plus the bytes written (bytes/s)."""
    source = np.ones(_COPY_BYTES // 8, dtype=np.float64)
    target = np.empty_like(source)
    np.copyto(target, source)
    return 2.0 * source.nbytes / _best_time_s(lambda: np.copyto(target, source))


def _best_time_s(action: Callable[[], object]) -> float:
    """Shortest run of `action` among those made within the time budget (at least _MIN_RUNS)."""
    times_s: list[float] = []
    deadline = time.perf_counter() + _BUDGET_S
    while len(times_s) < _MIN_RUNS or time.perf_counter() < deadline:
        start = time.perf_counter()
        action()
        times_s.append(time.perf_counter() - start)
    return min(times_s)


def measure_host(threads: int | None = None, seed: int = 0) -> DeviceProfile:
    """Measure this machine now (about a second); `threads` defaults to every logical CPU."""
    threads = threads or os.cpu_count() or 1
    cpu = _cpu_model()
    return DeviceProfile(
        name=HOST_DEVICE_NAME,
        peak_flops=measure_peak_flops(threads, seed),
        memory_bandwidth_bytes_per_s=measure_memory_bandwidth(),
        memory_bytes=memory_bytes(),
        threads=threads,
        sources={
            "peak_flops": f"measured: best onnxruntime FP32 MatMul {_MATMUL_SIZE}^3 in {_BUDGET_S} s, {threads} threads, on {cpu}",
            "memory_bandwidth_bytes_per_s": f"measured: best numpy copy of {_COPY_BYTES // 2**20} MiB in {_BUDGET_S} s (read + write)",
            "memory_bytes": "measured: MemTotal of /proc/meminfo",
            "threads": "measured: os.cpu_count()",
        },
    )


def _machine_key() -> dict[str, Any]:
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "memory_bytes": memory_bytes(),
            "measurement_version": MEASUREMENT_VERSION}


@cache
def host_profile() -> DeviceProfile:
    """This machine with every thread: read from the cache, measured and cached when absent or stale."""
    path = cache_dir() / HOST_CACHE_FILE
    key = _machine_key()
    try:
        if path.exists():
            cached = read_json_file(path, "host profile cache")
            if cached.get("machine") == key:
                return DeviceProfile.from_dict(cached["profile"], origin=str(path))
            logger.info("host profile cache %s describes another machine; measuring again", path)
    except (KeyError, AttributeError, DeviceError) as error:
        logger.warning("ignoring unreadable host profile cache %s (%s)", path, error)
    profile = measure_host()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_file(path, {"machine": key, "profile": profile.to_dict()}, "host profile cache", indent=2)
    except (OSError, DeviceError) as error:
        logger.warning("cannot cache the host profile in %s (%s)", path, error)
    return profile
