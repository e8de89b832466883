"""GGUF export for llama.cpp: the writer, the vocabulary, validation against PyTorch through llama.cpp in process."""
