"""GGUF models: SmolLM2-135M (a real 30-block LLM, 4-bit GGUF) de-quantized into a plain model that
saves and reloads; corrupt and unsupported files as one clear line."""

from __future__ import annotations

import pytest
import torch

from autoprune.errors import UserError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    from autoprune.models import load_model

    return load_model("smollm2-135m", dtype="float32", device="cpu")


def test_smollm2_loads_as_a_plain_llama_and_answers(smol):
    from autoprune.models import decoder_blocks, prunable_linears

    model, tok = smol.model, smol.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM" and sum(p.numel() for p in model.parameters()) == 134_515_008
    _, blocks = decoder_blocks(model)
    assert len(blocks) == 30 and len(prunable_linears(blocks[0])) == 7
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:]).startswith(" Paris")


def test_saved_folder_reloads_with_plain_transformers(smol, tmp_path):
    from transformers import AutoModelForCausalLM

    smol.model.save_pretrained(tmp_path)
    smol.tokenizer.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3575, 282]])
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, smol.model(ids).logits, atol=1e-5)


def test_a_folder_holding_one_gguf_file_and_the_file_itself(tmp_path):
    import os

    from autoprune.models.loading import GGUF_ALIASES, resolve

    src = os.path.join(os.environ["AUTOPRUNE_DATA_DIR"], "models", "smollm2-135m", GGUF_ALIASES["smollm2-135m"][1])
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.gguf").symlink_to(src)
    assert resolve(str(folder)) == resolve(src) == resolve("smollm2-135m")  # one cached conversion
    (folder / "other.gguf").symlink_to(src)
    with pytest.raises(UserError, match="holds 2 .gguf files"):
        resolve(str(folder))


def _gguf(path, arch: str) -> None:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_bad_gguf_files_are_one_line_and_exit_2(tmp_path, capsys):
    from autoprune.cli import main

    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"not a gguf file at all" * 10)
    unknown = tmp_path / "foo.gguf"
    _gguf(unknown, "foo")
    for path, match in ((corrupt, "GGUF magic"), (unknown, "architecture foo is not supported")):
        assert main(["eval", "--model", str(path), "--data", "tinystories:500-999", "--windows", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and match in err, err
