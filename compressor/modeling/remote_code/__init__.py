"""Hugging Face remote code for models whose decoder layers have different widths (issue #12).

:mod:`.configuration_lorapress` and :mod:`.modeling_lorapress` are self-contained (they import only ``torch``
and ``transformers``): :func:`compressor.modeling.perlayer.write_remote_code` copies them verbatim into every
non-uniform model folder, where ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``
runs them. This project's own loader builds the same classes from this package instead, so it never
executes code from a model folder.
"""
