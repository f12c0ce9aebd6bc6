"""What of an artifact's kernel bundle a hit needs: the bundle's size by kind, and hits that run without parts of it.

    python benchmarks/bundle_usage.py [--model demo] [--device cuda] [--mode MODE] [--workdir DIR]
                                      [--prune ir triton]

It compiles the model in one process (a miss into a fresh torchkiln cache), then hits in fresh processes with empty
Inductor and Triton caches: the kernels are restored through ``torchkiln.preload(key=..., deserialize=False)``,
then a variant removes part of what was restored (``ir``: Triton's intermediate files, ``.ttir``/``.ttgir``/
``.llir``/``.ptx``/``.source``; ``triton``: the whole Triton cache dir), then ``torchkiln.compile`` loads and calls
the model. A variant that needed the removed files recompiles them: ``new_files`` lists every file the load wrote
into the caches (``.best_config`` and locks aside). Prints one JSON line (``TKBUNDLE {...}``) with the bundle by
(root, suffix), every bundled file's size, and per variant: hit, first output, max |diff| against eager, what was
removed, the new files. BENCHMARKS.md says what was concluded from which run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys, time
import torch, torchkiln
from torchkiln import artifact
from torchkiln.kernels import bundle
from torchkiln.bench.models import build_model
model_name, device, cache, mode, phase, prune, key = sys.argv[1:8]
mode = None if mode == "default" else mode
model, inputs = build_model(model_name, device)
roots = {"inductor": os.environ["TORCHINDUCTOR_CACHE_DIR"], "triton": os.environ["TRITON_CACHE_DIR"]}
IR = (".ttir", ".ttgir", ".llir", ".ptx", ".source", ".amdgcn", ".json_ir")
def files():
    out = {}
    for name, root in roots.items():
        for dirpath, _, names in os.walk(root):
            for n in names:
                path = os.path.join(dirpath, n)
                out[name + "/" + os.path.relpath(path, root)] = os.path.getsize(path)
    return out
removed = []
restored = {}
if phase == "hit":
    # restore the artifact's kernels through preload (phase 2 only), then leave out what the variant drops
    job = torchkiln.preload(cache=cache, key=key, device=device, deserialize=False)
    job.join(600)
    restored = files()
    for name in restored:
        root, rel = name.split("/", 1)
        drop = (prune == "ir" and root == "triton" and rel.endswith(IR)) or (prune == "triton" and root == "triton")
        if drop:
            os.remove(os.path.join(roots[root], rel))
            removed.append(name)
before = files()
t = time.perf_counter()
with torch.no_grad():
    cm = torchkiln.compile(model, inputs, cache=cache, mode=mode)
    out = cm(*inputs)
    if device == "cuda":
        torch.cuda.synchronize()
    first_output = time.perf_counter() - t
    want = model(*inputs)
after = files()
new = sorted(n for n in after if n not in before and not n.endswith((".lock", ".best_config")) and "/locks/" not in n)
report = {"hit": cm.hit, "key": cm.key, "artifact_bytes": cm.artifact_bytes, "first_output_s": first_output,
          "max_diff": float((out.float() - want.float()).abs().max()), "removed": len(removed),
          "removed_bytes": sum(restored.get(n, 0) for n in removed), "new_files": new}
if phase == "hit" and prune == "none":
    from torchkiln.store import open_store
    decoded = artifact.decode(open_store(cache).get(cm.key), where=cm.key)
    with bundle.decode(decoded.sections["kernels"]) as b:
        report["bundled"] = {e.name: e.size for e in b.entries}
    report["sections"] = {name: len(data) for name, data in decoded.sections.items()}
sys.stdout.write("TKCHILD " + json.dumps(report) + "\n")
"""


def _run(args: argparse.Namespace, work: Path, phase: str, prune: str = "none", key: str = "") -> dict:
    env = dict(os.environ)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"inductor-{phase}-{prune}")
    env["TRITON_CACHE_DIR"] = str(work / f"triton-{phase}-{prune}")
    env["XDG_CACHE_HOME"] = str(work / "xdg")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, args.model, args.device, str(work / "tk"), args.mode, phase, prune, key],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("TKCHILD ")), None)
    if line is None:
        raise SystemExit(f"{phase} failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(line[len("TKCHILD ") :]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--mode", default="default")
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--prune", nargs="*", default=["ir", "triton"], help="hit variants: what is removed after the restore"
    )
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tk-bundle-usage-"))
    miss = _run(args, work, "miss")
    hit = _run(args, work, "hit", "none", miss["key"])
    kinds: dict[str, dict[str, int]] = {}
    for name, size in hit["bundled"].items():
        root = name.split("/", 1)[0]
        suffix = Path(name).suffix or Path(name).name
        kind = kinds.setdefault(f"{root} {suffix}", {"files": 0, "bytes": 0})
        kind["files"] += 1
        kind["bytes"] += size
    variants = {"none": hit}
    for prune in args.prune:
        variants[prune] = _run(args, work, "hit", prune, miss["key"])
    report = {
        "model": args.model,
        "device": args.device,
        "mode": args.mode,
        "miss_hit": miss["hit"],
        "artifact_bytes": hit["artifact_bytes"],
        "sections": hit["sections"],
        "bundled_bytes": sum(hit["bundled"].values()),
        "by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1]["bytes"])),
        "variants": {
            name: {k: v[k] for k in ("hit", "first_output_s", "max_diff", "removed", "removed_bytes", "new_files")}
            for name, v in variants.items()
        },
        "files": dict(sorted(hit["bundled"].items())),
    }
    sys.stdout.write("TKBUNDLE " + json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
