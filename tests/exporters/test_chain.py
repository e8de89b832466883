"""The whole chain on a tiny random GQA llama: prune -> save -> ONNX export -> ORT logits == merged logits -> bench."""
from __future__ import annotations

import numpy as np
import torch

from tests.tiny import tiny_model, tiny_text, tiny_tokenizer


def test_prune_save_export_ort_bench(tmp_path):
    from compressor import PruneConfig, prune, save_model_folder
    from compressor.core.ort import ort_session
    from exporters import bench, export_onnx
    from exporters.onnx.decode import OrtDecoder

    tok = tiny_tokenizer()
    dense = tiny_model("llama-gqa")  # 6 query heads over 2 KV heads, head_dim 8, hidden 96
    cfg = PruneConfig(ratio=0.5, steps=4, prune_every=2, seq_len=32, batch_size=2, eval_windows=1, eval_seq_len=64,
                      lr=1e-3)
    res = prune(dense, cfg, [tiny_text(2000)], tokenizer=tok)
    merged = res.model.eval()
    mc = merged.config
    assert mc.num_key_value_heads == 2 and mc.num_attention_heads < 6 and mc.num_attention_heads % 2 == 0
    assert mc.intermediate_size < 40

    hf = save_model_folder(merged, tok, tmp_path / "hf", report=res.report)
    out = export_onnx(hf, tmp_path / "onnx")  # validated: fp32 parity and greedy generate through optimum
    assert out.validated and out.report["validation"]["parity"]["passed"]
    assert out.report["ort_config_adjustment"] is not None  # head-pruned: head_dim != hidden // heads

    # ORT logits of the exported graph == the merged PyTorch model's, prefill then one cached step
    ids = np.random.default_rng(0).integers(0, mc.vocab_size, size=(2, 10), dtype=np.int64)
    dec = OrtDecoder(ort_session(out.path / "model.onnx", threads=1), mc.num_key_value_heads, mc.head_dim)
    ort_logits, _ = dec.step(ids[:, :9], np.ones((2, 9), np.int64))
    ort_next, _ = dec.step(ids[:, 9:], np.ones((2, 10), np.int64))
    with torch.no_grad():
        pt = merged(input_ids=torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(ort_logits, pt[:, :9], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_next, pt[:, 9:], atol=1e-4, rtol=0)

    rep = bench(out.path, runs=2, warmup=0, prompt_lengths=(8,), decode_batches=(1,), context=4, threads=1,
                measure_memory=False, write=False)
    assert set(rep.model.latency) == {"prefill_8", "decode_b1"}
    assert all(v["median_ms"] > 0 for v in rep.model.latency.values())
    # the bench counts the merged model's parameters from the exported (ORT-adjusted) config
    assert rep.model.params == sum(p.numel() for p in merged.parameters())
    assert rep.model.config["hidden"] == mc.hidden_size
