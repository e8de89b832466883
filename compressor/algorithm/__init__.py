"""LoRAPrune itself, in memory: the configuration, groups, criteria and scoring, the width plan and schedule,
masking, compensation, LoRA fine-tune loss, the loop, the merge, and :func:`~compressor.algorithm.api.prune`."""
