"""compressor.evaluation: perplexity against a hand computation, evaluate(), CLI (lm-eval tasks: test_tasks.py)."""
from __future__ import annotations

import importlib.util
import json
import math
from types import SimpleNamespace

import pytest
import torch

from compressor import evaluation as ev
from compressor.core.errors import CalibrationError, ConfigError, NonFiniteError

WORDS = [
    "the", "cat", "sat", "on", "a", "mat", ".", "dog", "ran", "far", "away", "and", "then", "slept", "in", "sun",
    "!", "my", "good", "bad", "thing", "very", "Question", "Answer", ":", "?", "yes", "no", "Sarah", "Maria",
    "likes", "hates", "cats", "dogs", "x", "y", "z", "w",
]


def make_tokenizer(words=WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def make_llama(vocab_size, max_pos=64, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_pos,
                      attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


class TableModel(torch.nn.Module):
    """Logits = ``strength`` on ``next_map[current token]`` (0 elsewhere): a model whose preferences are known."""

    def __init__(self, vocab_size, next_map=None, strength=12.0, default=None, max_pos=128):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        table = torch.zeros(vocab_size, vocab_size)
        for a in range(vocab_size):
            b = (next_map or {}).get(a, default)
            if b is not None:
                table[a, b] = strength
        self.register_buffer("table", table)
        self.config = SimpleNamespace(max_position_embeddings=max_pos)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.table[input_ids] + 0 * self.dummy)


TEXT = ("the cat sat on a mat . the dog ran far away and then slept in the sun ! my cat sat on my mat . "
        "a dog and a cat ran far . ") * 3


def manual_nll(model, ids, seq_len, bos=None):
    """Independent reference: per-window log_softmax, NLL of every token but the first."""
    per = seq_len - (1 if bos is not None else 0)
    total, count = 0.0, 0
    for i in range(len(ids) // per):
        w = ids[i * per:(i + 1) * per]
        if bos is not None:
            w = [bos] + w
        x = torch.tensor([w])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0].double(), dim=-1)
        for p in range(1, len(w)):
            total -= logp[p - 1, w[p]].item()
            count += 1
    return total / count, count


# ---------------------------------------------------------------------------------------------- perplexity

