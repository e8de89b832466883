"""The foundation every other part imports (and nothing in lorapress below it): errors, atomic file writes, output
locks, cached assets, optional dependencies, silenced third-party messages, memory tracing, device choice and the
ONNX Runtime session factory."""
