"""Tiny random models shared by the tests (built in code, no hub)."""
from __future__ import annotations

import torch

CASES = {
    # name: (config class name, heads, kv heads, head_dim, hidden, intermediate)
    # transformers >= 5.16's LlamaConfig refuses hidden % heads != 0 (explicit head_dim or not): every head count
    # these llamas can be pruned to divides hidden. llama-mha: dense (heads * head_dim == hidden), any 1-4 heads;
    # llama-gqa: shaped as a head-pruned model (heads * head_dim != hidden), 6/4/2 heads, hidden a multiple of
    # 32 (GGUF Q8_0 blocks). Qwen2 and Mistral do not check it.
    "llama-mha": ("LlamaConfig", 4, 4, 12, 48, 48),
    "llama-gqa": ("LlamaConfig", 6, 2, 8, 96, 40),
    "qwen2-gqa": ("Qwen2Config", 4, 2, 8, 32, 48),
    "mistral-mqa": ("MistralConfig", 4, 1, 8, 32, 48),
}


def tiny_model(case: str = "llama-mha", layers: int = 2, vocab: int = 96, seed: int = 0, **config):
    """A random ``CASES[case]`` model; ``config`` overrides config fields (e.g. ``tie_word_embeddings=True``,
    ``initializer_range=0.1`` for peakier next-token distributions, ``rope_scaling={...}``)."""
    import transformers

    cfg_name, heads, kv, hd, hidden, inter = CASES[case]
    cfg_cls = getattr(transformers, cfg_name)
    model_cls = getattr(transformers, cfg_name.replace("Config", "ForCausalLM"))
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd, max_position_embeddings=128,
              tie_word_embeddings=False, attn_implementation="eager")
    cfg = cfg_cls(**(kw | config))
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    return model


def tiny_tokenizer(vocab: int = 96):
    """A word-level tokenizer over a fixed vocabulary (no hub, no training)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def tiny_text(n_words: int = 4000, vocab: int = 96, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    # a learnable pattern: mostly counting sequences with noise
    ids = []
    x = 0
    for _ in range(n_words):
        x = (x + 1) % (vocab - 3) if torch.rand(1, generator=g).item() < 0.8 else int(torch.randint(0, vocab - 3, (1,), generator=g))
        ids.append(x)
    lines = [" ".join(f"w{i}" for i in ids[j:j + 50]) for j in range(0, len(ids), 50)]
    return "\n\n".join(lines)


def tiny_job_inputs(tmp_path, case: str = "llama-gqa", layers: int = 2, n_words: int = 3000):
    """What a prune job reads from disk: a saved tiny model folder ``src`` and a calibration text file ``cal.txt``
    under ``tmp_path``; returns ``(src, data)``.

    A Qwen2 folder gets the byte-level BPE tokenizer (and a 320-token vocabulary): transformers 5 loads the
    tokenizer of every ``qwen2`` folder as its ``Qwen2Tokenizer``, which rebuilds a byte-level BPE from the
    vocabulary and merges, so the word-level one would not reload as saved (and the save check refuses it)."""
    from compressor.modeling.save import save_model_folder

    src = tmp_path / "src"
    bpe = CASES[case][0] == "Qwen2Config"
    save_model_folder(tiny_model(case, layers=layers, vocab=320 if bpe else 96),
                      tiny_bpe_tokenizer() if bpe else tiny_tokenizer(), src)
    data = tmp_path / "cal.txt"
    data.write_text(tiny_text(n_words))
    return src, data


def masked_lora(case: str = "llama-gqa"):
    """``(peft model, MaskState)``: :func:`tiny_model` with LoRA (B non-zero, so LoRA changes the output) and
    masks installed that remove one query head per KV group and half the MLP channels, chosen at random."""
    from compressor.algorithm.groups import discover_groups
    from compressor.algorithm.masking import MaskState, mask_lowest

    m = tiny_model(case)
    groups = discover_groups(m)
    pm = lora_with_random_b(m)
    masks = MaskState.full(groups).install(pm, groups)
    lg0 = groups.layers[0]
    per_kv = lg0.heads_per_kv if lg0.gqa else lg0.num_heads
    mask_lowest(masks, random_scores(groups), groups, max(1, per_kv - 1), lg0.intermediate_size // 2)
    return pm, masks


def lora_with_random_b(model):
    """``model`` wrapped with LoRA whose B factors are random (so LoRA changes the output)."""
    from compressor.algorithm.config import PruneConfig
    from compressor.algorithm.finetune import wrap_lora

    pm = wrap_lora(model, PruneConfig(ratio=0.5))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return pm


def random_scores(groups, seed: int = 1):
    """Random head / channel scores for every layer of ``groups`` (one seeded generator, layer by layer)."""
    from compressor.algorithm.scoring import LayerScores

    g = torch.Generator().manual_seed(seed)
    return [LayerScores(torch.rand(lg.num_heads, generator=g), torch.rand(lg.intermediate_size, generator=g))
            for lg in groups.layers]


#: text the tiny BPE tokenizer is trained on (English words, digits, punctuation, code)
_BPE_TEXT = (
    "The capital of France is Paris. Once upon a time, a small cat sat on the mat. "
    "Hello world! I've been told he's there; we'll see. def add(a, b):\n    return a + b\n"
    "Numbers 1 2 3 10 20 2024, prices $3.50 and 12% off. The quick brown fox jumps over the lazy dog. "
)


def tiny_bpe_tokenizer(vocab: int = 320, bos: str = "<s>", add_bos: bool = False):
    """A byte-level BPE tokenizer (GPT-2 style, as llama.cpp's ``gpt2`` model) of ``vocab`` entries, trained in
    milliseconds on a fixed text: 3 special tokens (``<|endoftext|>`` unk/pad, ``<s>`` bos, ``</s>`` eos), the
    256 byte symbols, then merges. ``add_bos``: prepend BOS when encoding with special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", bos, "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_BPE_TEXT] * 4, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 1)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="</s>", unk_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def assert_resumed_run_matches(a, b):
    """Run loop ``a`` and its resumed copy ``b`` to the end: equal losses at every step, masked == merged for
    ``a`` and bit-identical merged weights."""
    while not a.done:
        ra, rb = a.step(), b.step()
        assert ra.loss == rb.loss
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(2))
    a.pm.eval()
    with torch.no_grad():
        masked = a.pm(input_ids=ids).logits
    wa, wb = a.finish(), b.finish()
    with torch.no_grad():
        assert torch.allclose(masked, wa(input_ids=ids).logits, atol=1e-4)
    sa, sb = wa.state_dict(), wb.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def tiny_folder(tmp_path, case: str = "llama-mha", **config):
    """``(model, folder)``: :func:`tiny_model` and its tokenizer saved as a Hugging Face folder ``tmp_path / "m"``."""
    m = tiny_model(case, **config)
    d = tmp_path / "m"
    m.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return m, d


