"""DiTAS quantization in ModelOpt, and the one quantized-linear format.

Light imports only: the presets are plain dicts; the ModelOpt parts load on first use.

    import modelopt.torch.quantization as mtq
    from ditas_trt.quant import DITAS_W4A8_CFG
    mtq.quantize(model, DITAS_W4A8_CFG, forward_loop)          # or ditas_trt.quant.quantize(...) with checks
"""
from ditas_trt.quant.config import DEFAULT_LAYERS, DITAS_W4A8_CFG, DITAS_W8A8_CFG, PRESETS, QuantRecipe, preset

_LAZY = {
    "quantize": "ditas_trt.quant.ditas",
    "quantize_dit": "ditas_trt.quant.ditas",
    "QuantizeResult": "ditas_trt.quant.ditas",
    "CalibrationSettings": "ditas_trt.quant.calibration",
    "export_packed": "ditas_trt.quant.export",
    "DitasConfig": "ditas_trt.quant.mode",
    "write_calibration_dir": "ditas_trt.quant.output",
    "load_modelopt": "ditas_trt.quant.output",
}

__all__ = ["DEFAULT_LAYERS", "DITAS_W4A8_CFG", "DITAS_W8A8_CFG", "PRESETS", "QuantRecipe", "preset", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ditas_trt.quant' has no attribute {name!r}")
