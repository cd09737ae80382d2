// Public face of the any-bit (QBITS) CPU kernels: which kernel runs a weight, and eager
// repacking (see qbits_prepare.h).
#pragma once
#include <cstdint>
#include <string>

#include "quant/quantized_weight.h"

namespace anybit {

// Name of the kernel the current ISA table runs for this weight at batch m, e.g.
// "avx512-vnni" or "avx512-lut" (what `anybit bench` prints).
std::string qbits_kernel_name(const QuantizedWeight& w, int64_t m);

}  // namespace anybit
