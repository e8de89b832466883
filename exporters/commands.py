"""Click commands ``compress export`` and ``compress bench`` (thin layers over :mod:`exporters`).

Only click is imported at module level; the work (torch, transformers, optimum, onnxruntime) is imported
inside the commands so ``compress --help`` stays instant. Errors are the typed
:mod:`compressor.core.errors` exceptions; the ``compress`` group turns them into exit codes.
"""
from __future__ import annotations

import click

from compressor.core.errors import ConfigError


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


#: ``compress export --quantize``: value -> (formats it applies to, what it does)
QUANTIZE: dict[str, tuple[tuple[str, ...], str]] = {
    "int8": (("onnx",), "onnx, dynamic int8 MatMul weights (MLP down_proj kept fp32), validated with a looser "
                        "tolerance: relative NLL increase <= 5%, next-token agreement >= 80% where the fp32 top-2 "
                        "margin is >= 0.25"),
    "int4": (("onnx-genai",), "onnx-genai, 4-bit MatMulNBits weights (block 32), validated: relative NLL increase "
                              "<= 10%, next-token agreement >= 70% where the fp32 top-2 margin is >= 0.25, after the "
                              "exact check of the fp32 build"),
    "f16": (("gguf",), "gguf, float16 weights (norms and biases stay f32)"),
    "q8_0": (("gguf",), "gguf, llama.cpp's 8-bit blocks (norms and biases stay f32)"),
}


def _quantize(ctx: click.Context, fmt: str, quantize: str | None, int8: bool, int4: bool,
              gguf_type: str) -> tuple[bool, bool, str]:
    """``--quantize`` as the old flags it replaces (``--int8``, ``--int4``, ``--type``: accepted, deprecated)."""
    given = {name for name in ("int8", "int4", "gguf_type")
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    for name in sorted(given):
        flag = {"int8": "--int8", "int4": "--int4", "gguf_type": f"--type {gguf_type}"}[name]
        new = {"int8": "int8", "int4": "int4", "gguf_type": gguf_type}[name]
        click.echo(f"note: {flag} is deprecated and will be removed in the next release; use --quantize {new}",
                   err=True)
    if quantize is None:
        return int8, int4, gguf_type
    if given:
        raise ConfigError(f"--quantize {quantize} replaces --int8, --int4 and --type; give only --quantize")
    formats = QUANTIZE[quantize][0]
    if fmt not in formats:
        valid = ", ".join(f"{k} ({'/'.join(v[0])})" for k, v in QUANTIZE.items())
        raise ConfigError(f"--quantize {quantize} does not apply to --format {fmt}; valid: {valid}")
    return quantize == "int8", quantize == "int4", quantize if fmt == "gguf" else gguf_type


@click.command("export")
@click.argument("model_dir")
@click.option("--format", "fmt", type=click.Choice(["onnx", "onnx-genai", "safetensors", "gguf"]), default="onnx",
              show_default=True,
              help="onnx: one decoder graph with KV cache (task text-generation-with-past, optimum's graph "
                   "inputs and outputs), also loadable with optimum's ORTModelForCausalLM; onnx-genai: fused graph (GroupQueryAttention, "
                   "SkipSimplifiedLayerNormalization) from onnxruntime-genai's model builder, run with the "
                   "onnxruntime_genai generator (needs pip install \"lorapress[genai]\"); safetensors: plain Hugging "
                   "Face folder; gguf: model.gguf for llama.cpp, validated in llama.cpp (needs pip install "
                   "\"lorapress[gguf]\").")
@click.option("--out", required=True, type=click.Path(), help="Output folder (written atomically).")
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--no-validate", is_flag=True,
              help="ONNX: skip the ONNX Runtime vs PyTorch checks; GGUF: skip the llama.cpp checks.")
@click.option("--quantize", type=click.Choice(list(QUANTIZE)), default=None,
              help="Weight type of the export: " + "; ".join(f"{k}: {v[1]}" for k, v in QUANTIZE.items())
                   + ". Default: fp32 (gguf f32).")
@click.option("--type", "gguf_type", default="f32", hidden=True, help="Deprecated: --quantize f16|q8_0.")
@click.option("--tokenizer-pre", default=None,
              help="GGUF: llama.cpp's BPE pre-tokenizer name (e.g. smollm, qwen2, llama-bpe, gpt-2); default: "
                   "detected from the tokenizer.")
