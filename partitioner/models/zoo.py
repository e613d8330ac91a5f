"""The bundled example models: one of each graph shape the planner must handle.

They are defined here (torchvision has no CPU build on this machine) with seeded random weights, which
is all latency work needs, and exported on demand with torch's default (dynamo) exporter: the legacy
exporter fails on `nn.TransformerEncoderLayer`. Inputs are small so that export, profiling and tests
stay fast; the batch dimension is exported as dynamic so that `load_layer_graph(..., batch_size=n)`
and the runtime can use any batch. The exporter's optimizer folds each eval-mode BatchNorm into the
Conv before it, so the CNNs arrive as Conv(+Relu/Clip) chains, as a deployed model would.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devices.cache import cache_dir
from partitioner.errors import PartitionerError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MODEL_NAMES: tuple[str, ...] = ("chain", "resnet18", "mobilenetv2", "inception", "transformer", "mlp")

# Bump when a model definition or the export settings change: it is part of the cache key.
ZOO_VERSION = "1"
ONNX_OPSET = 18
DEFAULT_SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """What `edgecloud models` shows about a bundled model, known without importing torch."""

    name: str
    kind: str
    input_shape: tuple[int, ...]
    description: str


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("chain", "chain", (1, 3, 64, 64), "VGG/AlexNet-like: 4 conv blocks and 2 linear layers"),
        ModelSpec("resnet18", "residual", (1, 3, 64, 64), "ResNet-18: basic blocks with skip connections"),
        ModelSpec("mobilenetv2", "depthwise", (1, 3, 64, 64), "MobileNetV2: inverted residuals, depthwise convs"),
        ModelSpec("inception", "multi-branch", (1, 3, 64, 64), "stem + one Inception block (4 branches into a Concat)"),
        ModelSpec("transformer", "attention", (1, 16, 64), "3 TransformerEncoderLayers, d_model 64, 4 heads"),
        ModelSpec("mlp", "fully connected", (1, 784), "784-256-128-10 perceptron"),
    )
}


def check_model_name(name: str) -> None:
    """Raise PartitionerError naming the bundled models when `name` is not one of them."""
    if name not in MODEL_SPECS:
        raise PartitionerError(f"unknown model {name!r}; bundled models are: {', '.join(MODEL_NAMES)}")


def _build_chain() -> "torch.nn.Module":
    from torch import nn

    def block(in_ch: int, out_ch: int) -> list[nn.Module]:
        return [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(3, 16), *block(16, 32), *block(32, 64), *block(64, 64),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 256), nn.ReLU(inplace=True),
        nn.Linear(256, 10),
    )


def _build_resnet18() -> "torch.nn.Module":
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(out_ch)
            self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_ch)
            self.relu = nn.ReLU(inplace=True)
            self.downsample: nn.Module = nn.Identity()
            if stride != 1 or in_ch != out_ch:
                self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                                nn.BatchNorm2d(out_ch))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + self.downsample(x))

    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    in_ch = 64
    for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1)]
        in_ch = out_ch
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


def _build_mobilenetv2() -> "torch.nn.Module":
    import torch
    from torch import nn

    def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                relu6: bool = True) -> list[nn.Module]:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        return layers + [nn.ReLU6(inplace=True)] if relu6 else layers

    class InvertedResidual(nn.Module):
        def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
            super().__init__()
            hidden = in_ch * expansion
            layers = conv_bn(in_ch, hidden, 1) if expansion != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride=stride, groups=hidden)
            layers += conv_bn(hidden, out_ch, 1, relu6=False)
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and in_ch == out_ch

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x) if self.residual else self.body(x)

    # (expansion, out channels, repeats, first stride): the MobileNetV2 paper's Table 2.
    settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))
    layers: list[nn.Module] = conv_bn(3, 32, 3, stride=2)
    in_ch = 32
    for expansion, out_ch, repeats, first_stride in settings:
        for index in range(repeats):
            layers.append(InvertedResidual(in_ch, out_ch, first_stride if index == 0 else 1, expansion))
            in_ch = out_ch
    layers += conv_bn(in_ch, 1280, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, 10)]
    return nn.Sequential(*layers)


def _build_inception() -> "torch.nn.Module":
    import torch
    from torch import nn

    def conv_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2),
                             nn.ReLU(inplace=True))

    class InceptionBlock(nn.Module):
        """GoogLeNet's block: 1x1, 1x1->3x3, 1x1->5x5 and pool->1x1 branches concatenated on channels."""

        def __init__(self, in_ch: int) -> None:
            super().__init__()
            self.branch1 = conv_relu(in_ch, 32, 1)
            self.branch3 = nn.Sequential(conv_relu(in_ch, 24, 1), conv_relu(24, 48, 3))
            self.branch5 = nn.Sequential(conv_relu(in_ch, 8, 1), conv_relu(8, 16, 5))
            self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_relu(in_ch, 16, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)

    return nn.Sequential(
        conv_relu(3, 32, 3, stride=2), nn.MaxPool2d(2),
        InceptionBlock(32),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32 + 48 + 16 + 16, 10),
    )


