"""Resolve a model name (alias, folder, llama2.c checkpoint or hub id) and load it.

Resolution order for a name:
1. an existing folder: ``from_pretrained`` on it;
   (a folder with no config.json but one ``.gguf`` file loads that file);
2. an existing ``.bin`` file: a llama2.c checkpoint, converted once into the cache;
   an existing ``.gguf`` file: de-quantized by transformers' GGUF reader into a plain model
   (float32 weights, ``save_pretrained`` works and plain transformers reloads it);
3. a known alias (``stories260K``, ``smollm2-135m``): the file under ``$AUTOPRUNE_DATA_DIR/models``,
   then a converted copy in the cache, then the Hub;
4. anything else: a Hugging Face hub id (a short alias such as ``llama-7b`` first maps to one).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from autoprune.errors import UserError
from autoprune.models import llama2c

# llama2.c checkpoints: alias -> (hub repo, checkpoint file, tokenizer file)
LLAMA2C_ALIASES: dict[str, tuple[str, str, str]] = {
    "stories260K": ("karpathy/tinyllamas", "stories260K/stories260K.bin", "stories260K/tok512.model"),
}
# GGUF models: alias -> (hub repo, file); the file is read from $AUTOPRUNE_DATA_DIR/models/<alias>/ first
GGUF_ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("bartowski/SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# short names for common hub models
HUB_ALIASES: dict[str, str] = {
    "llama-7b": "meta-llama/Llama-2-7b-hf",
    "llama-13b": "meta-llama/Llama-2-13b-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "opt-125m": "facebook/opt-125m",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    path: Path | None  # local folder the model came from, when there is one


def data_dir() -> Path | None:
    d = os.environ.get("AUTOPRUNE_DATA_DIR")
    return Path(d) if d else None


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOPRUNE_CACHE", Path.home() / ".cache" / "autoprune"))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but no CUDA GPU is available")
    return dev


def _converted(checkpoint: Path, tokenizer: Path) -> Path:
    """The HF folder for a llama2.c checkpoint, converted once and cached by content hash."""
    digest = hashlib.sha256(checkpoint.read_bytes() + tokenizer.read_bytes()).hexdigest()[:16]
    out = cache_dir() / "llama2c" / f"{checkpoint.stem}-{digest}"
    if not (out / "config.json").is_file():
        llama2c.convert(checkpoint, tokenizer, out)
    return out


def _llama2c_tokenizer(checkpoint: Path) -> Path:
    for cand in [checkpoint.with_suffix(".model"), checkpoint.parent / "tokenizer.model",
                 *sorted(checkpoint.parent.glob("tok*.model"))]:
        if cand.is_file():
            return cand
    raise UserError(f"{checkpoint}: no SentencePiece tokenizer (tokenizer.model or tok*.model) beside it")


def _alias_folder(alias: str) -> Path:
    repo, ckpt_file, tok_file = LLAMA2C_ALIASES[alias]
    root = data_dir()
    if root is not None:
        ckpt = root / "models" / ckpt_file
        tok = root / "models" / tok_file
        if ckpt.is_file() and tok.is_file():
            return _converted(ckpt, tok)
    cached = sorted((cache_dir() / "llama2c").glob(f"{Path(ckpt_file).stem}-*/config.json"))
    if cached:
        return cached[0].parent
    try:
        from huggingface_hub import hf_hub_download

        ckpt = Path(hf_hub_download(repo, ckpt_file))
        tok = Path(hf_hub_download(repo, tok_file))
    except Exception as e:  # offline, not found, no permission: all one message
        raise UserError(f"model {alias!r}: not under $AUTOPRUNE_DATA_DIR/models, not cached, "
                        f"and the Hub could not be reached ({type(e).__name__})") from None
    return _converted(ckpt, tok)


def _gguf_file(folder: Path) -> Path | None:
    files = sorted(folder.glob("*.gguf"))
    if len(files) > 1:
        raise UserError(f"{folder}: holds {len(files)} .gguf files; name the one to load")
    return files[0] if files else None


def _gguf_alias(alias: str) -> Path:
    repo, file = GGUF_ALIASES[alias]
    root = data_dir()
    if root is not None and (root / "models" / alias / file).is_file():
        return root / "models" / alias / file
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, file))
    except Exception as e:  # offline, not found, no permission: all one message
        raise UserError(f"model {alias!r}: not under $AUTOPRUNE_DATA_DIR/models/{alias} "
                        f"and the Hub could not be reached ({type(e).__name__})") from None


def resolve(name: str) -> Path | str:
    """A local folder or ``.gguf`` file for ``name``, or the hub id to load."""
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            gguf = _gguf_file(p)
            if gguf is None:
                raise UserError(f"{name}: folder has no config.json (not a Hugging Face model folder) and no .gguf file")
            return _gguf_folder(gguf)
        return p
    if p.is_file():
        if p.suffix == ".gguf":
            return _gguf_folder(p)
        if p.suffix != ".bin":
            raise UserError(f"{name}: a model is a folder, a .gguf file, a llama2.c .bin checkpoint, an alias or a hub id")
        return _converted(p, _llama2c_tokenizer(p))
    if name in LLAMA2C_ALIASES:
        return _alias_folder(name)
    if name in GGUF_ALIASES:
        return _gguf_folder(_gguf_alias(name))
    if name.endswith((".bin", ".gguf", ".safetensors", ".json")) or name.startswith((".", "/", "~")):
        raise UserError(f"{name}: file not found")
    hub_id = HUB_ALIASES.get(name, name)
    if hub_id.count("/") != 1:
        known = ", ".join(sorted([*LLAMA2C_ALIASES, *GGUF_ALIASES, *HUB_ALIASES]))
        raise UserError(f"unknown model {name!r}: not a folder, a file, a known alias ({known}) or an owner/name hub id")
    return hub_id


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _gguf_folder(path: Path) -> Path:
    """The HF folder for a GGUF checkpoint, de-quantized once and cached by content hash."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    out = cache_dir() / "gguf" / h.hexdigest()[:16]  # by content: one conversion, whatever the file is called
    if not (out / "config.json").is_file():
        model, tokenizer = _read_gguf(path)
        tmp = out.with_name(out.name + ".partial")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.replace(out)
    return out


