"""Shared fixtures. Keep minimal; helpers that only one test file needs belong in that file."""
from __future__ import annotations

import os

import pytest

# no test reaches a dataset hub: WikiText-2 / PTB come from ../shared/data or a test's own files (the datasets
# library, where installed, would otherwise spend ~25 s retrying the network before it gives up)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

#: Tiny LLaMA shapes for the exporter tests: (hidden, heads, kv heads, head_dim, intermediate).
#: ``pruned-*`` have head_dim != hidden // heads, as head pruning leaves them.
EXPORT_CASES = {
    "dense-mha": (64, 4, 4, 16, 128),
    "dense-gqa": (64, 4, 2, 16, 96),
    "pruned-mha": (64, 2, 2, 16, 128),
    "pruned-gqa": (64, 4, 2, 8, 40),
}


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """Factory: ``tiny_llama_dir(case)`` -> a saved HF folder (LlamaForCausalLM + word-level tokenizer).

    ``case`` is a key of :data:`EXPORT_CASES`; folders are built once per session. 2 layers, vocab 200.
    """
    made: dict[str, object] = {}

    def make(case: str):
        if case in made:
            return made[case]
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from tests.tiny import tiny_tokenizer

        hidden, heads, kv, hd, inter = EXPORT_CASES[case]
        tok = tiny_tokenizer(200)
        cfg = LlamaConfig(vocab_size=200, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
                          head_dim=hd, intermediate_size=inter, num_hidden_layers=2, max_position_embeddings=1024,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, initializer_range=0.1, tie_word_embeddings=False)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
        path = tmp_path_factory.mktemp(f"hf-{case}")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        made[case] = path
        return path

    return make
