"""What :func:`exporters.measure.ort.bench` measured: :class:`ModelBench` per folder, :class:`BenchReport` with the ratios."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Name of the JSON report.
BENCH_REPORT_FILE = "bench_report.json"


def check_report_free(folder: Path, force: bool) -> None:
    """Refuse (before any timing) to replace ``folder/bench_report.json`` unless ``force``.

    Raises:
        OutputExistsError: the report exists and ``force`` is False.
    """
    from compressor.core.errors import OutputExistsError

    path = Path(folder) / BENCH_REPORT_FILE
    if path.exists() and not force:
        raise OutputExistsError(f"{str(path)!r} exists; pass --force (force=True) to replace it, or --out another folder")


@dataclass
class ModelBench:
    """Measurements of one exported folder.

    Attributes:
        path: the folder; ``onnx_file`` the graph inside it.
        file_bytes: size of the graph on disk (``*.onnx`` plus external data), bytes; ``folder_bytes`` all files.
        params: parameter count from the config (see module docstring).
        flops_per_token: forward FLOPs per token at ``context`` positions; ``flops`` has the parts.
        latency: case name (``prefill_128``, ``decode_b8``...) -> ``{"median_ms", "p90_ms", "mean_ms",
            "min_ms", "runs", "tokens_per_s", "flops_per_token"}``; the case's FLOPs per token use the mean
            attention context of its new tokens (``past + (new + 1) / 2``).
        peak_rss_mb / peak_rss_delta_mb: see module docstring (None if the memory probe was skipped).
        load_seconds: session creation time; ``providers``: the session's execution providers.
        quantized: True for an int8 / int4 export, False for fp32 (from the folder's ``export_report.json``),
            None without a report.
        format / precision: ``onnx``, ``onnx-optimized`` or ``onnx-genai``; ``fp32``, ``int8`` or ``int4``
            (None without a report). Decode cases also hold ``bytes_per_token``: the graph's bytes over the
            batch plus one sequence's fp32 KV cache at the decode context (what a memory-bound step reads).
        notes: problems that did not stop the benchmark (e.g. a failed memory probe).
    """

    path: str
    onnx_file: str
    config: dict[str, Any]
    file_bytes: int
    folder_bytes: int
    params: int
    flops_per_token: float
    flops: dict[str, float]
    quantized: bool | None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    peak_rss_delta_mb: float | None = None
    load_seconds: float = 0.0
    providers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    format: str | None = None
    precision: str | None = None


@dataclass
class BenchReport:
    """Result of :func:`bench`.

    Attributes:
        model: the measured folder; ``baseline`` the baseline (or None).
        ratios: with a baseline, model/baseline for every latency median (``latency.<case>``), the case's FLOPs
            (``flops.<case>``) and latency over FLOP ratio (``latency_over_flops.<case>``), for decode cases the
            bytes-per-token ratio (``bytes.<case>``) and latency over it (``latency_over_bytes.<case>``), ``flops_per_token``,
            ``params``, ``file_bytes`` and ``peak_rss_mb``; else None.
        settings: provider, threads, runs, warmup, prompt lengths, decode batches, context, machine.
        json_path: where ``bench_report.json`` was written (None if not written).
    """

    model: ModelBench
    baseline: ModelBench | None
    ratios: dict[str, float | None] | None
    settings: dict[str, Any]
    json_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "model": asdict(self.model),
                "baseline": asdict(self.baseline) if self.baseline else None, "ratios": self.ratios}

    def table(self) -> str:
        """A plain-text table: one row per metric, columns model / baseline / ratio."""
        rows: list[tuple[str, str, str, str]] = []
        m, b = self.model, self.baseline

        def fmt(v, unit=""):
            if v is None:
                return "-"
            if isinstance(v, float):
                return f"{v:.3g}{unit}" if abs(v) < 100 else f"{v:,.0f}{unit}"
            return f"{v:,}{unit}"

        def add(label, a, bb, key=None, unit=""):
            r = self.ratios.get(key) if (self.ratios and key) else None
            rows.append((label, fmt(a, unit), fmt(bb, unit) if b else "", f"{r:.3f}" if r is not None else ""))

        for case in m.latency:
            ml = m.latency[case]
            bl = b.latency.get(case) if b else None
            add(f"{case} median", ml["median_ms"], bl["median_ms"] if bl else None, f"latency.{case}", " ms")
            add(f"{case} p90", ml["p90_ms"], bl["p90_ms"] if bl else None, f"latency_p90.{case}", " ms")
            if b and self.ratios and self.ratios.get(f"flops.{case}"):
                rows.append((f"{case} FLOP ratio", "", "", f"{self.ratios[f'flops.{case}']:.3f}"))
                rows.append((f"{case} latency/FLOP ratio", "", "", f"{self.ratios[f'latency_over_flops.{case}']:.3f}"))
            if b and self.ratios and self.ratios.get(f"bytes.{case}"):
                rows.append((f"{case} bytes/token ratio", "", "", f"{self.ratios[f'bytes.{case}']:.3f}"))
                rows.append((f"{case} latency/bytes ratio", "", "", f"{self.ratios[f'latency_over_bytes.{case}']:.3f}"))
            add(f"{case} tokens/s", ml.get("tokens_per_s"), bl.get("tokens_per_s") if bl else None)
        add("params", m.params, b.params if b else None, "params")
        add("GFLOPs/token", m.flops_per_token / 1e9, b.flops_per_token / 1e9 if b else None, "flops_per_token")
        add("file size", m.file_bytes / 2**20, b.file_bytes / 2**20 if b else None, "file_bytes", " MiB")
        add("peak RSS", m.peak_rss_mb, b.peak_rss_mb if b else None, "peak_rss_mb", " MiB")
        head = ("metric", "model", "baseline" if b else "", "model/baseline" if b else "")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in [head] + rows]
        lines.insert(1, "-" * len(lines[0]))
        s = self.settings
        def kind(x: ModelBench) -> str:
            return f" ({x.format}, {x.precision})" if x.format else (" (int8)" if x.quantized else "")

        intro = [f"model:    {m.path}" + kind(m)]
        if b:
            intro.append(f"baseline: {b.path}" + kind(b))
        intro.append(f"{s['provider']}, {s['threads']} threads, {s['runs']} runs after {s['warmup']} warm-up, "
                     f"decode context {s['context']}; GFLOPs/token at T={s['context']}, per-case FLOP ratios at each case's context")
        return "\n".join(intro + [""] + lines)


def compare(m: ModelBench, b: ModelBench) -> dict[str, float | None]:
    def r(x, y):
        return (x / y) if (x is not None and y) else None

    out: dict[str, float | None] = {}
    for case, st in m.latency.items():
        if case not in b.latency:
            continue
        out[f"latency.{case}"] = r(st["median_ms"], b.latency[case]["median_ms"])
        out[f"latency_p90.{case}"] = r(st["p90_ms"], b.latency[case]["p90_ms"])
        fr = r(st.get("flops_per_token"), b.latency[case].get("flops_per_token"))
        if fr:
            out[f"flops.{case}"] = fr
            out[f"latency_over_flops.{case}"] = out[f"latency.{case}"] / fr if out[f"latency.{case}"] else None
        br = r(st.get("bytes_per_token"), b.latency[case].get("bytes_per_token"))
        if br:
            out[f"bytes.{case}"] = br
            out[f"latency_over_bytes.{case}"] = out[f"latency.{case}"] / br if out[f"latency.{case}"] else None
    out["flops_per_token"] = r(m.flops_per_token, b.flops_per_token)
    out["params"] = r(m.params, b.params)
    out["file_bytes"] = r(m.file_bytes, b.file_bytes)
    out["peak_rss_mb"] = r(m.peak_rss_mb, b.peak_rss_mb)
    return out
