// Eager repacking of any-bit weights for the CPU kernels, for model loaders.
#pragma once
#include "quant/quantized_weight.h"

namespace anybit {

// Validates `w` (throws anybit::Error naming the problem) and builds the kernel layouts
// that the current ISA's kernels will use for it (decode and prefill choices), so the
// first forward pass does not pay for repacking. Thread-safe and idempotent; calling it
// is optional (kernels repack on first use otherwise). The raw `codes` stay untouched.
void prepare_qbits(QuantizedWeight& w);

}  // namespace anybit