def _read_gguf(path: Path) -> tuple[torch.nn.Module, object]:
    """A GGUF checkpoint de-quantized (float32) into a plain model of its architecture.

    transformers marks a model read from GGUF as quantized, and such a model refuses
    ``save_pretrained``; a model built from the same config holding the de-quantized weights
    saves and reloads like any other."""
    import logging

    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("transformers").setLevel(logging.ERROR)  # its GGUF reader logs every tensor it maps
    try:
        read = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, EOFError, IndexError) as e:
        raise UserError(f"cannot load GGUF file {path}: {_first_line(e)}") from None
    config = read.config
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, key):
            delattr(config, key)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(read.state_dict(), strict=False)  # tied weights appear once
    model.tie_weights()
    return model, tokenizer


def load_model(name: str, dtype: str = "auto", device: str = "auto", spread: bool = False,
               dtype_for: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode, on ``device``; with ``spread``, over every
    visible GPU by accelerate's device map (a model one GPU cannot hold). ``dtype`` auto is the
    checkpoint's on a GPU and float32 on a CPU, judged for ``dtype_for`` (default ``device``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = resolve(name)
    dev = resolve_device(device)
    if dtype == "auto":
        torch_dtype = "auto" if resolve_device(dtype_for or device).type == "cuda" else torch.float32
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise UserError(f"unknown dtype {dtype!r} (choose auto, {', '.join(DTYPES)})")
    try:
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch_dtype, device_map="auto" if spread else None)
        tokenizer = AutoTokenizer.from_pretrained(target)
    except OSError as e:
        where = "folder" if isinstance(target, Path) else "hub id"
        raise UserError(f"cannot load {where} {name!r}: {_first_line(e)}") from None
    if not spread:
        model.to(dev)
    model.eval()
    model.config.use_cache = False
    return LoadedModel(model=model, tokenizer=tokenizer, name=name,
                       path=target if isinstance(target, Path) else None)
