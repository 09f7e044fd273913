"""Checkpoint formats of the ``nbwoq`` command: sources, the quantization step, writers.

``source`` opens checkpoints, ``quantizer`` selects tensors and runs the core on them,
``nbwoq_format`` / ``gguf_format`` / ``gptq_format`` lay out the results, and ``run``
drives one streamed, atomic, resumable run.
"""
