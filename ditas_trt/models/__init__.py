"""DiT models in the original facebookresearch/DiT parameter layout, and their loaders."""
from ditas_trt.models.dit import DiT, DiT_models, DiTConfig
from ditas_trt.models.loading import build_dit, infer_config, load_dit, save_dit

__all__ = ["DiT", "DiT_models", "DiTConfig", "build_dit", "infer_config", "load_dit", "save_dit"]
