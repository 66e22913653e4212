"""Random tiny configurations of the model families autoprune prunes without code per family:
dense (Llama to Bloom, GPT-2's Conv1D among them) and mixtures of experts with fused 3-D expert
weights. Shared by the tests and ``benchmarks/families.py``."""

import torch

SMALL = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def configs(experts: int = 4) -> dict:
    import transformers as T

    moe = dict(num_experts_per_tok=2, num_key_value_heads=2)
    return {
        "llama": T.LlamaConfig(**SMALL, intermediate_size=64, num_key_value_heads=2),
        "mistral": T.MistralConfig(**SMALL, intermediate_size=64, num_key_value_heads=2),
        "qwen2": T.Qwen2Config(**SMALL, intermediate_size=64, num_key_value_heads=2),
        "opt": T.OPTConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32),
        "gpt_neox": T.GPTNeoXConfig(**SMALL, intermediate_size=64),
        "phi": T.PhiConfig(**SMALL, intermediate_size=64),
        "gemma": T.GemmaConfig(**SMALL, intermediate_size=64, num_key_value_heads=2, head_dim=8),
        "gemma3": T.Gemma3TextConfig(**SMALL, intermediate_size=64, num_key_value_heads=2, head_dim=8,
                                     sliding_window=8, sliding_window_pattern=2),  # per-layer masks and rope
        "phi3": T.Phi3Config(**SMALL, intermediate_size=64, pad_token_id=0),
        "gpt2": T.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64),  # Conv1D
        "gptj": T.GPTJConfig(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4),
        "falcon": T.FalconConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
        "bloom": T.BloomConfig(vocab_size=128, hidden_size=32, n_layer=2, n_head=4),
        "mixtral": T.MixtralConfig(**SMALL, **moe, intermediate_size=64, num_local_experts=experts),
        "qwen2_moe": T.Qwen2MoeConfig(**SMALL, **moe, intermediate_size=64, moe_intermediate_size=32,
                                      shared_expert_intermediate_size=64, num_experts=experts),
        "qwen3_moe": T.Qwen3MoeConfig(**SMALL, **moe, intermediate_size=64, moe_intermediate_size=32,
                                      num_experts=experts, head_dim=8),
        "olmoe": T.OlmoeConfig(**SMALL, **moe, intermediate_size=32, num_experts=experts),
        "gpt_oss": T.GptOssConfig(**SMALL, **moe, intermediate_size=32, num_local_experts=experts, head_dim=8,
                                  sliding_window=8),
    }


FAMILIES = list(configs())
MOE_FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss"]


def tiny_model(family: str, seed: int = 0, **kw):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(configs(**kw)[family]).eval()
