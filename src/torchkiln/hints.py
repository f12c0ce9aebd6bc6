"""Advice for torch's compile errors: the settings and changes that make a target trace as one graph.

Matched against torch's error text; each hint names the fix a user can apply (docs/MODELS.md lists the settings
real models need). Pure text: no torch import.
"""

from __future__ import annotations

__all__ = ["hint_for"]

_QWEN_VL = (
    "Qwen2-VL / Qwen2.5-VL's vision tower has data-dependent sizes: run it and get_rope_index eagerly and compile the "
    "model called with inputs_embeds and position_ids (docs/MODELS.md, the language-model recipe)"
)

#: Settings transformers models need to trace fullgraph, matched against torch's error text -> advice.
_FULLGRAPH_HINTS: tuple[tuple[str, str], ...] = (
    ("DynamicCache", "pass use_cache=False (model.config.use_cache = False): KV-cache objects break fullgraph"),
    ("past_key_values", "pass use_cache=False (model.config.use_cache = False): KV-cache objects break fullgraph"),
    ("StaticCache", "pass use_cache=False (model.config.use_cache = False): KV-cache objects break fullgraph"),
    (
        "PendingUnbackedSymbolNotFound",
        "a data-dependent size (e.g. a vision-language model's image-token mask) that this torch cannot trace "
        "fullgraph; torch >= 2.13 compiles Llava-style models (docs/MODELS.md)",
    ),
    (
        "could not get source code",
        "torch needs the source file of the code it compiles: define the model in a .py file (an importable "
        "module), not in python -c, stdin or exec()",
    ),
    (
        "on __main__",
        "a class or function defined in the script you run (module __main__) cannot be saved by name: move the "
        "model code into an importable module (e.g. mymodel.py) and import it",
    ),
    (
        "TensorifyScalarRestartAnalysis",
        "Dynamo asked to retrace with a Python float specialized, which aot_compile does not do, and the retry with "
        "torch._dynamo.config.specialize_float=True failed too (compat/float_specialization.py); try dynamic=False",
    ),
    (
        "reads torch.distributed",
        "keep the process group (or DeviceMesh) the model uses as an attribute of one of its modules, or read "
        "torch.distributed in a forward of the model itself: then the key includes the rank and each rank's build "
        "is published (docs/RELIABILITY.md, tensor-parallel ranks)",
    ),
    ("modeling_qwen2_vl", _QWEN_VL),  # the vision attention's split by cu_seqlens
    ("get_vision_window_index", _QWEN_VL),  # Qwen2.5-VL's window index from grid_thw
    ("data-dependent", "avoid data-dependent Python control flow in forward, or mark the branch with torch.cond"),
    ("Graph break", "the target must trace as one graph (fullgraph=True): remove the graph break named above"),
)


def hint_for(message: str) -> str:
    for needle, hint in _FULLGRAPH_HINTS:
        if needle in message:
            return hint
    return "see torch's reason above; TORCHKILN_LOG=debug and TORCH_LOGS=graph_breaks show more"
