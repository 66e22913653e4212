"""Read karpathy's llama2.c legacy ``.bin`` checkpoints into a Hugging Face ``LlamaForCausalLM``.

File layout (llama2.c ``export.py --version 0``, all little-endian):
    header   7 x int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
             (vocab_size < 0 means the classifier is stored separately, not tied)
    float32  tok_embeddings (V, D)
             rms_att (L, D), wq (L, H*hd, D), wk (L, Hkv*hd, D), wv (L, Hkv*hd, D), wo (L, D, H*hd)
             rms_ffn (L, D), w1 (L, F, D), w2 (L, D, F), w3 (L, F, D)
             rms_final (D), freq_cis_real (S, hd/2), freq_cis_imag (S, hd/2), [wcls (V, D)]

llama2.c rotates interleaved pairs (x0, x1), (x2, x3), ...; Hugging Face Llama rotates the
two halves of each head. The q and k rows are permuted per head so both give the same output.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import torch

from autoprune.errors import UserError

HEADER = struct.Struct("<7i")


def _permute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved-pair RoPE rows -> rotate-half rows, per head (as HF's convert script)."""
    rows, cols = w.shape
    # (n_heads, hd/2, 2, cols) -> (n_heads, 2, hd/2, cols)
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return (header, HF-named state dict) of a llama2.c legacy checkpoint."""
    raw = path.read_bytes()
    if len(raw) < HEADER.size:
        raise UserError(f"{path}: too short to be a llama2.c checkpoint")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = HEADER.unpack_from(raw)
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len) <= 0 or dim % n_heads:
        raise UserError(f"{path}: not a llama2.c checkpoint (header {dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len})")
    hd = dim // n_heads
    kv_dim = n_kv * hd
    floats = torch.frombuffer(bytearray(raw[HEADER.size:]), dtype=torch.float32)
    offset = 0

    def take(*shape: int) -> torch.Tensor:
        nonlocal offset
        n = 1
        for s in shape:
            n *= s
        if offset + n > floats.numel():
            raise UserError(f"{path}: truncated llama2.c checkpoint")
        t = floats[offset:offset + n].view(*shape).clone()
        offset += n
        return t

    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, dim, dim)
    wk = take(n_layers, kv_dim, dim)
    wv = take(n_layers, kv_dim, dim)
    wo = take(n_layers, dim, dim)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    take(seq_len, hd // 2)  # freq_cis_real: recomputed by the HF model
    take(seq_len, hd // 2)  # freq_cis_imag
    wcls = emb if shared else take(vocab, dim)

    sd = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final, "lm_head.weight": wcls}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = rms_att[i]
        sd[p + "post_attention_layernorm.weight"] = rms_ffn[i]
        sd[p + "self_attn.q_proj.weight"] = _permute_rope(wq[i], n_heads)
        sd[p + "self_attn.k_proj.weight"] = _permute_rope(wk[i], n_kv)
        sd[p + "self_attn.v_proj.weight"] = wv[i]
        sd[p + "self_attn.o_proj.weight"] = wo[i]
        sd[p + "mlp.gate_proj.weight"] = w1[i]
        sd[p + "mlp.down_proj.weight"] = w2[i]
        sd[p + "mlp.up_proj.weight"] = w3[i]
    header = dict(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads,
                  n_kv_heads=n_kv, vocab_size=vocab, seq_len=seq_len, shared_classifier=shared)
    return header, sd


def convert(checkpoint: Path, tokenizer_model: Path, out_dir: Path) -> Path:
    """Write a ``from_pretrained`` folder (config, safetensors, tokenizer) for a llama2.c checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    if not tokenizer_model.is_file():
        raise UserError(f"{tokenizer_model}: SentencePiece tokenizer not found next to the checkpoint")
    h, sd = read_checkpoint(checkpoint)
    config = LlamaConfig(
        vocab_size=h["vocab_size"], hidden_size=h["dim"], intermediate_size=h["hidden_dim"],
        num_hidden_layers=h["n_layers"], num_attention_heads=h["n_heads"],
        num_key_value_heads=h["n_kv_heads"], max_position_embeddings=h["seq_len"],
        rms_norm_eps=1e-5, tie_word_embeddings=h["shared_classifier"],
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(sd, assign=True, strict=not h["shared_classifier"])
    if h["shared_classifier"]:
        model.tie_weights()
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    # LlamaTokenizer must be built from a folder holding ``tokenizer.model``.
    shutil.copyfile(tokenizer_model, tmp / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(tmp, legacy=False, add_bos_token=True, add_eos_token=False)
    tok.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
