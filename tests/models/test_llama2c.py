import struct

import pytest

from autoprune.errors import UserError
from autoprune.models.llama2c import read_checkpoint


def test_greedy_continuation_matches_llama2c(stories):
    tok = stories.tokenizer
    ids = tok("Once upon a time", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    out = stories.model.generate(ids, max_new_tokens=40, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert text.startswith(", there was a little girl named Lily. She loved to play outside in the park.")


def test_config_matches_header(stories):
    c = stories.model.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (64, 172, 5)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (8, 4, 512)
    assert c.tie_word_embeddings
    assert stories.model.lm_head.weight.data_ptr() == stories.model.model.embed_tokens.weight.data_ptr()


def test_heldout_window_perplexity(stories):
    """Stories 500-999, BOS before each, non-overlapping 256-token windows: about 5.5."""
    from autoprune.evaluation import perplexity
    from autoprune.jobs.common import evaluation_windows

    windows = evaluation_windows(stories.tokenizer, "tinystories:500-999", 256)
    assert perplexity(stories.model, windows, batch_size=32).perplexity == pytest.approx(5.5, abs=0.1)


def test_truncated_and_bad_headers(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="too short"):
        read_checkpoint(bad)
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="not a llama2.c checkpoint"):
        read_checkpoint(bad)
    short = tmp_path / "short.bin"
    short.write_bytes(struct.pack("<7i", 64, 172, 5, 8, 4, 512, 512) + b"\x00" * 400)
    with pytest.raises(UserError, match="truncated"):
        read_checkpoint(short)