def test_perplexity_matches_hand_computation():
    tok = make_tokenizer()
    model = make_llama(len(tok))
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    nll, count = manual_nll(model, ids, 16)
    r = ev.perplexity(model, tok, TEXT, seq_len=16)
    assert r["windows"] == len(ids) // 16 and r["tokens"] == count == r["windows"] * 15
    assert r["nll"] == pytest.approx(nll, rel=1e-5)
    assert r["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert r["seq_len"] == 16 and r["text_tokens"] == len(ids) and "non-overlapping" in r["protocol"]
    # batched windows give the same number
    assert ev.perplexity(model, tok, TEXT, seq_len=16, batch_size=3)["nll"] == pytest.approx(nll, rel=1e-5)
    # token ids and a list of documents are accepted
    assert ev.perplexity(model, tok, torch.tensor(ids), seq_len=16)["nll"] == pytest.approx(nll, rel=1e-5)


def test_perplexity_bos_max_windows_and_tail():
    tok = make_tokenizer()
    model = make_llama(len(tok))
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    nll, count = manual_nll(model, ids, 16, bos=tok.bos_token_id)
    r = ev.perplexity(model, tok, TEXT, seq_len=16, add_bos=True)
    assert r["nll"] == pytest.approx(nll, rel=1e-5) and r["tokens"] == count and r["add_bos"]
    first, _ = manual_nll(model, ids[:32], 16)
    r2 = ev.perplexity(model, tok, TEXT, seq_len=16, max_windows=2)
    assert r2["windows"] == 2 and r2["tokens"] == 30 and r2["nll"] == pytest.approx(first, rel=1e-5)
    assert "first 2 of" in r2["protocol"]
    # drop_last=False scores the incomplete tail too
    n = len(ids)
    assert n % 16 >= 2
    r3 = ev.perplexity(model, tok, TEXT, seq_len=16, drop_last=False)
    assert r3["tokens"] == (n // 16) * 15 + (n % 16 - 1)
    # default seq_len is min(2048, max_position_embeddings)
    assert ev.perplexity(model, tok, TEXT * 2)["seq_len"] == 64


def test_perplexity_errors():
    tok = make_tokenizer()
    model = make_llama(len(tok), max_pos=32)
    with pytest.raises(ConfigError, match="max_position_embeddings 32"):
        ev.perplexity(model, tok, TEXT, seq_len=64)
    with pytest.raises(CalibrationError, match="has 3 tokens; need at least 16"):
        ev.perplexity(model, tok, "the cat sat", seq_len=16)
    with pytest.raises(ConfigError):
        ev.perplexity(model, tok, TEXT, seq_len=16, max_windows=0)
    with pytest.raises(ConfigError):
        ev.perplexity(model, tok, TEXT, seq_len=16, batch_size=0)

    class NaNModel(TableModel):
        def forward(self, input_ids, attention_mask=None, use_cache=None):
            return SimpleNamespace(logits=torch.full((*input_ids.shape, self.table.shape[0]), float("nan")))

    with pytest.raises(NonFiniteError):
        ev.perplexity(NaNModel(len(tok)), tok, TEXT, seq_len=16)


def test_perplexity_restores_training_mode():
    tok = make_tokenizer()
    model = make_llama(len(tok)).train()
    ev.perplexity(model, tok, TEXT, seq_len=16, max_windows=1)
    assert model.training


# ---------------------------------------------------------------------------------------------- evaluate()

@pytest.fixture
def shared_text(tmp_path, monkeypatch):
    root = tmp_path / "shared"
    (root / "wikitext2").mkdir(parents=True)
    (root / "wikitext2" / "test.txt").write_text(TEXT)
    monkeypatch.setenv("COMPRESS_SHARED_DATA", str(root))
    return root


def test_evaluate_perplexity_task(shared_text):
    tok = make_tokenizer()
    model = make_llama(len(tok))
    report = ev.evaluate(model, ["wikitext2"], tokenizer=tok, seq_len=16, max_windows=3)
    direct = ev.perplexity(model, tok, TEXT, seq_len=16, max_windows=3)
    assert report.results["wikitext2"]["ppl"] == pytest.approx(direct["ppl"])
    assert report.details["wikitext2"]["windows"] == 3 and report.config["seq_len"] == 16
    d = json.loads(json.dumps(report.to_dict()))
    assert set(d) == {"results", "config", "details"} and d["config"]["max_windows"] == 3
    table = report.table()
    assert "wikitext2" in table and "ppl" in table


def test_evaluate_adds_bos_by_default_only_for_models_that_need_it(shared_text):
    """BOS default follows the architecture table: a Gemma model gets BOS windows, LLaMA the no-BOS protocol;
    an explicit add_bos wins either way."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = make_tokenizer()
    llama = make_llama(len(tok))
    torch.manual_seed(0)
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               head_dim=8, max_position_embeddings=64)).eval()
    kw = dict(tokenizer=tok, seq_len=16, max_windows=2)
    assert ev.evaluate(gemma, ["wikitext2"], **kw).details["wikitext2"]["add_bos"] is True
    assert ev.evaluate(gemma, ["wikitext2"], add_bos=False, **kw).details["wikitext2"]["add_bos"] is False
    assert ev.evaluate(llama, ["wikitext2"], **kw).details["wikitext2"]["add_bos"] is False
    assert ev.evaluate(llama, ["wikitext2"], add_bos=True, **kw).details["wikitext2"]["add_bos"] is True


def test_evaluate_errors():
    tok = make_tokenizer()
    model = make_llama(len(tok))
    with pytest.raises(ConfigError) as ei:
        ev.evaluate(model, "wikitext2,mmlux", tokenizer=tok)
    msg = str(ei.value)
    assert "'mmlux'" in msg and all(t in msg for t in ("piqa", "arc_easy", "hellaswag", "mmlu", "zeroshot"))
    with pytest.raises(ConfigError, match="tokenizer"):
        ev.evaluate(model, "wikitext2")
    with pytest.raises(ConfigError, match="limit"):
        ev.evaluate(model, "wikitext2", tokenizer=tok, limit=0)
    with pytest.raises(ConfigError, match="not among the tasks run"):
        ev.evaluate(model, "wikitext2", tokenizer=tok, limit={"piqa": 3})
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        ev.evaluate(model, "wikitext2", tokenizer=tok, seq_len=4096)
    assert ev.resolve_tasks("zeroshot,wikitext2") == ev.TASK_GROUPS["zeroshot"] + ["wikitext2"]
    assert ev.resolve_tasks(["PTB", "ptb"]) == ["ptb"]
    with pytest.raises(ConfigError, match="no tasks"):
        ev.resolve_tasks(" , ")


# ---------------------------------------------------------------------------------------------- CLI

def test_cli_eval_writes_report(tmp_path, shared_text):
    from click.testing import CliRunner

    from compressor.commands.eval import eval_cmd

    tok = make_tokenizer()
    model = make_llama(len(tok))
    mdir = tmp_path / "model"
    model.save_pretrained(mdir)
    tok.save_pretrained(mdir)
    runner = CliRunner()
    res = runner.invoke(eval_cmd, [str(mdir), "--tasks", "wikitext2", "--seq-len", "16", "--max-windows", "2", "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads((mdir / "eval_report.json").read_text())
    assert report["results"]["wikitext2"]["ppl"] > 1 and report["details"]["wikitext2"]["windows"] == 2
    assert "wikitext2" in res.output and "ppl" in res.output
    out = tmp_path / "r.json"
    res = runner.invoke(eval_cmd, [str(mdir), "--tasks", "wikitext2", "--seq-len", "16", "--max-windows", "1",
                                   "--out", str(out), "-q"])
    assert res.exit_code == 0 and json.loads(out.read_text())["config"]["max_windows"] == 1
    res = runner.invoke(eval_cmd, [str(mdir), "--tasks", "nope"])
    assert isinstance(res.exception, ConfigError) and "valid tasks" in str(res.exception)


# ---------------------------------------------------------------------------------------------- ONNX models

def _saved_llama(folder):
    """The tiny llama and its tokenizer, also saved as an HF folder at ``folder``."""
    tok = make_tokenizer()
    model = make_llama(len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def test_ort_model_gives_the_same_numbers(tmp_path):
    pytest.importorskip("optimum.onnxruntime")
    from optimum.onnxruntime import ORTModelForCausalLM

    model, tok = _saved_llama(tmp_path / "m")
    ort = ORTModelForCausalLM.from_pretrained(tmp_path / "m", export=True)
    assert ev.perplexity(ort, tok, TEXT, seq_len=16)["nll"] == pytest.approx(
        ev.perplexity(model, tok, TEXT, seq_len=16)["nll"], rel=1e-4)
    if importlib.util.find_spec("lm_eval") is not None:  # lm-eval's requests through ONNX Runtime: same log-likelihoods
        from compressor.evaluation.harness import loglikelihoods, make_lm

        reqs = [("the cat sat", " on the mat"), ("a b", " c"), ("", " hello there world")] * 3
        lm = make_lm(ort, tok, batch_size=4)
        assert type(lm).__name__ == "ORTHFLM"
        assert loglikelihoods(None, tok, reqs, lm=lm) == pytest.approx(loglikelihoods(model, tok, reqs), abs=1e-4)


def test_plain_onnxruntime_model_gives_the_same_numbers(tmp_path):
    """Without optimum an exported folder is scored by OrtCausalLM (plain ONNX Runtime): same perplexity, and the
    same lm-eval log-likelihoods, as the PyTorch model."""
    from compressor.evaluation.ort_model import OrtCausalLM
    from exporters import export_onnx

    model, tok = _saved_llama(tmp_path / "m")
    export_onnx(tmp_path / "m", tmp_path / "onnx", validate=False)
    ort = OrtCausalLM(tmp_path / "onnx")
    assert ev.perplexity(ort, tok, TEXT, seq_len=16)["nll"] == pytest.approx(
        ev.perplexity(model, tok, TEXT, seq_len=16)["nll"], rel=1e-4)
    if importlib.util.find_spec("lm_eval") is not None:
        from compressor.evaluation.harness import loglikelihoods, make_lm

        reqs = [("the cat sat", " on the mat"), ("a b", " c"), ("", " hello there world")] * 3
        lm = make_lm(ort, tok, batch_size=4)
        assert type(lm).__name__ == "ORTHFLM"
        assert loglikelihoods(None, tok, reqs, lm=lm) == pytest.approx(loglikelihoods(model, tok, reqs), abs=1e-4)


def _onnx_model_class() -> str:
    """What `compress eval` loads an ONNX folder with: optimum's class where it imports, else plain ONNX Runtime."""
    try:
        import optimum.onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001
        return "OrtCausalLM"
    return "ORTModelForCausalLM"


def test_evaluate_onnx_folder_and_own_text_file(tmp_path):
    """`compress eval` on an exported ONNX folder gives the PyTorch folder's numbers; --wikitext2-file is used."""
    from click.testing import CliRunner

    from compressor.cli import main
    from exporters import export_onnx

    model, tok = _saved_llama(tmp_path / "m")
    export_onnx(tmp_path / "m", tmp_path / "onnx", validate=False)
    (tmp_path / "w.txt").write_text(TEXT)
    a = ev.evaluate(tmp_path / "m", "wikitext2", seq_len=16, texts={"wikitext2": tmp_path / "w.txt"})
    b = ev.evaluate(str(tmp_path / "onnx"), "wikitext2", seq_len=16, texts={"wikitext2": str(tmp_path / "w.txt")})
    assert b.config["source"]["kind"] == "onnx" and b.config["model_class"] == _onnx_model_class()
    assert b.results["wikitext2"]["nll"] == pytest.approx(a.results["wikitext2"]["nll"], rel=1e-4)
    assert b.details["wikitext2"]["data"] == str((tmp_path / "w.txt").resolve())
    direct = ev.perplexity(model, tok, TEXT, seq_len=16)
    assert a.results["wikitext2"]["nll"] == pytest.approx(direct["nll"], rel=1e-6)

    r = CliRunner().invoke(main, ["eval", str(tmp_path / "onnx"), "--tasks", "wikitext2", "--seq-len", "16",
                                  "--wikitext2-file", str(tmp_path / "w.txt"), "-q", "--out", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["results"]["wikitext2"]["nll"] == pytest.approx(
        a.results["wikitext2"]["nll"], rel=1e-4)
    args = ["eval", str(tmp_path / "m"), "--tasks", "wikitext2", "--seq-len", "16", "--wikitext2-file",
            str(tmp_path / "w.txt"), "-q", "--out", str(tmp_path / "r.json")]
    before = (tmp_path / "r.json").read_text()
    r = CliRunner().invoke(main, args)  # an existing report is kept without --force, refused before loading
    assert r.exit_code == 2 and str(tmp_path / "r.json") in r.output and "--force" in r.output, r.output
    assert (tmp_path / "r.json").read_text() == before
    r = CliRunner().invoke(main, args + ["--force"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["config"]["source"]["kind"] != "onnx"
    with pytest.raises(ConfigError, match="does not exist"):
        ev.evaluate(model, "wikitext2", tokenizer=tok, texts={"wikitext2": tmp_path / "nope.txt"})
    with pytest.raises(ConfigError, match="not a perplexity task"):
        ev.evaluate(model, "piqa", tokenizer=tok, texts={"piqa": tmp_path / "w.txt"})


def test_unloadable_onnx_folder_is_a_clear_error(tmp_path):
    from click.testing import CliRunner

    from compressor.cli import main

    _saved_llama(tmp_path / "o")
    (tmp_path / "o" / "model.onnx").write_bytes(b"not an onnx graph")
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "o"), "--tasks", "wikitext2", "-q",
                                  "--out", str(tmp_path / "r.json")])
    assert r.exit_code != 0 and "cannot load ONNX folder" in r.output and str(tmp_path / "o") in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "r.json").exists()


def test_dtype_auto_follows_the_hardware(tmp_path):
    """``dtype="auto"``: bfloat16 where the device multiplies it natively, else float32; the report says which."""
    import torch

    from compressor.core.device import native_bf16
    from compressor.evaluation import evaluate
    from compressor.modeling.save import save_model_folder
    from tests.tiny import tiny_model, tiny_text, tiny_tokenizer

    save_model_folder(tiny_model("llama-mha"), tiny_tokenizer(), tmp_path / "m")
    (tmp_path / "t.txt").write_text(tiny_text(2000))
    r = evaluate(str(tmp_path / "m"), "wikitext2", dtype="auto", device="cpu", seq_len=32, max_windows=2,
                 texts={"wikitext2": str(tmp_path / "t.txt")})
    assert r.config["dtype"] == ("bfloat16" if native_bf16(torch.device("cpu")) else "float32")
    assert r.results["wikitext2"]["ppl"] > 0