# ---- short runs of the loop ---------------------------------------------------------------------------------
def tiny_config(**kw):
    """A short run (12 steps, masks updated every 2, 32-token blocks, no perplexity); ``kw`` overrides fields."""
    from compressor.algorithm.config import PruneConfig

    base = dict(ratio=0.5, steps=12, prune_every=2, seq_len=32, batch_size=2, eval_windows=0, lr=1e-3)
    base.update(kw)
    return PruneConfig(**base)


def tiny_eval_config(**kw):
    """:func:`tiny_config` with perplexity before and after (2 windows of 64 tokens)."""
    from compressor.algorithm.config import PruneConfig

    base = dict(ratio=0.5, steps=12, prune_every=2, seq_len=32, batch_size=2, eval_windows=2, eval_seq_len=64, lr=1e-3)
    base.update(kw)
    return PruneConfig(**base)


def tiny_loop(case="llama-gqa", layers=2, **kw):
    """A ``PruneLoop`` over :func:`tiny_model` with :func:`tiny_config` ``(**kw)`` on :func:`tiny_text` blocks."""
    from compressor.algorithm.api import as_blocks
    from compressor.algorithm.loop import PruneLoop

    cfg = tiny_config(**kw)
    tok = tiny_tokenizer()
    m = tiny_model(case, layers=layers)
    return PruneLoop(m, cfg, as_blocks([tiny_text(3000)], tok, cfg))


def layer_groups(heads=6, kv=2, d=8, inter=40, index=0):
    """The groups of one decoder layer, without a model."""
    from compressor.algorithm.groups import LayerGroups

    return LayerGroups(index, heads, kv, d, inter)


def peft_random_lora(model, seed=0):
    """``model`` wrapped by peft itself (rank 4, every projection) with random A and B factors."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"])
    from compressor.core.quiet import quiet_peft_wrap

    with quiet_peft_wrap():
        pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B non-zero so merge parity means something
        for n, p in pm.named_parameters():
            if "lora_B" in n or "lora_A" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return pm


# ---- per-layer widths ------------------------------------------------------------------------------------------
#: :data:`CASES` with per-layer widths; llama-mha gets different KV heads per layer (MHA: KV heads = heads)
PER_LAYER_CASES = ("llama-gqa", "llama-mha", "qwen2-gqa", "mistral-mqa")
PER_LAYER_IDS = [[5, 9, 17, 3, 44, 2, 8, 60, 12, 1], [7, 7, 30, 31, 32, 90, 4, 4, 11, 0]]


def per_layer_masked(case: str, vocab: int = 96, lora: bool = True, **config):
    """``(masked model, masks, groups)``: 3 layers; layer 0 dense, layers 1-2 with one query head per KV group
    fewer and 8 / 16 MLP channels; LoRA B non-zero."""
    from compressor.algorithm.groups import discover_groups
    from compressor.algorithm.masking import MaskState, mask_lowest

    m = tiny_model(case, layers=3, vocab=vocab, **config)
    groups = discover_groups(m)
    pm = lora_with_random_b(m) if lora else m
    masks = MaskState.full(groups).install(pm, groups)
    lg0 = groups.layers[0]
    per = lg0.heads_per_kv if lg0.gqa else lg0.num_heads
    mask_lowest(masks, random_scores(groups), groups, [per, per - 1, per - 1], [lg0.intermediate_size, 8, 16])
    return pm, masks, groups


def logits_of(model, ids=PER_LAYER_IDS):
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits
