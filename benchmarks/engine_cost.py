"""What one candidate costs once the calibration statistics exist.

Prints, for a real model (default stories260K) or a randomly initialised Llama of a given shape
(e.g. Llama-7B's: --random-llama 32,4096,11008,32), the time and peak memory to collect each
statistic once, the time to apply one more policy with those statistics reused (one-shot), and
the full sequential protocol for comparison.

    python benchmarks/engine_cost.py
    python benchmarks/engine_cost.py --random-llama 2,4096,11008,32 --seqlen 512 --windows 8
    python benchmarks/engine_cost.py --random-llama 32,4096,11008,32 --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import copy
import resource
import time

import torch
from rich.console import Console
from rich.table import Table

from autoprune.jobs.common import calibration_windows
from autoprune.models import load_model, resolve_device
from autoprune.models.loading import DTYPES
from autoprune.pruning.engine import apply_policy, blocks_linears, collect_stats, prune_sequential
from autoprune.pruning.policy import Policy


def random_llama(spec: str, dtype: torch.dtype, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    blocks, hidden, mlp, heads = (int(x) for x in spec.split(","))
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=blocks,
                      num_attention_heads=heads, num_key_value_heads=heads, vocab_size=32000,
                      max_position_embeddings=4096)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


class Meter:
    """Wall time and peak memory (CUDA allocator on a GPU, process RSS on the CPU) of a block."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:  # growth of the process's peak RSS: a lower bound when the peak was set earlier
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base
        self.seconds = time.perf_counter() - self.t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="stories260K")
    ap.add_argument("--random-llama", help="BLOCKS,HIDDEN,MLP,HEADS: a randomly initialised Llama instead")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--sparsity", type=float, default=0.5)
    args = ap.parse_args()

    dev = resolve_device(args.device)
    if args.random_llama:
        model = random_llama(args.random_llama, DTYPES[args.dtype], dev)
        name = f"random Llama {args.random_llama}"
        windows = torch.randint(0, 32000, (args.windows, args.seqlen), generator=torch.Generator().manual_seed(0))
    else:
        lm = load_model(args.model, args.dtype, str(dev))
        model, name = lm.model, args.model
        windows = calibration_windows(lm.tokenizer, "tinystories:0-499", args.windows, args.seqlen, 0)
    n_params = sum(lin.weight.numel() for bl in blocks_linears(model) for lin in bl.values())
    dense = {n: lin.weight.data.clone() for bl in blocks_linears(model) for n, lin in bl.items()}

    def restore():
        for bl in blocks_linears(model):
            for n, lin in bl.items():
                lin.weight.data.copy_(dense[n])

    rows = []

    def record(label: str, m: Meter) -> None:  # printed as measured, so a slow model still shows progress
        rows.append((label, m.seconds, m.peak))
        print(f"{label}: {m.seconds:.3f} s, {m.peak / 2**20:.1f} MiB", flush=True)

    stats = {}
    for label, kw in [("X (activation norms)", {}), ("X + H (Hessians)", {"hessian": True}),
                      ("X + G (gradients)", {"gradients": True})]:
        with Meter(dev) as m:
            stats[label] = collect_stats(model, windows, batch_size=args.batch_size, progress=False, **kw)
        record(f"collect {label}, once", m)
    for method, key in [("magnitude", "X (activation norms)"), ("wanda", "X (activation norms)"),
                        ("ria", "X (activation norms)"), ("sparsegpt", "X + H (Hessians)")]:
        policy = Policy.from_method(method, args.sparsity)
        apply_policy(model, policy, stats[key])  # warm-up
        restore()
        with Meter(dev) as m:
            apply_policy(model, policy, stats[key])
        restore()
        record(f"one more policy, stats reused: {method}", m)
    for method in ["wanda", "sparsegpt"]:
        fresh = copy.deepcopy(model)
        with Meter(dev) as m:
            prune_sequential(fresh, Policy.from_method(method, args.sparsity), windows, args.batch_size, progress=False)
        record(f"full sequential protocol: {method}", m)
        del fresh

    table = Table(title=f"engine cost: {name}, {n_params / 1e6:.2f}M prunable weights, {args.windows}x{args.seqlen} "
                        f"calibration tokens, {dev.type}, {args.dtype}, torch threads {torch.get_num_threads()}")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("peak extra memory (MiB)", justify="right")
    for label, sec, peak in rows:
        table.add_row(label, f"{sec:.3f}", f"{peak / 2**20:.1f}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
