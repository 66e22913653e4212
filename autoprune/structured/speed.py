"""Generation speed, measured: prefill and greedy-decode tokens per second with a KV cache.

Models are timed interleaved (each repeat runs every model once, in a rotated order) and the
medians reported, so that a machine shared with other work slows them all alike. On a GPU the
clock waits for the device. The prompt's logits are computed for its last token only, as
``generate`` does.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Probe:
    batch: int = 1
    prompt: int = 128  # prompt tokens per sequence
    new_tokens: int = 64  # greedy decode steps after the prompt
    repeats: int = 5  # at least
    min_seconds: float = 0.0  # more repeats, up to 100, until each model is timed this long (fast models are noisy)


@dataclass(frozen=True)
class Speed:
    prefill: float  # prompt tokens per second, all sequences together
    decode: float  # generated tokens per second, all sequences together
    prefill_s: float  # median seconds of the prefill
    decode_s: float  # median seconds of the decode steps
    decode_runs: tuple[float, ...]  # seconds of the decode steps, per repeat


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@torch.no_grad()
def _generate(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generation."""
    from transformers import DynamicCache

    params = inspect.signature(model.forward).parameters
    kw = {"use_cache": True, ("cache" if "cache" in params else "past_key_values"): DynamicCache(config=model.config)}
    if "logits_to_keep" in params:
        kw["logits_to_keep"] = 1
    dev = ids.device
    _sync(dev)
    t0 = time.perf_counter()
    tok = model(ids, **kw).logits[:, -1].argmax(-1, keepdim=True)  # (batch, 1)
    _sync(dev)
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        tok = model(tok, **kw).logits[:, -1].argmax(-1, keepdim=True)
    _sync(dev)
    return t1 - t0, time.perf_counter() - t1


def measure(models: dict[str, nn.Module], probe: Probe = Probe(), seed: int = 0) -> dict[str, Speed]:
    """Speed of each model on the same random prompt, interleaved, medians over ``probe.repeats``."""
    first = next(iter(models.values()))
    dev = next(first.parameters()).device
    vocab = first.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (probe.batch, probe.prompt), generator=g).to(dev)
    names = list(models)
    for name in names:  # warm-up: allocator, kernels, caches
        _generate(models[name], ids[:, :8], 2)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    r = 0
    while r < probe.repeats or (r < 100 and min(sum(map(sum, ts)) for ts in times.values()) < probe.min_seconds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_generate(models[name], ids, probe.new_tokens))
        r += 1
    out = {}
    for name, ts in times.items():
        p, d = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        out[name] = Speed(probe.batch * probe.prompt / p, probe.batch * probe.new_tokens / d, p, d,
                          tuple(t[1] for t in ts))
    return out


def decode_speedup(dense: nn.Module, shrunk: nn.Module, probe: Probe) -> tuple[float, float, float]:
    """(median over repeats of the decode time of ``dense`` over that of ``shrunk`` in the same
    repeat, dense decode tokens/s, shrunk decode tokens/s)."""
    s = measure({"dense": dense, "shrunk": shrunk}, probe)
    up = statistics.median(d / t for d, t in zip(s["dense"].decode_runs, s["shrunk"].decode_runs))
    return up, s["dense"].decode, s["shrunk"].decode
