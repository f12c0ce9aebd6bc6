"""The models the benchmark knows by name, and the one way every benchmark process builds them.

Each child process builds its model here, from a fixed seed, so every phase runs the same weights on the same
inputs and its first output can be compared against the eager one. ``demo`` is the package's demo model;
``gpt2`` is GPT-2-small-shaped (transformers ``GPT2Config``: n_embd 768, 12 layers, 12 heads, sequence 128,
``use_cache=False``) with random weights; ``vit`` is a ViT-Small-shaped image classifier (transformers
``ViTConfig``: hidden 384, 12 layers, 6 heads, 224x224 images, patch 16); ``tiny`` is a one-layer version of
the demo model that compiles in seconds, for smoke tests. transformers is imported only by the models that
need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["MODELS", "build_model", "call_module", "import_libraries", "model_description"]

#: Name -> one-line description (shown in the results' metadata).
MODELS: dict[str, str] = {
    "demo": "torchkiln demo transformer: hidden 256, 4 layers, 4 heads, vocab 1000, batch 2x128 tokens",
    "gpt2": "GPT-2-small shape (transformers GPT2LMHeadModel, random weights): 768 x 12 x 12 heads, 1x128",
    "vit": "ViT-Small/16 shape (transformers ViTForImageClassification, random weights): 384x12x6, 2x3x224",
    "tiny": "one-layer demo transformer (hidden 32, 2 heads, vocab 64, 2x16 tokens), for smoke tests",
}
SEED = 0
VIT_IMAGE = 224


def model_description(name: str) -> str:
    return MODELS[name]


def import_libraries(name: str) -> None:
    """Import what building model ``name`` imports, without building it: what a program does at its top, before
    ``torchkiln.preload`` (a module first imported while preload's imports run waits for them)."""
    if name in ("demo", "tiny"):
        import torchkiln.demo_model  # noqa: F401
    elif name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel  # noqa: F401
    elif name == "vit":
        from transformers import ViTConfig, ViTForImageClassification  # noqa: F401


def build_model(name: str, device: str) -> tuple[nn.Module, tuple[Any, ...]]:
    """Build model ``name`` in eval mode on ``device`` with seeded random weights, and its example inputs."""
    import torch

    if name not in MODELS:
        raise ValueError(f"unknown benchmark model {name!r}; known: {', '.join(MODELS)}")
    # fork_rng: weights and inputs depend only on SEED, never on what ran before in the process. The transformers
    # models initialise their weights on the target device (GPT-2's 124 M parameters took 12-16 s of CPU init per
    # process on the H200 host), from that device's generator, seeded by the same manual_seed.
    devices = [] if device == "cpu" else [torch.device(device).index or 0]
    with torch.random.fork_rng(devices=devices, device_type=torch.device(device).type):
        torch.manual_seed(SEED)
        model, inputs = _BUILDERS[name](device)
    model = model.eval().to(device)
    return model, tuple(t.to(device) for t in inputs)


def _demo(_device: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from torchkiln.demo_model import build_demo_model, demo_inputs

    return build_demo_model(), demo_inputs()


def _tiny(_device: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import torch

    from torchkiln.demo_model import TinyTransformer

    model = TinyTransformer(vocab=64, hidden=32, layers=1, heads=2, seq=16)
    return model, (torch.randint(0, 64, (2, 16)),)


def _gpt2(device: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257, use_cache=False)
    with torch.device(device):
        model = GPT2LMHeadModel(config)
    return model, (torch.randint(0, config.vocab_size, (1, 128)),)


def _vit(device: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    # num_labels is a PretrainedConfig keyword that transformers' stubs do not list on ViTConfig.
    kwargs: dict[str, Any] = {"num_labels": 1000}
    config = ViTConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=VIT_IMAGE,
        patch_size=16,
        **kwargs,
    )
    with torch.device(device):
        model = ViTForImageClassification(config)
    return model, (torch.randn(2, 3, VIT_IMAGE, VIT_IMAGE),)


_BUILDERS = {"demo": _demo, "gpt2": _gpt2, "vit": _vit, "tiny": _tiny}


def call_module(module: Any, *args: Any) -> Any:
    """The function the raw ``aot_compile`` phase compiles: the module is an argument, not a constant."""
    return module(*args)
