"""Shared setup of the GP benchmarks: stories260K, calibration/proxy/evaluation windows, the full protocol."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from autoprune.evaluation.perplexity import perplexity
from autoprune.evaluation.proxy import ProxyEvaluator, ProxyResult
from autoprune.jobs.common import calibration_windows, evaluation_windows
from autoprune.models import load_model
from autoprune.pruning.engine import collect_stats, prune_sequential
from autoprune.pruning.policy import Policy
from autoprune.search.base import Candidate


@dataclass
class Setup:
    model: torch.nn.Module
    calib: torch.Tensor  # 64 x 256 tokens of tinystories:0-499, seed 0 (the sequential protocol's calibration)
    proxy: torch.Tensor  # proxy windows from tinystories:0-499, seed 1 (search selects on these only)
    select: torch.Tensor  # 32 x 256 tokens of tinystories:0-499, seed 2: the sequential protocol ranks finalists
    heldout: torch.Tensor  # every 256-token window of tinystories:500-999
    evaluator: ProxyEvaluator  # fidelity in proxy batches of ``proxy_batch`` windows
    stats_seconds: float


def setup(proxy_windows: int = 32, objective: str = "kl", threads: int = 1, proxy_batch: int = 2,
          device: str = "cpu") -> Setup:
    torch.set_num_threads(threads)
    lm = load_model("stories260K", dtype="float32", device=device)
    calib = calibration_windows(lm.tokenizer, "tinystories:0-499", 64, 256, 0)
    proxy = calibration_windows(lm.tokenizer, "tinystories:0-499", proxy_windows, 256, 1)
    select = calibration_windows(lm.tokenizer, "tinystories:0-499", 32, 256, 2)
    heldout = evaluation_windows(lm.tokenizer, "tinystories:500-999", 256)
    t0 = time.perf_counter()
    stats = collect_stats(lm.model, calib, gradients=True, progress=False)
    ev = ProxyEvaluator(lm.model, stats, proxy, objective, batch_size=8, proxy_batch=proxy_batch, calib_windows=calib)
    return Setup(lm.model, calib, proxy, select, heldout, ev, time.perf_counter() - t0)


def evaluate_candidates(ev: ProxyEvaluator, cands: list[Candidate], per_forward: int = 1) -> list[ProxyResult]:
    """Results of ``cands`` in order; one-shot candidates of one fidelity go ``per_forward`` to a forward pass."""
    out: list[ProxyResult | None] = [None] * len(cands)
    groups: dict[int | None, list[int]] = {}
    for i, c in enumerate(cands):
        if c.sequential or per_forward <= 1:
            out[i] = ev.evaluate(c.policy, c.batches, c.sequential)
        else:
            groups.setdefault(c.batches, []).append(i)
    for batches, idx in groups.items():
        for chunk in (idx[j:j + per_forward] for j in range(0, len(idx), per_forward)):
            for i, res in zip(chunk, ev.evaluate_many([cands[i].policy for i in chunk], batches)):
                out[i] = res
    return out


def pruned(s: Setup, policy: Policy) -> torch.nn.Module:
    """A fresh copy of the dense model, pruned by the full sequential protocol."""
    model = copy.deepcopy(s.model)
    prune_sequential(model, policy, s.calib, batch_size=8, progress=False)
    return model


def full_protocol(s: Setup, policy: Policy) -> float:
    """Perplexity on tinystories:500-999 after sequential pruning of a fresh copy of the dense model."""
    return perplexity(pruned(s, policy), s.heldout, batch_size=8).perplexity
