"""The one place that runs llama.cpp: a GGUF file loaded with ``xllamacpp`` (llama.cpp's server in-process).

:class:`LlamaCpp` gives what validation and benchmarking need and nothing else:

* :meth:`LlamaCpp.next_token_logprobs` - the full next-token log-probabilities (log-softmax of the raw
  logits, every vocabulary entry) after a prompt given as token ids, used as given (no BOS added);
* :meth:`LlamaCpp.tokenize` - llama.cpp's tokenization of a text with the GGUF's embedded tokenizer (the
  server's ``/tokenize`` endpoint on ``listening_address``);
* :meth:`LlamaCpp.timed_completion` - a greedy completion with the server's own timings (prompt and
  per-token decode milliseconds).

The KV cache is float32 and flash attention is off so that an f32 GGUF is compared with PyTorch float32
without llama.cpp's default f16 cache rounding the attention inputs.

``xllamacpp`` is optional (``pip install "lorapress[gguf]"``); :func:`import_llamacpp` raises a
:class:`DependencyMissingError` that says so.
"""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from compressor.core.errors import DependencyMissingError, ExportError
from compressor.core.optional import require

#: the pip requirement that provides llama.cpp from Python (also the ``[gguf]`` extra's pin)
XLLAMACPP_PIN = "xllamacpp==2026.10.11549"
INSTALL_HINT = 'pip install "lorapress[gguf]"'


def import_llamacpp(what: str = "GGUF validation") -> Any:
    """``xllamacpp``, or a :class:`DependencyMissingError` that names the extra to install."""
    return require("xllamacpp", what, extra=f'"lorapress[gguf]" (or {XLLAMACPP_PIN})')


def llamacpp_available() -> bool:
    try:
        import_llamacpp()
    except DependencyMissingError:
        return False
    return True


class LlamaCpp:
    """A GGUF file loaded in llama.cpp (one slot, ``n_ctx`` positions, CPU threads).

    Args:
        path: the ``.gguf`` file.
        n_ctx: context positions (default 512).
        threads: CPU threads for prefill and decode (default 1).
        kv_f32: float32 KV cache (default True; llama.cpp's own default is f16).
        quiet: lower llama.cpp's log verbosity (default True).

    Use as a context manager (the server is stopped on exit).

    Example:
        >>> with LlamaCpp("out/model.gguf") as lc:                  # doctest: +SKIP
        ...     lp = lc.next_token_logprobs([5, 17, 42], vocab=200)
    """

    def __init__(self, path: str | os.PathLike, *, n_ctx: int = 512, threads: int = 1, kv_f32: bool = True,
                 quiet: bool = True):
        x = import_llamacpp()
        p = x.CommonParams()
        p.model.path = str(path)
        p.n_ctx = int(n_ctx)
        p.n_parallel = 1
        p.cpuparams.n_threads = int(threads)
        p.cpuparams_batch.n_threads = int(threads)
        p.warmup = False
        p.n_gpu_layers = 0
        p.flash_attn_type = x.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if kv_f32:
            p.cache_type_k = x.ggml_type.GGML_TYPE_F32
            p.cache_type_v = x.ggml_type.GGML_TYPE_F32
        if quiet:
            p.verbosity = 0  # quiet
        self.path = Path(path)
        self.n_ctx = int(n_ctx)
        try:
            self._server = x.Server(p)
        except Exception as exc:  # the binding raises RuntimeError/ValueError on a file it cannot load
            raise ExportError(f"llama.cpp cannot load {str(path)!r}: {type(exc).__name__}: {exc}"
                              + (" (llama.cpp's log says why: LlamaCpp(path, quiet=False) prints it)" if quiet else "")
                              ) from exc

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._server = None

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._server is None:
            raise ExportError("the llama.cpp server was closed")
        r = self._server.handle_completions(body)
        if not isinstance(r, dict) or "choices" not in r:
            raise ExportError(f"llama.cpp completion failed: {str(r)[:500]}")
        return r

    def next_token_logprobs(self, ids: list[int], vocab: int, safe_token: int | None = None):
        """Log-probabilities (float64 numpy array of ``vocab`` entries) of the token after ``ids``.

        ``safe_token``: a token whose text is complete UTF-8 (e.g. an ASCII word). The server withholds a
        sampled token that is an incomplete UTF-8 byte sequence, and its log-probabilities with it; a logit
        bias on ``safe_token`` makes it the sampled one. The reported log-probabilities are those of the raw
        logits, before the bias (checked: identical with and without it).
        """
        import numpy as np

        body: dict[str, Any] = {"prompt": [int(i) for i in ids], "max_tokens": 1, "temperature": 0.0,
                                "n_probs": int(vocab), "cache_prompt": False}
        if safe_token is not None:
            body["logit_bias"] = [[int(safe_token), 1000.0]]
        r = self._completion(body)
        try:
            top = r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ExportError(f"llama.cpp returned no log-probabilities: {str(r)[:500]}") from exc
        out = np.full(vocab, -np.inf)
        for t in top:
            out[int(t["id"])] = float(t["logprob"])
        if len(top) < vocab:
            raise ExportError(f"llama.cpp returned {len(top)} log-probabilities, expected the whole vocabulary "
                              f"({vocab}); does the GGUF's vocabulary size match the model's?")
        return out

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids of ``text`` with the GGUF's tokenizer (``add_special``: add BOS/EOS as the GGUF says)."""
        addr = str(self._server.listening_address) if self._server is not None else ""
        url = (addr if addr.startswith("http") else f"http://{addr}") + "/tokenize"
        req = urllib.request.Request(url, data=json.dumps({"content": text, "add_special": add_special}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return [int(t) for t in json.loads(resp.read())["tokens"]]
        except (OSError, ValueError, KeyError) as exc:
            raise ExportError(f"llama.cpp's /tokenize at {url} failed: {exc}") from exc

    def timed_completion(self, ids: list[int], new_tokens: int) -> dict[str, Any]:
        """Greedy completion of ``new_tokens`` tokens after ``ids`` (EOS ignored); the server's ``timings``
        (``prompt_ms``, ``prompt_n``, ``predicted_ms``, ``predicted_n``, ``predicted_per_token_ms``)."""
        r = self._completion({"prompt": [int(i) for i in ids], "max_tokens": int(new_tokens), "temperature": 0.0,
                              "cache_prompt": False, "ignore_eos": True})
        t = r.get("timings")
        if not isinstance(t, dict):
            raise ExportError(f"llama.cpp returned no timings: {str(r)[:300]}")
        return t
