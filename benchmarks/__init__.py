"""Measurements of the library and its experiments, one module each.

presets (make bench): the released presets, JAX against PyTorch
(presets_torch); scaling: cost against inputs M and outputs O;
streamed_encode: inputs larger than memory; input_pipeline: the digits
loader; gpu: bf16 step throughput on a GPU; tpu_compile: the paper's
configurations compiled for TPU slices. common: what several share.
"""