@click.option("--int8", is_flag=True, hidden=True, help="Deprecated: --quantize int8.")
@click.option("--optimize", is_flag=True,
              help="ONNX: fuse the graph with ONNX Runtime's transformer optimizer (RotaryEmbedding, "
                   "SkipSimplifiedLayerNormalization; attention stays unfused), validated as usual.")
@click.option("--int4", is_flag=True, hidden=True, help="Deprecated: --quantize int4.")
@click.option("--exporter", type=click.Choice(["torch", "optimum"]), default="torch", show_default=True,
              help="ONNX: what writes the graph. torch: torch's own exporter (torch.onnx.export, TorchScript tracer) "
                   "traces the model with optimum's graph inputs and outputs; needs no optimum. optimum: optimum's "
                   "ONNX exporter; needs pip install \"lorapress[optimum]\", which requires transformers < 4.58.")
@click.option("--opset", type=int, default=None,
              help="ONNX opset (default: 17 with --exporter torch, which writes at most 20; optimum's default with "
                   "--exporter optimum).")
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
@click.pass_context
def export_cmd(ctx, model_dir, fmt, out, force, no_validate, quantize, gguf_type, tokenizer_pre, int8, optimize, int4,
               exporter, opset, atol, rtol, noise_factor, threads, allow_pickle, trust_remote_code):
    """Export MODEL_DIR (HF folder, .gguf file or built-in name) to ONNX, safetensors or GGUF.

    \b
    compress export pruned/ --format onnx --out pruned_onnx
    compress export pruned/ --format onnx --exporter optimum --out pruned_onnx
    compress export pruned/ --format onnx --quantize int8 --out pruned_onnx_int8
    compress export pruned/ --format onnx --optimize --out pruned_onnx_fused
    compress export pruned/ --format onnx-genai [--quantize int4] --out pruned_genai
    compress export model.gguf --format safetensors --out model_hf
    compress export pruned/ --format gguf --quantize q8_0 --out pruned_gguf

    The ONNX folder holds model.onnx, config.json, the tokenizer and export_report.json (tolerances,
    measured differences, opset, files and sizes). The GGUF folder holds model.gguf and export_report.json.
    """
    int8, int4, gguf_type = _quantize(ctx, fmt, quantize, int8, int4, gguf_type)
    if fmt != "gguf" and (gguf_type != "f32" or tokenizer_pre):
        raise ConfigError("--quantize f16/q8_0 (--type) and --tokenizer-pre only apply to --format gguf")
    if optimize and fmt != "onnx":
        raise ConfigError(f"--optimize only applies to --format onnx (got --format {fmt}; onnx-genai graphs are fused "
                          f"already)")
    if exporter != "torch" and fmt != "onnx":
        raise ConfigError(f"--exporter only applies to --format onnx (got --format {fmt})")
    if int4 and fmt != "onnx-genai":
        raise ConfigError(f"--quantize int4 only applies to --format onnx-genai (got --format {fmt}; --format onnx has --quantize int8)")
    if fmt == "onnx-genai":
        if int8 or opset is not None:
            raise ConfigError("--quantize int8 and --opset only apply to --format onnx; use --quantize int4 for a quantized onnx-genai graph")
        _export_genai(model_dir, out, force, not no_validate, int4, atol, rtol, noise_factor, threads, allow_pickle,
                      trust_remote_code)
        return
    if fmt == "gguf":
        if int8 or opset is not None:
            raise ConfigError("--quantize int8 and --opset only apply to --format onnx; use --quantize q8_0 for an 8-bit GGUF")
        _export_gguf(model_dir, out, force, not no_validate, gguf_type, tokenizer_pre, threads, allow_pickle,
                     trust_remote_code)
        return
    if fmt == "safetensors":
        if int8 or opset is not None:
            raise ConfigError("--quantize int8 and --opset only apply to --format onnx")
        from exporters.safetensors import export_safetensors

        res = export_safetensors(model_dir, out, force=force, allow_pickle=allow_pickle,
                                 trust_remote_code=trust_remote_code)
        click.echo(f"Saved {res.path} ({_mib(res.total_bytes)}, {len(res.files)} files) in {res.seconds:.1f} s")
        return
    from exporters.onnx.export import export_onnx

    res = export_onnx(model_dir, out, force=force, validate=not no_validate, int8=int8, atol=atol, rtol=rtol,
                      noise_factor=noise_factor, opset=opset, threads=threads, allow_pickle=allow_pickle,
                      trust_remote_code=trust_remote_code, optimize=optimize, exporter=exporter)
    rep = res.report
    onnx_bytes = sum(v for k, v in res.files.items() if k.endswith(".onnx") or ".onnx" in k)
    click.echo(f"Exported {res.path}: model.onnx {_mib(onnx_bytes)}, opset {rep.get('opset')}, "
               f"{'int8' if int8 else 'fp32'}, {rep.get('exporter', 'optimum')} exporter, {res.seconds:.1f} s")
    if rep.get("optimize"):
        before, after = rep["optimize"]["before"]["ort_optimized"], rep["optimize"]["after"]["ort_optimized"]
        click.echo(f"  fused by ONNX Runtime's transformer optimizer: {before['nodes']} -> {after['nodes']} nodes run by "
                   f"ONNX Runtime ({_fused(after)})")
    adjustment = rep.get("ort_config_adjustment") or {}
    if adjustment.get("hidden_size"):
        adj = adjustment["hidden_size"]
        click.echo(f"  config.json hidden_size {adj['model']} -> {adj['onnx_config']} for ORTModelForCausalLM "
                   f"(head_dim != hidden_size // heads); real value kept as lorapress_export.model_hidden_size")
    if adjustment.get("per_layer"):
        click.echo("  per-layer widths: the graph holds every layer's shapes; config.json holds the widest layer's "
                   "(for optimum's KV cache) and the real widths under lorapress_export.per_layer")
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
        via = "optimum's ORTModelForCausalLM" if gen.get("runner", "optimum") == "optimum" else "ONNX Runtime"
        click.echo(f"  greedy generate via {via}: {eq}/{n} prompts identical to PyTorch")


