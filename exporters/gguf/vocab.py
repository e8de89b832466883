"""The tokenizer written into a GGUF file: a Hugging Face byte-level BPE tokenizer as llama.cpp's ``gpt2`` model.

What is written (keys of llama.cpp's ``tokenizer.ggml.*``):

* ``model = "gpt2"`` (byte-level BPE), ``tokens`` (the vocabulary in its byte-level spelling, padded to the
  model's ``vocab_size`` with ``[PAD{i}]`` entries of type UNUSED), ``token_type`` (NORMAL; CONTROL for
  special added tokens; USER_DEFINED for other added tokens), ``merges`` (``"a b"`` strings);
* ``pre``: llama.cpp's name for the pre-tokenizer (:func:`pre_tokenizer_name`);
* ``bos/eos/padding/unknown_token_id``: the model config's ``*_token_id`` where set (the ids the model was
  trained and generates with), else the tokenizer's;
* ``add_bos_token`` / ``add_eos_token``: whether the Hugging Face tokenizer adds them when encoding with
  special tokens (measured by encoding a sample), so llama.cpp tokenizes like the folder's tokenizer;
* ``chat_template`` when the tokenizer has one.

SentencePiece (llama.cpp ``llama``) and WordPiece tokenizers are not supported yet: they raise
:class:`UnsupportedArchitectureError` naming what is supported.

Pre-tokenizer name, the way llama.cpp's converter derives it: the sha256 of ``str(ids)`` of a fixed check
text (:data:`CHECK_TEXT`) is looked up in :data:`PRE_BY_HASH` (hashes of known tokenizers, from llama.cpp's
``convert_hf_to_gguf.py`` table). The ids are taken both with and without the tokenizer's special tokens,
because a tokenizer rebuilt from a GGUF file (the built-in SmolLM2) adds a BOS the original did not. A
tokenizer not in the table is recognised by the structure of its ``pre_tokenizer`` (:data:`PRE_BY_STRUCTURE`,
e.g. a lone GPT-2 ``ByteLevel`` is ``gpt-2``). Anything else must be named with ``tokenizer_pre=``. The
validation (:mod:`exporters.gguf.validation`) then checks llama.cpp's tokenization against the tokenizer's.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from compressor.core.errors import ConfigError, UnsupportedArchitectureError

#: llama.cpp's check text for the BPE pre-tokenizer (``get_vocab_base_pre`` in ``convert_hf_to_gguf.py``).
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

#: sha256 of the check text's ids -> llama.cpp pre-tokenizer, for the tokenizers of the architectures we export.
PRE_BY_HASH = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",     # HuggingFaceTB/SmolLM-135M
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",      # Qwen/Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",      # Qwen/Qwen3-Embedding-0.6B
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",      # openai-community/gpt2
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",     # Mistral-Nemo-Base-2407
}

_GPT2_BYTELEVEL = {"type": "ByteLevel", "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}

#: (description, pre_tokenizer pattern) -> llama.cpp pre-tokenizer; a pattern matches when every key it names
#: has that value (lists element-wise), so ``add_prefix_space`` / ``trim_offsets`` do not matter.
PRE_BY_STRUCTURE: list[tuple[str, dict[str, Any], str]] = [
    ("GPT-2 ByteLevel regex", _GPT2_BYTELEVEL, "gpt-2"),
    ("single digits, then GPT-2 ByteLevel regex",
     {"type": "Sequence", "pretokenizers": [_DIGITS, _GPT2_BYTELEVEL]}, "smollm"),
]


def _matches(obj: Any, pattern: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(obj, dict) and all(_matches(obj.get(k), v) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(obj, list) and len(obj) == len(pattern) and all(map(_matches, obj, pattern))
    return bool(obj == pattern)


def check_hashes(tokenizer) -> list[str]:
    """sha256 of the check text's ids: encoded with the tokenizer's special tokens, then without."""
    out = []
    for special in (True, False):
        ids = tokenizer.encode(CHECK_TEXT, add_special_tokens=special)
        h = hashlib.sha256(str(list(ids)).encode()).hexdigest()
        if h not in out:
            out.append(h)
    return out


def pre_tokenizer_name(tokenizer, tok_json: dict[str, Any] | None = None) -> tuple[str, str]:
    """``(llama.cpp pre-tokenizer name, how it was found)`` for a fast byte-level BPE tokenizer.

    Raises:
        UnsupportedArchitectureError: neither the hash nor the structure is known (pass ``tokenizer_pre``).
    """
    hashes = check_hashes(tokenizer)
    for h in hashes:
        if h in PRE_BY_HASH:
            return PRE_BY_HASH[h], f"hash {h[:16]}"
    tok_json = tok_json if tok_json is not None else _tokenizer_json(tokenizer)
    pre = tok_json.get("pre_tokenizer")
    norm = tok_json.get("normalizer")
    # a normalizer (NFC, lowercase...) is part of what the hash identifies; the structural match assumes none
    plain = norm is None or (norm.get("type") == "Sequence" and not norm.get("normalizers"))
    for desc, pattern, name in PRE_BY_STRUCTURE:
        if plain and _matches(pre, pattern):
            return name, f"structure: {desc}"
    raise UnsupportedArchitectureError(
        f"the tokenizer's BPE pre-tokenizer is not one llama.cpp is known to implement the same way (check-text "
        f"hashes {', '.join(h[:16] for h in hashes)}; pre_tokenizer {json.dumps(pre)[:300]}); known: "
        f"{', '.join(sorted(set(PRE_BY_HASH.values())))}; pass tokenizer_pre= (--tokenizer-pre) with llama.cpp's "
        f"name for it"
    )


def _tokenizer_json(tokenizer) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedArchitectureError(
            f"GGUF export needs a fast (tokenizers) tokenizer, got {type(tokenizer).__name__}")
    return json.loads(backend.to_str())


@dataclass
class GGUFVocab:
    """Everything the GGUF's ``tokenizer.ggml.*`` keys hold (see module docstring)."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    pre_source: str
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, pad, unk
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None

    def ascii_token(self) -> int | None:
        """Id of the first NORMAL token spelled with ASCII letters only (its text is complete UTF-8)."""
        for i, (t, k) in enumerate(zip(self.tokens, self.token_types)):
            if k == 1 and t.isascii() and t.isalpha():
                return i
        return None

    def summary(self) -> dict[str, Any]:
        return {"model": "gpt2", "pre": self.pre, "pre_source": self.pre_source, "tokens": len(self.tokens),
                "merges": len(self.merges), "special_ids": self.special_ids, "add_bos_token": self.add_bos,
                "add_eos_token": self.add_eos, "chat_template": self.chat_template is not None}


