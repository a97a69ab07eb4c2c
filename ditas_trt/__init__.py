"""ditas-trt: DiTAS W4A8 quantization of Diffusion Transformers, deployed with TensorRT."""
from ditas_trt._modelopt_hook import install as _install_modelopt_hook

_install_modelopt_hook()  # the ModelOpt 'ditas' mode registers itself once ModelOpt quantization is imported