def _fused(counts) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts["fused"].items()) or "no fused ops"


def _echo_parity(par) -> None:
    click.echo(f"  fp32 parity (prefill + {par['decode_steps']} decode steps): max |diff| "
               f"{par['max_abs_diff']:.2e} (atol {par['atol']:g}, rtol {par['rtol']:g}) OK")


def _export_genai(model_dir, out, force, validate, int4, atol, rtol, noise_factor, threads, allow_pickle,
                  trust_remote_code):
    from exporters.onnx.genai import export_onnx_genai

    res = export_onnx_genai(model_dir, out, precision="int4" if int4 else "fp32", force=force, validate=validate,
                            atol=atol, rtol=rtol, noise_factor=noise_factor, threads=threads,
                            allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    rep = res.report
    onnx_bytes = sum(v for k, v in res.files.items() if ".onnx" in k)
    g = rep["graph"]["ort_optimized"]
    click.echo(f"Exported {res.path}: model.onnx {_mib(onnx_bytes)} ({rep['precision']}), onnxruntime-genai builder, "
               f"{res.seconds:.1f} s")
    click.echo(f"  {g['nodes']} nodes run by ONNX Runtime ({_fused(g)})")
    val = rep["validation"]
    if not val.get("enabled"):
        click.echo("  validation skipped (--no-validate)")
        return
    _echo_parity(val["parity"])
    i4 = val.get("int4")
    if i4:
        click.echo(f"  int4: NLL {i4['nll_fp32']:.3f} -> {i4['nll_int4']:.3f} ({i4['rel_nll_increase']:+.2%}), "
                   f"next-token agreement {i4['top1_agreement']:.2f} OK")
    gen = val["generate"]
    click.echo(f"  greedy generation via onnxruntime_genai: {sum(r['equal'] for r in gen['results'])}/"
               f"{len(gen['results'])} prompts identical to PyTorch")


def _export_gguf(model_dir, out, force, validate, gguf_type, tokenizer_pre, threads, allow_pickle, trust_remote_code):
    from exporters.gguf.export import export_gguf
    from exporters.gguf.write import check_gguf_type

    check_gguf_type(gguf_type)  # before loading anything
    res = export_gguf(model_dir, out, gguf_type=gguf_type, force=force, validate=validate,
                      tokenizer_pre=tokenizer_pre, threads=threads or 1, allow_pickle=allow_pickle,
                      trust_remote_code=trust_remote_code)
    rep = res.report
    g = rep["gguf"]
    click.echo(f"Exported {res.path}: model.gguf {_mib(res.files.get('model.gguf', 0))}, {g['architecture']}, "
               f"{gguf_type} ({', '.join(f'{k} {v}' for k, v in sorted(g['tensor_types'].items()))} tensors), "
               f"tokenizer pre {rep['tokenizer']['pre']!r}, {res.seconds:.1f} s")
    for note in g["notes"]:
        click.echo(f"  note: {note}")
    if g["f16_fallback"]:
        click.echo(f"  {len(g['f16_fallback'])} matrices written f16 (rows not a multiple of 32): "
                   f"{', '.join(g['f16_fallback'][:4])}{' ...' if len(g['f16_fallback']) > 4 else ''}")
    val = rep["validation"]
    if not val.get("enabled"):
        click.echo("  validation skipped (--no-validate)")
        return
    lp, tk = val["logprobs"], val["tokenizer"]
    click.echo(f"  llama.cpp vs PyTorch next-token log-probs ({len(lp['prompts'])} prompts): max |diff| "
               f"{lp['max_abs_diff']:.2e}, mean |diff| {lp['mean_abs_diff']:.2e}, mean KL {lp['mean_kl']:.2e}, "
               f"argmax agreement {lp['argmax_agreement']:.2f} (gate {lp['tolerance']}) OK")
    click.echo(f"  tokenizer: llama.cpp == HF ids on {tk['checks']} checks ({tk['texts']} texts) OK")


@click.command("bench")
@click.argument("onnx_dir")
@click.option("--baseline", default=None, help="Second exported ONNX folder, timed alternately in the same run.")
@click.option("--device", "device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Where ONNX Runtime runs: cpu (default) or cuda (its CUDA provider; needs onnxruntime-gpu and "
                   "CUDA).")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default=None, hidden=True,
              help="Deprecated: --device.")
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
@click.option("--force", is_flag=True, help="Replace an existing bench_report.json.")
def bench_cmd(onnx_dir, baseline, device, provider, threads, runs, warmup, prompt_lengths, decode_batches, context,
              out, no_memory, force):
    """ONNX Runtime latency of an exported ONNX_DIR (optionally vs --baseline); llama.cpp latency of a GGUF.

    A folder written by `compress export --format gguf` (or a .gguf file) is timed in llama.cpp instead:
    prefill at --prompt-lengths and the mean one-token decode step after --context tokens (batch 1 only),
    from llama.cpp's own timings (exporters/measure/gguf.py).

    ONNX_DIR must be a folder written by `compress export --format onnx`; a Hugging Face folder is refused
    with the export command to run (benchmarks/onnx_latency.py exports and benchmarks in one go).

    \b
    Measures: prefill latency (batch 1, --prompt-lengths), one-token decode latency with a KV cache of
    --context positions (--decode-batches): median and p90 of --runs runs after --warmup; peak RSS;
    file size; parameter count; FLOPs/token = 2*(linear params incl. lm_head) + 4*L*H*d*T.
    Writes bench_report.json into --out (default ONNX_DIR; an existing one only with --force) and prints a table.
    """
    if provider is not None:
        if device is not None and device != provider:
            raise ConfigError(f"--provider {provider} (deprecated) and --device {device} disagree; give only --device")
        click.echo(f"note: --provider is deprecated and will be removed in the next release; use --device {provider}",
                   err=True)
    provider = device or provider or "cpu"
    from exporters.measure.gguf import bench_gguf, find_gguf_file

    if find_gguf_file(onnx_dir) is not None:
        if provider != "cpu":
            raise ConfigError("a GGUF file is benchmarked in llama.cpp on the CPU; --device cuda applies to ONNX")
        rep = bench_gguf(onnx_dir, baseline, threads=threads, runs=runs, warmup=warmup,
                         prompt_lengths=_int_list(prompt_lengths, "--prompt-lengths"),
                         decode_batches=_int_list(decode_batches, "--decode-batches"), context=context, out=out,
                         force=force)
        click.echo(rep.table())
        for note in sorted(set(rep.model.notes + (rep.baseline.notes if rep.baseline else []))):
            click.echo(f"note: {note}", err=True)
        click.echo(f"Report: {rep.json_path}")
        return
    from exporters.measure.ort import bench

    rep = bench(onnx_dir, baseline, provider=provider, threads=threads, runs=runs, warmup=warmup,
                prompt_lengths=_int_list(prompt_lengths, "--prompt-lengths"),
                decode_batches=_int_list(decode_batches, "--decode-batches"), context=context, out=out,
                measure_memory=not no_memory, force=force)
    click.echo(rep.table())
    for note in rep.model.notes + (rep.baseline.notes if rep.baseline else []):
        click.echo(f"note: {note}", err=True)
    click.echo(f"Report: {rep.json_path}")
