"""Models as lorapress reads and writes them: resolving and loading a model (built-in name, HF folder, GGUF file,
hub id), the per-model-type architecture table, per-layer-width configs and their remote code, sizes, peft
unwrapping, and saving an HF folder."""
