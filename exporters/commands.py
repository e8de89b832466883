"""Click commands ``compress export`` and ``compress bench`` (thin layers over :mod:`exporters`).

Only click is imported at module level; the work (torch, transformers, optimum, onnxruntime) is imported
inside the commands so ``compress --help`` stays instant. Errors are the typed
:mod:`compressor.errors` exceptions; the ``compress`` group turns them into exit codes.
"""
from __future__ import annotations

import click

from compressor.errors import ConfigError


def _int_list(value: str, name: str) -> list[int]:
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated integers, got {value!r}") from None
    if any(x < 1 for x in out):
        raise ConfigError(f"{name} must be integers >= 1, got {value!r}")
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@click.command("export")
@click.argument("model_dir")
@click.option("--format", "fmt", type=click.Choice(["onnx", "safetensors"]), default="onnx", show_default=True,
              help="onnx: one decoder graph with KV cache (task text-generation-with-past), loadable with "
                   "optimum's ORTModelForCausalLM; safetensors: plain Hugging Face folder.")
@click.option("--out", required=True, type=click.Path(), help="Output folder (written atomically).")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--no-validate", is_flag=True, help="ONNX: skip the ONNX Runtime vs PyTorch checks.")
@click.option("--int8", is_flag=True,
              help="ONNX: dynamic int8 quantization of the MatMul weights (MLP down_proj kept fp32), validated "
                   "with a looser tolerance: relative NLL increase <= 5%, next-token agreement >= 80%.")
@click.option("--opset", type=int, default=None, help="ONNX opset (default: optimum's default).")
@click.option("--atol", type=float, default=1e-4, show_default=True,
              help="ONNX fp32: absolute tolerance on max |ORT - PyTorch| of logits and KV cache.")
@click.option("--rtol", type=float, default=1e-5, show_default=True,
              help="ONNX fp32: extra tolerance times the output's largest magnitude (tol = atol + rtol*max|ref|).")
@click.option("--noise-factor", type=float, default=8.0, show_default=True,
              help="ONNX fp32: if the atol/rtol check fails, still pass when ORT's error against a float64 PyTorch "
                   "run is at most this times PyTorch fp32's own (models with huge activations); 0 disables.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads for validation (default: ORT's).")
@click.option("--allow-pickle", is_flag=True, help="Allow loading pickle weights (pytorch_model.bin); they can run code.")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow a model folder's own Python code (auto_map in config.json) to run; only for folders you trust.")
def export_cmd(model_dir, fmt, out, force, no_validate, int8, opset, atol, rtol, noise_factor, threads, allow_pickle,
               trust_remote_code):
    """Export MODEL_DIR (HF folder, .gguf file or built-in name) to ONNX or safetensors.

    \b
    compress export pruned/ --format onnx --out pruned_onnx
    compress export pruned/ --format onnx --int8 --out pruned_onnx_int8
    compress export model.gguf --format safetensors --out model_hf

    The ONNX folder holds model.onnx, config.json, the tokenizer and export_report.json (tolerances,
    measured differences, opset, files and sizes).
    """
    if fmt == "safetensors":
        if int8 or opset is not None:
            raise ConfigError("--int8 and --opset only apply to --format onnx")
        from .safetensors import export_safetensors

        res = export_safetensors(model_dir, out, force=force, allow_pickle=allow_pickle,
                                 trust_remote_code=trust_remote_code)
        click.echo(f"Saved {res.path} ({_mib(res.total_bytes)}, {len(res.files)} files) in {res.seconds:.1f} s")
        return
    from .onnx import export_onnx

    res = export_onnx(model_dir, out, force=force, validate=not no_validate, int8=int8, atol=atol, rtol=rtol,
                      noise_factor=noise_factor, opset=opset, threads=threads, allow_pickle=allow_pickle,
                      trust_remote_code=trust_remote_code)
    rep = res.report
    onnx_bytes = sum(v for k, v in res.files.items() if k.endswith(".onnx") or ".onnx" in k)
    click.echo(f"Exported {res.path}: model.onnx {_mib(onnx_bytes)}, opset {rep.get('opset')}, "
               f"{'int8' if int8 else 'fp32'}, {res.seconds:.1f} s")
    if rep.get("ort_config_adjustment"):
        adj = rep["ort_config_adjustment"]["hidden_size"]
        click.echo(f"  config.json hidden_size {adj['model']} -> {adj['onnx_config']} for ORTModelForCausalLM "
                   f"(head_dim != hidden_size // heads); real value kept as lorapress_export.model_hidden_size")
    val = rep.get("validation", {})
    if not val.get("enabled"):
        click.echo("  validation skipped (--no-validate)")
        return
    par = val.get("parity")
    if par:
        click.echo(f"  fp32 parity (prefill + {par['decode_steps']} decode steps): max |diff| "
                   f"{par['max_abs_diff']:.2e} (atol {par['atol']:g}, rtol {par['rtol']:g}) OK")
        if par["judged_by"] == "fp64_noise_floor":
            worst = max(v["max_abs_diff_vs_fp64"] / max(v["pt_fp32_error_vs_fp64"], 1e-30)
                        for v in par["per_output"].values())
            click.echo(f"    passed on the float64 check: ORT's error vs float64 is at most {worst:.2f}x PyTorch "
                       f"fp32's own (limit {par['noise_factor']:g}x)")
    i8 = val.get("int8")
    if i8:
        click.echo(f"  int8: NLL {i8['nll_fp32']:.3f} -> {i8['nll_int8']:.3f} ({i8['rel_nll_increase']:+.2%}), "
                   f"next-token agreement {i8['top1_agreement']:.2f}, mean |logit diff| "
                   f"{i8['mean_abs_logit_diff']:.3g} OK")
    gen = val.get("generate")
    if gen:
        n = len(gen["results"])
        eq = sum(r["equal"] for r in gen["results"])
        click.echo(f"  greedy generate via ORTModelForCausalLM: {eq}/{n} prompts identical to PyTorch")