def build_vocab(tokenizer, config, vocab_size: int, tokenizer_pre: str | None = None) -> GGUFVocab:
    """Read ``tokenizer`` (a fast byte-level BPE tokenizer) into a :class:`GGUFVocab` of ``vocab_size`` entries.

    Raises:
        UnsupportedArchitectureError: not a byte-level BPE tokenizer / unknown pre-tokenizer.
        ConfigError: the tokenizer has ids >= ``vocab_size``.
    """
    from gguf import TokenType

    if tokenizer is None:
        raise ConfigError("GGUF export needs the model's tokenizer (llama.cpp reads it from the file); pass tokenizer=")
    tj = _tokenizer_json(tokenizer)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not _has_byte_level(tj):
        raise UnsupportedArchitectureError(
            f"GGUF export supports byte-level BPE tokenizers (llama.cpp 'gpt2'; LLaMA-3, Qwen2, SmolLM, GPT-2), got a "
            f"{model.get('type')} tokenizer without a ByteLevel pre-tokenizer; SentencePiece (LLaMA-2, Mistral v0.1) "
            f"is not supported yet"
        )
    if tokenizer_pre:
        pre, pre_source = tokenizer_pre, "given"
    else:
        pre, pre_source = pre_tokenizer_name(tokenizer, tj)
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {int(a["id"]): a for a in tj.get("added_tokens") or []}
    for i, a in added.items():
        vocab[a["content"]] = i
    top = max(vocab.values(), default=-1)
    if top >= vocab_size:
        raise ConfigError(f"the tokenizer has token id {top}, but the model's vocab_size is {vocab_size}")
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
        elif i in added:
            tokens.append(by_id[i])
            types.append(int(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    special: dict[str, int] = {}
    for key in ("bos", "eos", "pad", "unk"):
        v = getattr(config, f"{key}_token_id", None)
        if isinstance(v, list):
            v = v[0] if v else None
        if not isinstance(v, int):
            v = getattr(tokenizer, f"{key}_token_id", None)
        if isinstance(v, int) and 0 <= v < vocab_size:
            special[key] = v
    sample = "Hello"
    with_sp = list(tokenizer.encode(sample, add_special_tokens=True))
    without = list(tokenizer.encode(sample, add_special_tokens=False))
    bos_tok, eos_tok = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = len(with_sp) > len(without) and bos_tok is not None and with_sp[0] == bos_tok
    add_eos = len(with_sp) > len(without) and eos_tok is not None and with_sp[-1] == eos_tok
    if add_bos and special.get("bos") != bos_tok:
        special["bos"] = int(bos_tok)  # the id the tokenizer actually prepends
    template = getattr(tokenizer, "chat_template", None)
    return GGUFVocab(tokens=tokens, token_types=types, merges=merges, pre=pre, pre_source=pre_source,
                     special_ids=special, add_bos=add_bos, add_eos=add_eos,
                     chat_template=template if isinstance(template, str) else None)


def _has_byte_level(tj: dict[str, Any]) -> bool:
    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(tj.get("pre_tokenizer"))


def write_vocab(writer, v: GGUFVocab) -> None:
    """Add the ``tokenizer.ggml.*`` keys of ``v`` to a ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(v.pre)
    writer.add_token_list(v.tokens)
    writer.add_token_types(v.token_types)
    if v.merges:
        writer.add_token_merges(v.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "pad": writer.add_pad_token_id,
              "unk": writer.add_unk_token_id}
    for key, value in v.special_ids.items():
        adders[key](value)
    writer.add_add_bos_token(v.add_bos)
    writer.add_add_eos_token(v.add_eos)
    if v.chat_template:
        writer.add_chat_template(v.chat_template)
