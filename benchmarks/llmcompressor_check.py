"""Does llm-compressor prune each module as the exported recipe says? A check on stories260K.

Exports recipes (``autoprune.export_recipes.to_llmcompressor``) for a policy with per-projection
ratios (explicit allocation), once with Wanda and once with SparseGPT, runs llm-compressor's
``oneshot`` on each in a virtualenv of its own (runs/llmc-venv: CPU torch, llmcompressor and a
transformers it accepts; created on the first run) on a plain Hugging Face copy of stories260K and
TinyStories calibration windows, and prints each module's ratio beside the fraction of zero
weights llm-compressor left.

    python benchmarks/llmcompressor_check.py [--windows 16] [--seqlen 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "runs" / "llmc-venv"
PACKAGES = [["torch==2.13.0"], ["llmcompressor==0.14.0.1", "transformers<=5.17"]]  # torch first: the CPU build


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import llmcompressor"], capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    for pkgs in PACKAGES:
        subprocess.run([python, "-m", "pip", "install", "-q", *pkgs], check=True)
    return python


def oneshot_sparsity(model_dir: str, recipe: str, calib: str, out: str) -> None:
    """Inside runs/llmc-venv (no autoprune there): oneshot, then every Linear's fraction of zeros."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = json.loads(Path(calib).read_text())
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    oneshot(model=model, dataset=data, recipe=recipe, num_calibration_samples=len(ids), max_seq_length=len(ids[0]))
    zeros = {n: (m.weight == 0).float().mean().item() for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear)}
    Path(out).write_text(json.dumps(zeros))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=16, help="calibration windows (default: 16)")
    ap.add_argument("--seqlen", type=int, default=128, help="tokens per window (default: 128)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "llmc-check")
    args = ap.parse_args()

    from autoprune.commands import quiet_libraries
    from autoprune.export_recipes import module_ratios, to_llmcompressor
    from autoprune.jobs.common import calibration_windows
    from autoprune.models import load_model
    from autoprune.pruning.policy import Policy

    quiet_libraries()
    python = ensure_venv()
    args.out.mkdir(parents=True, exist_ok=True)
    lm = load_model("stories260K", "float32", "cpu")
    dense = args.out / "dense"
    lm.model.save_pretrained(dense)
    lm.tokenizer.save_pretrained(dense)
    calib = args.out / "calib.json"
    windows = calibration_windows(lm.tokenizer, "tinystories:0-499", args.windows, args.seqlen, 0)
    calib.write_text(json.dumps(windows.tolist()))

    allocation = dict(allocation="explicit", block_ratios=(0.3, 0.4, 0.5, 0.6, 0.7),
                      layer_ratios=[{"self_attn.k_proj": 0.2}, {"mlp.up_proj": 0.55}, {"mlp.down_proj": 0.65},
                                    {"self_attn.o_proj": 0.45}, {"self_attn.q_proj": 0.8}])
    policies = {"wanda": Policy(metric="wanda", sparsity=0.5, **allocation),
                "sparsegpt": Policy(metric="sparsegpt", sparsity=0.5, update="sparsegpt", **allocation)}
    measured = {}
    for key, policy in policies.items():
        recipe, out = args.out / f"recipe-{key}.yaml", args.out / f"sparsity-{key}.json"
        recipe.write_text(to_llmcompressor(policy, lm.model))
        run = subprocess.run([python, __file__, "--oneshot", str(dense), str(recipe), str(calib), str(out)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"oneshot failed on {recipe}:\n{run.stderr[-3000:]}")
        measured[key] = json.loads(out.read_text())

    ratios = module_ratios(policies["wanda"], lm.model)
    print(f"\nllm-compressor 0.14.0.1 oneshot on stories260K, {args.windows} x {args.seqlen}-token TinyStories "
          f"windows; fraction of zero weights per module")
    print(f"{'module':<34} {'autoprune ratio':>15} {'Wanda':>8} {'SparseGPT':>9}")
    for name, r in ratios.items():
        print(f"{name:<34} {r:>15.4f} {measured['wanda'][name]:>8.4f} {measured['sparsegpt'][name]:>9.4f}")
    for key in policies:
        worst = max(abs(measured[key][n] - r) for n, r in ratios.items())
        others = {n: s for n, s in measured[key].items() if n not in ratios}
        print(f"{key}: largest |llm-compressor - autoprune| {worst:.4f}; other linears {others}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--oneshot"]:
        oneshot_sparsity(*sys.argv[2:6])
    else:
        main()
