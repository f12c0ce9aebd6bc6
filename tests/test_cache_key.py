"""Cache key: what changes it, what deliberately does not, determinism across processes, and explain."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional

from torchkiln.cache_key import EXCLUDED, PART_NAMES, CacheKey, build, explain
from torchkiln.errors import ArtifactCorruptError, InvalidTargetError
from torchkiln.fingerprint import Fingerprint

FP = Fingerprint.current()
KEY_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}-[0-9a-f]{64}$")


class Block(nn.Module):
    def __init__(
        self,
        *,
        eps: float = 1e-5,
        act: type[nn.Module] = nn.GELU,
        p: float = 0.1,
        width: int = 8,
        dtype: torch.dtype = torch.float32,
        norm: type[nn.Module] = nn.LayerNorm,
        fn: Callable[[torch.Tensor], torch.Tensor] = functional.silu,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width, dtype=dtype)
        self.norm = norm(width, eps=eps)
        self.act = act()
        self.drop = nn.Dropout(p)
        self.gate_fn = fn  # a plain function attribute: Dynamo's guard on it is dropped at compile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.drop(self.act(self.norm(self.proj(x)))) * self.gate_fn(x)
        return out


def key_of(
    target: Any,
    *args: Any,
    kwargs: Mapping[str, Any] | None = None,
    dynamic: bool = False,
    options: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    name: str | None = None,
) -> CacheKey:
    if not args:
        args = (torch.ones(2, 8),)
    return build(
        target,
        args,
        kwargs or {},
        options=options or {"backend": "inductor", "mode": None},
        fingerprint=FP,
        dynamic=dynamic,
        name=name,
        environ=environ or {},
    )


def differing(a: CacheKey, b: CacheKey) -> list[str]:
    return [pa.name for pa, pb in zip(a.parts, b.parts, strict=True) if pa.digest != pb.digest]


def test_key_shape_parts_and_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="torchkiln.cache_key"):
        key = key_of(Block())
    assert KEY_RE.match(key.key)
    assert key.key.startswith("Block-")
    assert tuple(p.name for p in key.parts) == PART_NAMES
    logged = caplog.text
    for part in key.parts:
        assert part.name in logged
        assert part.digest in logged
    assert key_of(Block()).key == key.key  # same everything -> same key
    assert key_of(Block(), name="my model/v2 !").name == "my_model_v2"
    assert len(key_of(Block(), name="x" * 300).name) == 64
    assert key_of(Block(), name="///").name == "target"


@pytest.mark.parametrize(
    ("changed", "why"),
    [
        (lambda: Block(eps=1e-6), "eps"),
        (lambda: Block(act=nn.ReLU), "activation module"),
        (lambda: Block(fn=functional.gelu), "activation function attribute"),
        (lambda: Block(norm=nn.RMSNorm), "submodule class"),
        (lambda: Block(p=0.2), "dropout p"),
        (lambda: Block(width=16), "param shape"),
        (lambda: Block(dtype=torch.float64), "param dtype"),
        (lambda: Block().eval(), "train/eval"),
        (lambda: Block().requires_grad_(False), "requires_grad"),
    ],
)
def test_structure_changes_change_the_key(changed: Callable[[], nn.Module], why: str) -> None:
    base = key_of(Block(), torch.ones(2, 8))
    other = changed()
    x = torch.ones(2, 16) if why == "param shape" else torch.ones(2, 8)
    assert "structure" in differing(base, key_of(other, x)), why


def test_hooks_change_the_key() -> None:
    block = Block()
    base = key_of(block)
    handle = block.register_forward_hook(lambda m, i, o: o * 2)
    assert differing(base, key_of(block)) == ["structure"]
    handle.remove()
    assert key_of(block).key == base.key


def test_weights_alone_do_not_change_the_key() -> None:
    torch.manual_seed(0)
    a = Block()
    torch.manual_seed(1)
    b = Block()
    with torch.no_grad():
        b.proj.weight.add_(1.0)
    assert not torch.equal(a.proj.weight, b.proj.weight)
    assert key_of(a).key == key_of(b).key


def test_tied_parameters_are_recorded() -> None:
    class Tied(nn.Module):
        def __init__(self, tie: bool) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            if tie:
                self.head.weight = self.emb.weight

    tied, untied = key_of(Tied(True)), key_of(Tied(False))
    assert differing(tied, untied) == ["structure"]
    head = tied.part("structure").description["modules"]["head"]  # type: ignore[union-attr]
    assert head["params"]["weight"] == {"tied_to": "emb.weight"}


def test_inputs() -> None:
    m = Block()
    base = key_of(m, torch.ones(2, 8))
    assert differing(base, key_of(m, torch.ones(3, 8))) == ["inputs"]
    assert differing(base, key_of(m, torch.ones(2, 8, dtype=torch.float64))) == ["inputs"]
    assert differing(base, key_of(m, torch.ones(8, 2).t())) == ["inputs"]  # same shape, other strides
    assert differing(base, key_of(m, torch.ones(2, 8, requires_grad=True))) == ["inputs"]
    assert key_of(m, torch.zeros(2, 8)).key == base.key  # values never matter
    # scalars by value, containers by kind, other objects by type
    assert key_of(m, kwargs={"n": 3}).key != key_of(m, kwargs={"n": 4}).key
    assert key_of(m, kwargs={"n": 3.0}).key != key_of(m, kwargs={"n": 3}).key
    assert key_of(m, kwargs={"xs": [1, 2]}).key != key_of(m, kwargs={"xs": (1, 2)}).key
    assert key_of(m, kwargs={"a": 1, "b": 2}).key == key_of(m, kwargs={"b": 2, "a": 1}).key
    desc = key_of(m, kwargs={"o": object(), "f": float("nan")}).part("inputs").description  # type: ignore[union-attr]
    assert desc["kwargs"] == {"f": {"float": "nan"}, "o": {"object": "builtins.object"}}


def test_dynamic_inputs_share_a_key_except_sizes_0_and_1() -> None:
    m = Block()
    k8 = key_of(m, torch.ones(8, 8), dynamic=True)
    assert key_of(m, torch.ones(16, 8), dynamic=True).key == k8.key
    assert key_of(m, torch.ones(1, 8), dynamic=True).key != k8.key  # Dynamo specializes 1
    assert key_of(m, torch.ones(0, 8), dynamic=True).key != k8.key  # ... and 0
    assert key_of(m, torch.ones(8, 8), dynamic=False).key != k8.key
    spec = k8.part("inputs").description["args"][0]["tensor"]  # type: ignore[union-attr]
    assert spec["shape"] == ["dyn", "dyn"]
    assert spec["stride"] == ["dyn", 1]


def test_options_and_codegen_environment() -> None:
    m = Block()
    base = key_of(m, environ={"HOME": "/a"})
    assert differing(base, key_of(m, options={"backend": "inductor", "mode": "max-autotune"})) == ["options"]
    # Variables that change generated code change the key; cache dirs, logs and unrelated ones do not.
    assert differing(base, key_of(m, environ={"TORCHINDUCTOR_FREEZING": "1"})) == ["options"]
    assert differing(base, key_of(m, environ={"ATEN_CPU_CAPABILITY": "avx2"})) == ["options"]
    for ignored in ("TORCHINDUCTOR_CACHE_DIR", "TORCH_LOGS", "TORCHKILN_CACHE", "HOME", "HOSTNAME"):
        assert key_of(m, environ={"HOME": "/b", ignored: "/x"}).key == base.key, ignored
    with torch.no_grad():
        assert differing(base, key_of(m)) == ["options"]  # grad mode decides whether autograd is traced


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


GLOBAL_BLOCK = Block()


def _uses_global(x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = GLOBAL_BLOCK(x)
    return out


def test_function_targets() -> None:
    key = key_of(_double)
    assert key.name == "_double"
    target = key.part("target").description  # type: ignore[union-attr]
    assert target["kind"] == "function"
    assert target["qualname"] == f"{__name__}._double"
    assert set(target["sources"]) == {__name__}
    assert key.part("structure").description is None  # type: ignore[union-attr]
    # A function that calls a module it reads by name: that module's structure is keyed.
    uses = key_of(_uses_global)
    assert list(uses.part("structure").description) == ["global GLOBAL_BLOCK"]  # type: ignore[union-attr]
    # a bound method is a function target whose owner is keyed; a partial is refused, as torchkiln.compile
    # refuses it (targets.validate: the one rule), since no other process could rebuild it
    assert key_of(GLOBAL_BLOCK.forward).part("structure").description  # type: ignore[union-attr]
    with pytest.raises(InvalidTargetError, match="module-level function"):
        key_of(functools.partial(_double))


def test_function_without_source_file_is_keyed_by_code() -> None:
    scope: dict[str, Any] = {"__name__": "not_a_real_module"}
    exec("def f(x):\n    return x + 1\n", scope)
    exec("def g(x):\n    return x + 2\n", scope)
    kf, kg = key_of(scope["f"], name="f"), key_of(scope["g"], name="f")
    assert "not_a_real_module.f" in kf.part("target").description["code"]  # type: ignore[union-attr]
    assert differing(kf, kg) == ["target"]
    # classes too (a notebook cell): another forward body is another target
    exec("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n        return x + 1\n", scope)
    m1 = scope["M"]()
    exec("class M(torch.nn.Module):\n    def forward(self, x):\n        return x * 3\n", scope)
    assert differing(key_of(m1), key_of(scope["M"]())) == ["target"]


def test_editing_the_model_source_changes_target(tmp_path: Path) -> None:
    src = tmp_path / "kiln_tmp_model.py"
    src.write_text("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n        return x + 1\n")
    spec = importlib.util.spec_from_file_location("kiln_tmp_model", src)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kiln_tmp_model"] = mod
    try:
        spec.loader.exec_module(mod)
        before = key_of(mod.M())
        src.write_text(src.read_text().replace("x + 1", "x + 2  # changed"))
        assert differing(before, key_of(mod.M())) == ["target"]
    finally:
        del sys.modules["kiln_tmp_model"]


@pytest.mark.parametrize("bad", [42, "model", nn.Linear, torch.sin])
def test_invalid_target(bad: Any) -> None:
    with pytest.raises(InvalidTargetError) as info:
        key_of(bad)
    assert isinstance(info.value, TypeError)
    assert info.value.fix and "nn.Module" in str(info.value)


def test_to_dict_round_trip_and_tamper_detection() -> None:
    key = key_of(Block())
    data = json.loads(json.dumps(key.to_dict()))
    assert CacheKey.from_dict(data) == key
    data["parts"][2]["description"]["modules"]["norm"]["attrs"]["eps"] = 0.5
    with pytest.raises(ArtifactCorruptError, match="structure"):
        CacheKey.from_dict(data)
    with pytest.raises(ArtifactCorruptError):
        CacheKey.from_dict({"key": "x"})


def test_explain_picks_nearest_and_names_the_changes() -> None:
    wanted = key_of(Block(eps=1e-6), torch.ones(4, 8))
    near = key_of(Block(), torch.ones(4, 8))  # differs in structure only
    far = key_of(Block(), torch.ones(2, 8), options={"backend": "eager"})  # structure, inputs, options
    exp = explain(wanted, [far, near])
    assert exp.nearest == near
    assert [d.name for d in exp.differences] == ["structure"]
    assert exp.differences[0].changes == ("structure.modules.norm.attrs.eps: 1e-05 -> 1e-06",)
    assert "structure.modules.norm.attrs.eps: 1e-05 -> 1e-06" in str(exp)
    assert json.loads(json.dumps(exp.to_dict()))["nearest"] == near.key
    assert explain(wanted, []).nearest is None
    assert "this key is stored" in str(explain(wanted, [wanted]))
    shape = explain(key_of(Block(), torch.ones(2, 8)), [near]).differences
    assert [d.name for d in shape] == ["inputs"]
    assert "inputs.args[0].tensor.shape: [4,8] -> [2,8]" in shape[0].changes


def test_exclusions_are_documented() -> None:
    assert len(EXCLUDED) >= 5
    assert any("weights" in what for what, _ in EXCLUDED)
    assert all(what and why for what, why in EXCLUDED)


def test_same_key_in_a_fresh_process_with_another_hash_seed_and_no_compiler_import(tmp_path: Path) -> None:
    (tmp_path / "kiln_det_model.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            class M(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.layers = nn.ModuleDict({k: nn.Linear(4, 4) for k in ("b", "a", "c")})
                    self.tags = {"x", "y", "z", "w"}  # a set: iteration order follows the hash seed
                    self.table = {"z": 1, "a": 2}
                def forward(self, x):
                    return sum(layer(x) for layer in self.layers.values())
            """
        )
    )
    code = textwrap.dedent(
        """
        import sys, torch, kiln_det_model
        compilers = ("torch._dynamo", "torch._inductor", "triton")
        before = {m for m in sys.modules if m.startswith(compilers)}
        from torchkiln.cache_key import build
        from torchkiln.fingerprint import Fingerprint
        k = build(kiln_det_model.M(), (torch.ones(2, 4),), {"z": 1, "a": [1, 2]},
                  options={"backend": "inductor", "options": {"b": 1, "a": 2}},
                  fingerprint=Fingerprint.current(), dynamic=False, environ={})
        print(k.key, sorted({m for m in sys.modules if m.startswith(compilers)} - before))
        """
    )
    # One fresh process with hash randomization off, against this process (randomized unless the caller
    # fixed PYTHONHASHSEED): a second subprocess would cost another torch import for no extra coverage.
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": path}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    sys.path.insert(0, str(tmp_path))
    try:
        scope: dict[str, Any] = {}
        exec(code.replace("print(k.key)", ""), scope)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("kiln_det_model", None)
    key, new_modules = run.stdout.strip().split(" ", 1)
    assert KEY_RE.match(key)
    assert key == scope["k"].key
    # The key is built on the hit path: it must not import Dynamo, Inductor or Triton (seconds).
    assert new_modules == "[]"


