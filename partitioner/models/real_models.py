"""Real architectures from Hugging Face `transformers`, built from tiny configs with seeded random weights.

The bundled zoo (`partitioner.models.zoo`) holds hand-written models, one per graph shape; these are the
architectures users actually deploy, as the library that defines them writes them: MobileNetV2
(depthwise convolutions), RegNet (grouped convolutions), ConvNeXt (depthwise 7x7 + LayerNorm), ViT,
BERT and GPT-2. Nothing is downloaded: each model is built from a config, so only the graph shape is
real, not the weights; configs are kept tiny so that export and tests stay fast. torch and
transformers are imported inside the functions (`pip install edgecloud[models]`), so importing this
module costs nothing. Exported with torch's default (dynamo) exporter, as `partitioner.models.zoo` does, with
static shapes (batch 1): HF models specialise sequence and image sizes anyway.

A later benchmark (the latency predictor's) reuses `export_real_model`; `REAL_MODELS` is the one list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from partitioner.errors import PartitionerError

if TYPE_CHECKING:
    import torch

DEFAULT_SEED = 0
IMAGE_SIZE = 32
SEQUENCE_LENGTH = 16
VOCAB_SIZE = 96


@dataclass(frozen=True)
class RealModel:
    """One architecture: what it exercises, its input (name, dtype, shape) and how to build it."""

    name: str
    kind: str
    input_dtype: str
    input_shape: tuple[int, ...]
    build: Callable[[], "torch.nn.Module"]


def _image_classifier(model: Any) -> "torch.nn.Module":
    """Wrap an HF model so that it maps one tensor to one tensor (the logits)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x).logits

    return Logits()


def _mobilenetv2() -> "torch.nn.Module":
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(image_size=IMAGE_SIZE, depth_multiplier=0.35, num_labels=10)
    return _image_classifier(MobileNetV2ForImageClassification(config))


def _regnet() -> "torch.nn.Module":
    from transformers import RegNetConfig, RegNetForImageClassification

    config = RegNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 2, 1], groups_width=8,
                          layer_type="x", num_labels=10)
    return _image_classifier(RegNetForImageClassification(config))


def _convnext() -> "torch.nn.Module":
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 2, 1], num_labels=10, patch_size=2)
    return _image_classifier(ConvNextForImageClassification(config))


def _vit() -> "torch.nn.Module":
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=10, attn_implementation="eager")
    return _image_classifier(ViTForImageClassification(config))


def _text_model(model: Any, field: str) -> "torch.nn.Module":
    import torch

    class Output(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return getattr(self.model(input_ids=input_ids), field)

    return Output()


def _bert() -> "torch.nn.Module":
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=SEQUENCE_LENGTH, num_labels=4,
                        attn_implementation="eager")
    return _text_model(BertForSequenceClassification(config), "logits")


def _gpt2() -> "torch.nn.Module":
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=SEQUENCE_LENGTH, n_embd=32, n_layer=2, n_head=2,
                        use_cache=False, bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return _text_model(GPT2LMHeadModel(config), "logits")


_IMAGE = (1, 3, IMAGE_SIZE, IMAGE_SIZE)
_TOKENS = (1, SEQUENCE_LENGTH)
REAL_MODELS: dict[str, RealModel] = {
    model.name: model
    for model in (
        RealModel("mobilenetv2", "depthwise convolutions", "float32", _IMAGE, _mobilenetv2),
        RealModel("regnet", "grouped convolutions", "float32", _IMAGE, _regnet),
        RealModel("convnext", "depthwise 7x7 convolutions, LayerNorm", "float32", _IMAGE, _convnext),
        RealModel("vit", "vision transformer", "float32", _IMAGE, _vit),
        RealModel("bert", "encoder transformer (BERT)", "int64", _TOKENS, _bert),
        RealModel("gpt2", "decoder transformer (GPT-2, causal)", "int64", _TOKENS, _gpt2),
    )
}


def real_model(name: str) -> RealModel:
    if name not in REAL_MODELS:
        raise PartitionerError(f"unknown real model {name!r}; choose one of {', '.join(REAL_MODELS)}")
    return REAL_MODELS[name]


def example_input(name: str, seed: int = DEFAULT_SEED) -> np.ndarray:
    """A valid input of the model: standard normal images, or token ids below the vocabulary size."""
    spec = real_model(name)
    rng = np.random.default_rng(seed)
    if spec.input_dtype == "int64":
        return rng.integers(0, VOCAB_SIZE, spec.input_shape, dtype=np.int64)
    return rng.standard_normal(spec.input_shape).astype(spec.input_dtype)


def export_real_model(name: str, path: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Build the named architecture with weights drawn from `seed` and export it to one ONNX file
    (input "input", output "output", static shapes)."""
    spec = real_model(name)
    import torch

    from partitioner.models.zoo import export_onnx

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        try:
            module = spec.build().eval()
        except ImportError:
            raise PartitionerError("real models need Hugging Face transformers: pip install 'edgecloud[models]'") from None
    finally:
        torch.random.set_rng_state(state)
    return export_onnx(module, (torch.from_numpy(example_input(name, seed)),), Path(path), name)
