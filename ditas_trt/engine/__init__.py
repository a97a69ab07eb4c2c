"""TensorRT engines: one builder for TensorRT and TensorRT-RTX (:mod:`.builder`), sidecars and compatibility
checks (:mod:`.metadata`), deserialization-free plan inspection (:mod:`.inspect`) and the runtime (:mod:`.runtime`).

Nothing here imports TensorRT at module import time.
"""