# --- real transformers models from tiny configs (no downloads) ---------------------------------------------


def _llama(**overrides: Any) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=64,
        **overrides,
    )
    return transformers.LlamaForCausalLM(config).eval()  # type: ignore[no-any-return]


def test_llama_config_changes_change_the_key_and_weights_do_not() -> None:
    ids = torch.ones(1, 8, dtype=torch.long)
    torch.manual_seed(0)
    base = key_of(_llama(), ids)
    torch.manual_seed(1)
    assert key_of(_llama(), ids).key == base.key  # other random weights: same artifact

    renamed: Any = _llama()
    renamed.config._name_or_path = "/somewhere/else/llama"
    renamed.name_or_path = "/somewhere/else/llama"
    assert key_of(renamed, ids).key == base.key  # a checkpoint path changes no code

    eps = key_of(_llama(rms_norm_eps=1e-5), ids)
    assert differing(base, eps) == ["structure"]
    changes = explain(eps, [base]).differences[0].changes
    assert "structure.modules[''].attrs.config.values.rms_norm_eps: 1e-06 -> 1e-05" in changes
    # the norm layers' own copy of eps shows which submodules changed
    assert "structure.modules['model.layers.0.input_layernorm'].attrs.variance_epsilon: 1e-06 -> 1e-05" in changes

    assert differing(base, key_of(_llama(hidden_act="gelu"), ids)) == ["structure"]
    assert differing(base, key_of(_llama(attn_implementation="eager"), ids)) == ["structure"]
    assert differing(base, key_of(_llama(), torch.ones(1, 9, dtype=torch.long))) == ["inputs"]


def test_gpt2_config_sources_and_activation() -> None:
    transformers = pytest.importorskip("transformers")

    def gpt2(act: str) -> nn.Module:
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, activation_function=act)
        return transformers.GPT2LMHeadModel(config).eval()  # type: ignore[no-any-return]

    ids = torch.ones(1, 8, dtype=torch.long)
    base = key_of(gpt2("gelu_new"), ids)
    sources = base.part("target").description["sources"]  # type: ignore[union-attr]
    assert "transformers.models.gpt2.modeling_gpt2" in sources
    assert "transformers.modeling_utils" in sources  # a base class's module counts
    assert not any(name.startswith("torch.") for name in sources)  # torch is keyed by version instead
    # relu is torch's nn.ReLU: transformers.activations leaves the source set, so `target` changes too
    assert differing(base, key_of(gpt2("relu"), ids)) == ["target", "structure"]
