// Activation quantize instantiation: fp16 input.
#include "quantizeAct.cuh"

DITAS_INSTANTIATE_QUANTIZE_ACT(__half)
