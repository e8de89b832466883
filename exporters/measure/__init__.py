"""Latency, throughput and memory of exported models side by side (``compress bench``): ONNX Runtime (:mod:`.ort`)
and llama.cpp (:mod:`.gguf`), with the FLOP and byte ratios they are compared to."""
