// Activation quantize instantiation: fp32 input.
#include "quantizeAct.cuh"

DITAS_INSTANTIATE_QUANTIZE_ACT(float)
