"""Fixed-seed prune fingerprints: is a refactor behaviour-preserving?

Prunes tiny random models (built in code, no hub, seconds each) with fixed seeds under the configurations a
refactor must keep bit for bit (MHA and GQA; taylor + distillation + chunked loss; compensation; adaptive widths;
a resumed run), and records a sha256 of every merged weight, the final masks and the loss history. Run it before
and after a change on the same machine and compare:

    python benchmarks/fingerprint.py --out /tmp/before.json        # on the old revision
    python benchmarks/fingerprint.py --out /tmp/after.json --compare /tmp/before.json

The hashes depend on the CPU's kernels (bfloat16 above all), so compare only runs made on one machine; nothing is
written to ``benchmarks/results/`` (a hash is no figure).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: name -> (tiny model case, PruneConfig overrides)
CASES = {
    "mha-default": ("llama-mha", {}),
    "gqa-default": ("llama-gqa", {}),
    "gqa-taylor-distill-chunked": ("llama-gqa", {"criterion": "taylor", "distill": 0.7, "loss_chunk_tokens": 16,
                                                 "compensate": False}),
    "mha-lora-criterion": ("llama-mha", {"criterion": "lora", "amp": "off"}),
    "gqa-compensate-current": ("llama-gqa", {"compensate_stats": "current", "distill_hidden": 0.3}),
    "qwen2-adaptive": ("qwen2-gqa", {"widths": "adaptive", "skip_layers": "0", "ratio": 0.3}),
    "gqa-bf16-amp": ("llama-gqa", {"amp": "bf16"}),
}

BASE = dict(ratio=0.5, steps=12, prune_every=2, batch_size=2, seq_len=32, seed=3, eval_windows=0,
            channel_multiple=4)


def _digest(tensors: dict) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run_case(name: str, case: str, overrides: dict) -> dict:
    import torch

    from compressor import PruneConfig, prune
    from tests.tiny import tiny_model

    layers = 3 if overrides.get("widths") == "adaptive" else 2
    vocab = 96
    torch.manual_seed(0)
    model = tiny_model(case, layers=layers, vocab=vocab)
    blocks = torch.randint(0, vocab, (8, BASE["seq_len"]), generator=torch.Generator().manual_seed(1))
    res = prune(model, PruneConfig(**(BASE | overrides)), blocks)
    masks = {"heads": [list(map(int, k)) for k in res.report.get("kept_heads", [])]}
    return {"weights": _digest(res.model.state_dict()),
            "losses": [round(float(h["loss"]), 10) for h in res.history],
            "losses_sha": hashlib.sha256(json.dumps([float(h["loss"]) for h in res.history]).encode()).hexdigest(),
            "widths": res.report.get("widths"), "masks": masks}


def run_job(resumed: bool) -> dict:
    """The whole job (:func:`compressor.job.prune_job`) on a saved tiny GQA folder; ``resumed``: stopped after step 6
    (the checkpoint of step 4 kept) and resumed to the end. Both give the same weights."""
    from compressor import PruneConfig
    from compressor.job import prune_job
    from tests.tiny import tiny_job_inputs

    cfg = PruneConfig(**(BASE | {"save_every": 4}))
    with tempfile.TemporaryDirectory() as tmp:
        src, data = tiny_job_inputs(Path(tmp))
        out = Path(tmp) / "out"
        if resumed:
            calls = {"n": 0}

            def stop(rec):
                calls["n"] += 1
                if calls["n"] == 6:
                    raise KeyboardInterrupt

            try:
                prune_job(str(src), out, cfg, data=str(data), eval_data="none", progress=stop)
            except KeyboardInterrupt:
                pass
        res = prune_job(str(src), out, cfg, data=str(data), eval_data="none", resume=resumed)
    return {"weights": _digest(res.model.state_dict()),
            "losses_sha": hashlib.sha256(json.dumps([float(h["loss"]) for h in res.history]).encode()).hexdigest()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write the fingerprints to")
    ap.add_argument("--compare", help="an earlier fingerprint JSON: exit 1 when any case differs")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = {name: run_case(name, case, ov) for name, (case, ov) in CASES.items()}
    out["job-gqa"] = run_job(resumed=False)
    out["job-gqa-resumed"] = run_job(resumed=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    if not args.compare:
        for name, rec in out.items():
            print(f"{name:30s} {rec['weights'][:16]}")
        return 0
    before = json.loads(Path(args.compare).read_text())
    bad = 0
    for name, rec in out.items():
        old = before.get(name)
        same = old is not None and old["weights"] == rec["weights"] and old["losses_sha"] == rec["losses_sha"]
        bad += not same
        print(f"{name:30s} {'identical' if same else 'DIFFERS'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
