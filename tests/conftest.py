"""Shared fixtures. Keep minimal; helpers that only one test file needs belong in that file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# no test reaches a dataset hub: WikiText-2 / PTB come from ../shared/data or a test's own files (the datasets
# library, where installed, would otherwise spend ~25 s retrying the network before it gives up)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]

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


@pytest.fixture(scope="session")
def per_layer_folders(tmp_path_factory):
    """case -> (saved per-layer folder, masked-model logits, merged-model logits, merged model), for every
    ``tests.tiny.PER_LAYER_CASES`` (built once per session: the per-layer model tests and the exporter tests)."""
    from compressor.algorithm.merge import merge_and_slice
    from compressor.modeling.save import save_model_folder
    from tests.tiny import PER_LAYER_CASES, logits_of, per_layer_masked, tiny_tokenizer

    out = {}
    for case in PER_LAYER_CASES:
        pm, masks, groups = per_layer_masked(case)
        masked = logits_of(pm)
        merged = merge_and_slice(pm, groups, masks).eval()
        path = tmp_path_factory.mktemp(f"pl-{case}")
        save_model_folder(merged, tiny_tokenizer(), path, force=True)
        out[case] = (path, masked, logits_of(merged), merged)
    return out


_HOLDER = """
import os, sys, time
from compressor.core.lock import output_lock
with output_lock(sys.argv[1]):
    for tmp in sys.argv[2:]:
        os.makedirs(tmp)
    print("locked", flush=True)
    time.sleep(300)
"""


class _Holder:
    """A real second process holding the lock of ``out`` (and creating ``tmps`` while it holds it)."""

    def __init__(self, out: Path, *tmps: Path):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out), *map(str, tmps)], stdout=subprocess.PIPE,
                                  text=True, env=env)
        line = self.p.stdout.readline() if self.p.stdout else ""
        assert line.strip() == "locked", f"the lock holder did not start (rc={self.p.poll()})"

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)


@pytest.fixture
def holder():
    """Factory: ``holder(out, *tmps)`` starts a process that holds the output lock of ``out`` (the lock tests of
    tests/core and the one-run-per-output tests of tests/cli); killed at the end of the test."""
    made: list[_Holder] = []

    def make(out: Path, *tmps: Path) -> _Holder:
        h = _Holder(out, *tmps)
        made.append(h)
        return h

    yield make
    for h in made:
        h.kill()