@click.command("bench")
@click.argument("onnx_dir")
@click.option("--baseline", default=None, help="Second exported ONNX folder, timed alternately in the same run.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda needs onnxruntime-gpu and CUDA.")
@click.option("--threads", type=int, default=None, help="intra-op threads (default: os.cpu_count()).")
@click.option("--runs", type=int, default=20, show_default=True, help="Timed runs per case.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed runs per case first.")
@click.option("--prompt-lengths", default="128,512", show_default=True, help="Prefill prompt lengths (batch 1).")
@click.option("--decode-batches", default="1,8", show_default=True, help="Batch sizes of the one-token decode step.")
@click.option("--context", type=int, default=128, show_default=True,
              help="KV-cache length for decode, and T of the FLOP count.")
@click.option("--out", type=click.Path(), default=None,
              help="Folder for bench_report.json (default: inside ONNX_DIR).")
@click.option("--no-memory", is_flag=True, help="Skip the peak-RSS probe (a child process per model).")
def bench_cmd(onnx_dir, baseline, provider, threads, runs, warmup, prompt_lengths, decode_batches, context, out,
              no_memory):
    """ONNX Runtime latency of an exported ONNX_DIR (optionally vs --baseline).

    ONNX_DIR must be a folder written by `compress export --format onnx`; a Hugging Face folder is refused
    with the export command to run (benchmarks/onnx_latency.py exports and benchmarks in one go).

    \b
    Measures: prefill latency (batch 1, --prompt-lengths), one-token decode latency with a KV cache of
    --context positions (--decode-batches): median and p90 of --runs runs after --warmup; peak RSS;
    file size; parameter count; FLOPs/token = 2*(linear params incl. lm_head) + 4*L*H*d*T.
    Writes bench_report.json into --out (default ONNX_DIR) and prints a table.
    """
    from .bench import bench

    rep = bench(onnx_dir, baseline, provider=provider, threads=threads, runs=runs, warmup=warmup,
                prompt_lengths=_int_list(prompt_lengths, "--prompt-lengths"),
                decode_batches=_int_list(decode_batches, "--decode-batches"), context=context, out=out,
                measure_memory=not no_memory)
    click.echo(rep.table())
    for note in rep.model.notes + (rep.baseline.notes if rep.baseline else []):
        click.echo(f"note: {note}", err=True)
    click.echo(f"Report: {rep.json_path}")
