"""ditas-trt: DiTAS W4A8 quantization of Diffusion Transformers, deployed with TensorRT."""
from importlib.metadata import PackageNotFoundError, version as _version

from ditas_trt._modelopt_hook import install as _install_modelopt_hook

try:
    __version__ = _version("ditas-trt")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_install_modelopt_hook()  # the ModelOpt 'ditas' mode registers itself once ModelOpt quantization is imported
