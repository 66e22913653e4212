"""Apply a policy to a model: one-shot (statistics from the dense model, computed once and
reused for any number of policies) or sequential (block i calibrated on the outputs of the
already pruned blocks before it, as Wanda and SparseGPT do).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from autoprune.errors import UserError
from autoprune.models.layers import Unit, blocks_linears, decoder_blocks
from autoprune.pruning.allocation import block_ratios, layer_ratios
from autoprune.pruning.masks import make_mask
from autoprune.pruning.metrics import needs_gradients, needs_hessian, resolve_metric
from autoprune.pruning.policy import Policy
from autoprune.pruning.admm import admm_update
from autoprune.pruning.sparsegpt import sparsegpt_with_mask
from autoprune.pruning.stats import LayerStats, StatsCollector


@dataclass
class CalibrationStats:
    """Statistics of the dense model on the calibration windows, keyed by full linear name."""

    layers: dict[str, LayerStats]
    grads: dict[str, Tensor] | None = None  # root-mean-square gradient, weight-shaped
    windows: int = 0
    seconds: float = 0.0

    @property
    def X(self) -> dict[str, Tensor]:
        return {name: st.X for name, st in self.layers.items()}


@dataclass
class PruneReport:
    block_ratios: list[float]
    layer_sparsity: dict[str, float]  # full linear name -> fraction of zero weights
    layer_sizes: dict[str, int]  # full linear name -> number of weights
    seconds: float

    @property
    def sparsity(self) -> float:
        return global_sparsity_of(self.layer_sparsity, self.layer_sizes)


def global_sparsity_of(layer_sparsity: dict[str, float], sizes: dict[str, int]) -> float:
    total = sum(sizes.values())
    return sum(layer_sparsity[n] * sizes[n] for n in layer_sparsity) / max(total, 1)


def _zeros(bls: list[dict[str, Unit]]) -> tuple[dict[str, float], dict[str, int]]:
    """(fraction of exactly-zero weights, number of weights) of every linear, by full name."""
    linears = {n: lin for bl in bls for n, lin in bl.items()}
    if not linears:
        return {}, {}
    zeros = torch.stack([(lin.weight == 0).sum() for lin in linears.values()]).tolist()  # one device sync
    sizes = {n: lin.weight.numel() for n, lin in linears.items()}
    return {n: z / sizes[n] for n, z in zip(linears, zeros)}, sizes


def model_sparsity(model: nn.Module) -> tuple[float, dict[str, float]]:
    """(global, per-layer) fraction of exactly-zero weights in the prunable linears."""
    per_layer, sizes = _zeros(blocks_linears(model))
    return global_sparsity_of(per_layer, sizes), per_layer


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


GRADIENT_TOKENS = 4096  # calibration tokens the gradient statistic G is averaged over (a backward pass per window)


Report = Callable[[str, int, int], None]  # (step, done, total): progress of a long step


def collect_stats(model: nn.Module, windows: Tensor, hessian: bool = False, gradients: bool = False,
                  batch_size: int = 8, progress: bool = True, router_weighted: bool = False,
                  report: Report | None = None) -> CalibrationStats:
    """One-shot statistics of the dense model on ``windows`` (n, seqlen); G on the first
    ``GRADIENT_TOKENS`` of them."""
    t0 = time.perf_counter()
    linears = {n: lin for bl in blocks_linears(model) for n, lin in bl.items()}
    dev = _device(model)
    batches = windows.split(batch_size)
    with torch.no_grad(), StatsCollector(linears, hessian=hessian, router_weighted=router_weighted) as col:
        for i, batch in enumerate(tqdm(batches, desc="statistics", disable=not progress, leave=False)):
            if report is not None:
                report("statistics", i, len(batches))
            model(batch.to(dev), use_cache=False)
    grads = collect_gradients(model, gradient_windows(windows), batch_size, progress, report) if gradients else None
    return CalibrationStats(col.stats, grads, len(windows), time.perf_counter() - t0)


def gradient_windows(windows: Tensor) -> Tensor:
    return windows[:max(1, min(len(windows), GRADIENT_TOKENS // windows.shape[1]))]


def collect_gradients(model: nn.Module, windows: Tensor, batch_size: int = 8, progress: bool = True,
                      report: Report | None = None) -> dict[str, Tensor]:
    """G = sqrt(mean over windows of (dL/dW)^2) for every prunable unit (L: mean token NLL)."""
    linears = {n: lin for bl in blocks_linears(model) for n, lin in bl.items()}
    sq = {n: torch.zeros_like(lin.weight, dtype=torch.float32) for n, lin in linears.items()}
    params = {id(lin.param): lin.param for lin in linears.values()}.values()  # experts share one
    dev = _device(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            for i, window in enumerate(tqdm(windows.split(1), desc="gradients", disable=not progress, leave=False)):
                if report is not None:
                    report("gradients", i, len(windows))
                window = window.to(dev)
                model(window, labels=window, use_cache=False).loss.backward()
                for n, lin in linears.items():
                    sq[n] += lin.view(lin.param.grad).float() ** 2
                for p in params:
                    p.grad = None
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    return {n: (s / len(windows)).sqrt().to(linears[n].weight.dtype) for n, s in sq.items()}


STACK_ELEMENTS = 1 << 26  # weights scored in one stack of same-shaped layers (bounds the extra memory)


def _check_nm(shape: torch.Size, policy: Policy) -> None:
    nm = policy.nm
    if nm is not None and shape[-1] % nm[1]:
        raise UserError(f"pattern {policy.pattern} needs input sizes that are multiples of {nm[1]}; "
                        f"a layer has {shape[-1]} inputs")


def _mask(W: Tensor, ratio: float, policy: Policy, X: Tensor, G: Tensor | None, H: Tensor | None = None) -> Tensor:
    """The keep-mask of one layer (out, in) or of a stack of same-shaped layers (L, out, in)."""
    scores = resolve_metric(policy.metric)(W.float(), X.to(W.device), None if G is None else G.to(W.device).float(),
                                           None if H is None else H.to(W.device))
    return make_mask(scores, ratio, policy.nm)


def prune_linear(lin: Unit, ratio: float, policy: Policy, st: LayerStats, G: Tensor | None) -> None:
    """Prune one unit in place to ``ratio`` under ``policy`` with its statistics. A unit no
    calibration token reached (an expert the router never chose) has nothing to reconstruct from:
    it is masked by its metric with X = 1 (SparseGPT's mask: by magnitude) and not updated."""
    if ratio <= 0:
        return
    W = lin.weight.data
    _check_nm(W.shape, policy)
    if st.tokens == 0 and policy.update != "none":
        policy = replace(policy, metric="magnitude" if policy.metric == "sparsegpt" else policy.metric, update="none")
    mask = None if policy.metric == "sparsegpt" else _mask(W, ratio, policy, st.X, G, st.hessian_channels())
    if policy.update == "none":
        W.mul_(mask)
        return
    H = st.H.to(W.device)
    if policy.update == "sparsegpt" or mask is None:  # OBS reconstructs; with metric sparsegpt it also chooses
        reconstructed, mask = sparsegpt_with_mask(W, H, ratio, policy.nm, mask)
    if policy.update == "admm":
        reconstructed = admm_update(W, H, mask)
    W.copy_(reconstructed.to(W.dtype))


def prune_stack(lins: list[Unit], ratio: float, policy: Policy, X: list[Tensor], G: list[Tensor] | None,
                H: list[Tensor] | None = None) -> None:
    """Prune same-shaped layers in place to one ``ratio`` (no weight update), scored as one stack:
    one metric call and one top-k for all of them, each layer getting the mask it would alone."""
    if ratio <= 0:
        return
    W = torch.stack([lin.weight.data for lin in lins])
    _check_nm(W.shape, policy)
    stacked = _mask(W, ratio, policy, torch.stack(X), None if G is None else torch.stack(G),
                    None if H is None else torch.stack(H))
    for lin, mask in zip(lins, stacked):
        lin.weight.data.mul_(mask)


def _finish(bls: list[dict[str, Unit]], ratios: list[float], t0: float) -> PruneReport:
    per_layer, sizes = _zeros(bls)
    return PruneReport(ratios, per_layer, sizes, time.perf_counter() - t0)


class LayerCache:
    """Layers pruned one-shot with a weight update, by (layer, mask, update, pattern, pruned count),
    least recently used dropped past ``max_bytes``: a candidate that changes a few layers' ratios
    reconstructs only those (EvoPress's level database, filled as a search visits it)."""

    def __init__(self, max_bytes: int = 2 << 30):
        from collections import OrderedDict

        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._items: OrderedDict[tuple, Tensor] = OrderedDict()

    def get(self, key: tuple) -> Tensor | None:
        W = self._items.get(key)
        if W is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return W

    def put(self, key: tuple, W: Tensor) -> None:
        self.misses += 1
        size = W.numel() * W.element_size()
        if size > self.max_bytes:
            return
        self._items[key] = W.clone()
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


@torch.no_grad()
def apply_policy(model: nn.Module, policy: Policy, stats: CalibrationStats,
                 cache: LayerCache | None = None) -> PruneReport:
    """One-shot: prune every layer with statistics from the dense model (fast, for proxies).
    With a weight update, ``cache`` keeps reconstructed layers for later candidates."""
    t0 = time.perf_counter()
    bls = blocks_linears(model)
    ratios = block_ratios(policy, bls, stats.X if policy.allocation == "owl" else None)
    per_layer = layer_ratios(policy, bls, ratios)
    linears = {n: lin for bl in bls for n, lin in bl.items()}
    grads = stats.grads
    if policy.update != "none":
        for name, lin in linears.items():
            key = (name, policy.metric, policy.update, policy.pattern, round(per_layer[name] * lin.weight.numel()))
            held = cache.get(key) if cache is not None else None
            if held is not None:
                lin.weight.data.copy_(held)
                continue
            prune_linear(lin, per_layer[name], policy, stats.layers[name], grads[name] if grads else None)
            if cache is not None:
                cache.put(key, lin.weight.data)
        return _finish(bls, ratios, t0)
    stacks: dict[tuple, list[str]] = {}  # layers that can be scored together
    for name, lin in linears.items():
        w = lin.weight
        stacks.setdefault((tuple(w.shape), w.dtype, w.device, per_layer[name]), []).append(name)
    use_g = bool(grads) and needs_gradients(policy.metric)  # G is stacked only for metrics that read it
    use_h = needs_hessian(policy.metric)
    for (shape, *_, ratio), names in stacks.items():
        step = max(1, STACK_ELEMENTS // math.prod(shape))
        for i in range(0, len(names), step):
            chunk = names[i:i + step]
            prune_stack([linears[n] for n in chunk], ratio, policy, [stats.layers[n].X for n in chunk],
                        [grads[n] for n in chunk] if use_g else None,
                        [stats.layers[n].hessian_channels() for n in chunk] if use_h else None)
    return _finish(bls, ratios, t0)


class _Captured(Exception):
    pass


@torch.no_grad()
def capture_block_inputs(model: nn.Module, block: nn.Module, windows: Tensor, batch_size: int) -> list[list]:
    """Per batch, ``[hidden, args, kwargs, per_block]``: the hidden states entering ``block`` (the
    first decoder block) with its other arguments, and every block's own (args, kwargs), which
    differ where layers differ (Gemma 3's and GPT-OSS's sliding-window and full-attention layers
    take other masks and rotary embeddings). Nothing runs past the embeddings: every block's
    forward only records its arguments and passes its input on. ``block_args`` picks a block's."""
    _, blocks = decoder_blocks(model)
    if blocks[0] is not block:
        raise ValueError("capture_block_inputs starts at the first decoder block")
    captured: list[list] = []

    def recorder(i: int):
        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if i == 0:
                captured.append([hidden, args[1:], kwargs, []])
            captured[-1][3].append((args[1:], kwargs))
            if i == len(blocks) - 1:
                raise _Captured
            return hidden
        return forward

    for i, b in enumerate(blocks):
        b.forward = recorder(i)  # an instance attribute shadows the class's forward
    dev = _device(model)
    try:
        for batch in windows.split(batch_size):
            try:
                model(batch.to(dev), use_cache=False)
            except _Captured:
                pass
            except Exception:  # noqa: BLE001 - a model that does more between blocks than pass hidden states on
                if not captured or len(captured[-1][3]) == len(blocks):
                    raise  # later blocks fall back to the first block's arguments (block_args)
    finally:
        for b in blocks:
            del b.forward
    return captured


def block_args(item: list, i: int) -> tuple[tuple, dict]:
    """Block ``i``'s (args, kwargs) from a ``capture_block_inputs`` item."""
    own = item[3] if len(item) > 3 else ()
    return own[i] if i < len(own) else (item[1], item[2])


def run_block(block: nn.Module, i: int, inputs: list[list]) -> None:
    """Block ``i`` on every batch: each item's hidden states become the block's outputs."""
    for item in inputs:
        args, kwargs = block_args(item, i)
        out = block(item[0], *args, **kwargs)
        item[0] = out[0] if isinstance(out, tuple) else out


def _to(x, device: torch.device):
    """``x`` (tensors in nested tuples, lists and dicts, as a block's captured inputs) on ``device``."""
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


@contextmanager
def _on(block: nn.Module, device: torch.device | None):
    """``block`` on ``device`` for the duration (back where it was after); None: where it is."""
    home = _device(block)
    if device is None or device == home:
        yield
        return
    block.to(device)
    try:
        yield
    finally:
        block.to(home)


@torch.no_grad()
def dense_blockwise(model: nn.Module, windows: Tensor, batch_size: int = 8, hessian: bool = False,
                    store: torch.device | str | None = None, offload_to: torch.device | str | None = None,
                    router_weighted: bool = False) -> dict[str, LayerStats]:
    """Statistics of every prunable unit of the dense model, one block at a time (each block run
    on the dense outputs of the one before, with its own masks and rotary embeddings). Each block's
    statistics go to ``store`` once gathered (default: they stay where they were computed; ``"cpu"``
    for host memory when a model's Hessians outgrow the device). With ``offload_to`` only the block
    at hand is on that device (see ``prune_sequential``)."""
    _, blocks = decoder_blocks(model)
    dev = torch.device(offload_to) if offload_to is not None else None
    inputs = capture_block_inputs(model, blocks[0], windows, batch_size)
    if dev is not None:
        inputs = _to(inputs, dev)
    out = {}
    for i, (block, linears) in enumerate(zip(blocks, blocks_linears(model))):
        with _on(block, dev):
            with StatsCollector(linears, hessian=hessian, router_weighted=router_weighted) as col:
                run_block(block, i, inputs)  # the dense outputs become the next block's inputs
        out.update({name: st if store is None else st.to(store) for name, st in col.stats.items()})
    return out


def collect_hessians(model: nn.Module, windows: Tensor, batch_size: int = 8,
                     store: torch.device | str | None = None) -> dict[str, Tensor]:
    """H = 2/n X X^T of every prunable unit of the dense model (see ``dense_blockwise``)."""
    return {n: st.H for n, st in dense_blockwise(model, windows, batch_size, True, store).items()}


def hessian_store(model: nn.Module, share: float = 0.25) -> str | None:
    """Where one-shot Hessians live: host memory when, on a GPU, they would take more than ``share``
    of its memory (a 7B Llama's take 28 GB in float32), else the model's device (None)."""
    dev = _device(model)
    if dev.type != "cuda":
        return None
    size = sum(lin.in_features ** 2 * 4 for bl in blocks_linears(model) for lin in bl.values())
    return "cpu" if size > share * torch.cuda.get_device_properties(dev).total_memory else None


@torch.no_grad()
def prune_sequential(model: nn.Module, policy: Policy, windows: Tensor, batch_size: int = 8,
                     progress: bool = True, grads: dict[str, Tensor] | None = None,
                     offload_to: torch.device | str | None = None, router_weighted: bool = False) -> PruneReport:
    """The full protocol: prune block by block, each calibrated on the pruned blocks' outputs.

    Allocation (OWL) and gradient statistics come from the dense model, as in OWL and GBLM.
    ``grads`` are the dense model's gradient statistics on ``windows`` when the caller already
    has them (a proxy evaluator does); otherwise they are collected here if the metric reads G.
    With ``offload_to`` (a device) the model stays where it is (host memory) and only the block
    being pruned, its inputs and its statistics are on that device, as the Wanda and SparseGPT
    drivers prune models larger than the device. ``router_weighted``: experts' statistics weigh
    each routed token by its router weight (MoE-Pruner).
    """
    t0 = time.perf_counter()
    _, blocks = decoder_blocks(model)
    bls = blocks_linears(model)
    dev = torch.device(offload_to) if offload_to is not None else None
    if not needs_gradients(policy.metric):
        grads = None
    elif grads is None:
        grads = collect_gradients(model, gradient_windows(windows), batch_size, progress)
    X = None
    if policy.allocation == "owl":
        X = {n: st.X for n, st in dense_blockwise(model, windows, batch_size, offload_to=dev,
                                                  router_weighted=router_weighted).items()}
    ratios = block_ratios(policy, bls, X)
    per_layer = layer_ratios(policy, bls, ratios)
    inputs = capture_block_inputs(model, blocks[0], windows, batch_size)
    if dev is not None:
        inputs = _to(inputs, dev)
    hessian = policy.update != "none" or needs_hessian(policy.metric)
    for i in tqdm(range(len(blocks)), desc="pruning blocks", disable=not progress, leave=False):
        with _on(blocks[i], dev):
            with StatsCollector(bls[i], hessian=hessian, router_weighted=router_weighted) as col:
                run_block(blocks[i], i, [list(x) for x in inputs])  # statistics only; outputs discarded
            for name, lin in bls[i].items():
                prune_linear(lin, per_layer[name], policy, col.stats[name], grads[name] if grads else None)
            del col
            run_block(blocks[i], i, inputs)  # the pruned block's outputs feed the next block
    return _finish(bls, ratios, t0)
