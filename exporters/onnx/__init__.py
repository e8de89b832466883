"""ONNX export: the optimum-style graph with KV cache (torch exporter), int8 / int4 weights, fusion, the ORT GenAI folder, and their validation against PyTorch."""