def _build_transformer() -> "torch.nn.Module":
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, dropout=0.0,
                                           batch_first=True)
                for _ in range(3))
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
            return self.head(x.mean(dim=1))

    return Encoder()


def _build_mlp() -> "torch.nn.Module":
    from torch import nn

    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


_BUILDERS: dict[str, Callable[[], "torch.nn.Module"]] = {
    "chain": _build_chain,
    "resnet18": _build_resnet18,
    "mobilenetv2": _build_mobilenetv2,
    "inception": _build_inception,
    "transformer": _build_transformer,
    "mlp": _build_mlp,
}


def build_module(name: str, seed: int = DEFAULT_SEED) -> tuple["torch.nn.Module", tuple["torch.Tensor", ...]]:
    """The named model in eval mode with weights drawn from `seed`, and an example input batch of one."""
    check_model_name(name)
    import torch

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        module = _BUILDERS[name]().eval()
        _randomize_batchnorm_statistics(module)
        example = torch.randn(MODEL_SPECS[name].input_shape)
    finally:
        torch.random.set_rng_state(generator_state)
    return module, (example,)


def _randomize_batchnorm_statistics(module: "torch.nn.Module") -> None:
    """Give BatchNorm non-trivial running statistics, so that a wrong fold or split shows in outputs."""
    import torch
    from torch import nn

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.1, 0.1)
                layer.running_var.uniform_(0.5, 1.5)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.1, 0.1)


def export_model(name: str, path: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Export the named model to one self-contained ONNX file (weights inside, batch dimension dynamic).

    The exporter traces a batch of two: torch.export specialises a dimension whose example size is 1,
    which froze the transformer's batch to 1.
    """
    path = Path(path)
    if path.is_dir():
        raise PartitionerError(f"{path} is a directory; give the ONNX file to write")
    module, example_inputs = build_module(name, seed)
    import torch

    traced_inputs = tuple(torch.cat([example, example]) for example in example_inputs)
    batch = torch.export.Dim("batch", min=1, max=1024)
    return export_onnx(module, traced_inputs, path, name, dynamic_shapes=tuple({0: batch} for _ in traced_inputs))


def export_onnx(module: "torch.nn.Module", inputs: tuple["torch.Tensor", ...], path: Path, name: str,
                dynamic_shapes: tuple[dict, ...] | None = None) -> Path:
    """torch's default (dynamo) exporter into one self-contained file, input "input", output "output"."""
    import torch

    started_s = time.perf_counter()
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(module, inputs, dynamo=True, opset_version=ONNX_OPSET, input_names=["input"],
                                    output_names=["output"], dynamic_shapes=dynamic_shapes, external_data=False,
                                    verbose=False)
    if program is None:
        raise PartitionerError(f"torch's ONNX exporter returned nothing for model {name!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        program.save(str(path), external_data=False)
    except OSError as error:
        raise PartitionerError(f"cannot write {path}: {error.strerror or error}") from None
    logger.info("exported %s to %s in %.1f s", name, path, time.perf_counter() - started_s)
    return path


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision ops, deprecations) that says nothing about our models."""
    registration_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    previous_level = registration_logger.level
    registration_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        registration_logger.setLevel(previous_level)


def models_dir() -> Path:
    """Where exported models are kept: the `models` folder of edgecloud's cache (`devices.cache`)."""
    return cache_dir() / "models"


def cached_file(name: str, seed: int = DEFAULT_SEED) -> Path:
    """Where `cached_model_path` keeps the model; the file may not exist yet."""
    check_model_name(name)
    return models_dir() / f"{name}-v{ZOO_VERSION}-torch{importlib.metadata.version('torch')}-seed{seed}.onnx"


def cached_model_path(name: str, seed: int = DEFAULT_SEED) -> Path:
    """Path of the exported model, exporting it first if this version is not cached yet.

    The cache key holds the zoo's version, torch's version (the exporter's output depends on it) and
    the seed; a cache hit imports neither torch nor onnx.

    The file is written under a temporary name and renamed, so processes that race for the same model
    (parallel tests, several CLI calls) each see either no file or a complete one.
    """
    target = cached_file(name, seed)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}-", suffix=".onnx", dir=target.parent)
    os.close(handle)
    try:
        export_model(name, temporary, seed)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target
