"""Your own model: a local Hugging Face folder and a hub id served from a pre-filled Hugging Face cache with the hub
offline (the loading path a user online takes after the download), both through ``load_model``, then pruned."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from compressor import PruneConfig, load_model, prune
from compressor.core.errors import ModelLoadError
from tests.tiny import tiny_model, tiny_text, tiny_tokenizer

HUB_ID = "tiny-org/tiny-llama"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo_id: str, folder: Path, revision: str = REVISION) -> Path:
    """Write ``folder``'s files into ``cache`` as ``huggingface_hub`` lays out a download: the content under
    ``models--ORG--NAME/blobs/<sha256>``, ``snapshots/<revision>/<file>`` a relative link to its blob, and
    ``refs/main`` holding the revision. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache under ``tmp_path`` with the hub offline.

    ``huggingface_hub`` reads ``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` into ``huggingface_hub.constants``
    once, at import (before this test runs), and transformers and huggingface_hub read those module attributes at
    each call: the environment is set for any code that reads it afresh, the attributes for the rest."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for var, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1"),
                       ("TRANSFORMERS_OFFLINE", "1")):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    import transformers.utils.hub as tf_hub

    if hasattr(tf_hub, "_is_offline_mode"):  # transformers 4.x keeps its own copy, also read at import
        monkeypatch.setattr(tf_hub, "_is_offline_mode", True)
    if hasattr(tf_hub, "TRANSFORMERS_CACHE"):  # and its default cache_dir, read at import too
        monkeypatch.setattr(tf_hub, "TRANSFORMERS_CACHE", str(cache))
    assert constants.HF_HUB_OFFLINE  # huggingface_hub 0.x has no is_offline_mode()
    return cache


@pytest.fixture
def own_model(tmp_path, monkeypatch, offline_hub):
    """A tiny random LLaMA and its tokenizer saved as a user's folder (``tmp_path/my-llama``) and as ``HUB_ID`` in
    the offline cache; the current folder is ``tmp_path``, which has no folder named ``tiny-org``."""
    folder = tmp_path / "my-llama"
    tok = tiny_tokenizer()
    model = tiny_model("llama-mha", layers=2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    fill_hub_cache(offline_hub, HUB_ID, folder)
    monkeypatch.chdir(tmp_path)
    return folder


def test_the_cache_is_a_valid_hub_cache(own_model, offline_hub):
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    repos = {r.repo_id: r for r in scan_cache_dir(offline_hub).repos}
    assert set(repos) == {HUB_ID}
    assert {rev.commit_hash for rev in repos[HUB_ID].revisions} == {REVISION}
    got = try_to_load_from_cache(HUB_ID, "config.json")  # the default cache, as transformers resolves it
    assert isinstance(got, str) and Path(got).read_bytes() == (own_model / "config.json").read_bytes()


def test_local_folder_and_hub_id_load_the_same_model(own_model):
    m_dir, tok_dir, src_dir = load_model(str(own_model))
    m_hub, tok_hub, src_hub = load_model(HUB_ID)
    assert (src_dir.kind, src_hub.kind) == ("folder", "hub")
    assert src_hub.spec == HUB_ID
    text = "w1 w2 w3 w4 w5 w6 w7 w8"
    assert tok_dir(text).input_ids == tok_hub(text).input_ids
    ids = torch.tensor([tok_dir(text).input_ids])
    with torch.no_grad():
        a, b = m_dir(ids).logits, m_hub(ids).logits
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.zeros_like(a))


def test_hub_id_not_in_the_offline_cache_is_a_model_load_error(own_model):
    with pytest.raises(ModelLoadError, match="'tiny-org/not-downloaded'"):
        load_model("tiny-org/not-downloaded")


def test_prune_a_model_loaded_by_hub_id(own_model):
    model, tok, _ = load_model(HUB_ID)
    dense = sum(p.numel() for p in model.parameters())
    cfg = PruneConfig(ratio=0.5, steps=6, prune_every=2, seq_len=32, batch_size=2, eval_windows=0, lr=1e-3)
    res = prune(model, cfg, [tiny_text(2000)], tokenizer=tok)
    pruned = sum(p.numel() for p in res.model.parameters())
    assert res.report["params_total_after"] < res.report["params_total_before"]
    assert pruned < dense
    ids = torch.tensor([tok("w1 w2 w3 w4").input_ids])
    with torch.no_grad():
        out = res.model(ids).logits
    assert out.shape == (1, 4, model.config.vocab_size) and torch.isfinite(out).all()
