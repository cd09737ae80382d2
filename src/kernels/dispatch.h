// The one kernel dispatch table. Each op has a scalar reference (kept for tests)
// and SIMD variants; the table for the best ISA of this CPU is picked at first use
// (override with ANYBIT_ISA=scalar|avx2|avx512).
//
// Conventions: activations are fp32 row-major; a weight matrix is stored as
// `rows` output features, each a contiguous row of `cols` input elements in its
// dtype (PyTorch Linear layout). Multi-threading is inside the kernels (OpenMP).
#pragma once
#include <cstdint>
#include <string_view>

#include "core/dtype.h"

namespace anybit {

struct WeightMatrix {
  DType dtype = DType::F32;
  int64_t rows = 0;  // output features (N)
  int64_t cols = 0;  // input features (K)
  const void* data = nullptr;
};

// y[m, N] = x[m, K] · W[N, K]^T  (y is overwritten)
using MatmulFn = void (*)(const float* x, int64_t m, const WeightMatrix& w, float* y);
// out[i] = x[i] / rms(x) * weight[i] for each of m rows of length n; weight in wdtype.
using RmsNormFn = void (*)(const float* x, const void* weight, DType wdtype, int64_t m, int64_t n,
                           float eps, float* out);
// out[m, n] = silu(gate[m, n]) * up[m, n]; gate and up are rows of a fused [m, 2n] buffer
// when ld == 2n, or separate when pointers differ (ld is the row stride of gate/up).
using SiluMulFn = void (*)(const float* gate, const float* up, int64_t m, int64_t n, int64_t ld,
                           float* out);

enum class Isa { Scalar, Avx2, Avx512 };
std::string_view isa_name(Isa isa);

struct KernelTable {
  Isa isa = Isa::Scalar;
  MatmulFn matmul[kNumDTypes] = {};  // indexed by DType; nullptr = unsupported
  RmsNormFn rmsnorm = nullptr;
  SiluMulFn silu_mul = nullptr;
};

// Best supported ISA for this CPU (respecting ANYBIT_ISA).
const KernelTable& kernels();
// A specific ISA's table (tests compare variants with the scalar reference).
// Returns nullptr when this CPU cannot run it.
const KernelTable* kernels_for(Isa isa);

// Convenience wrapper: throws anybit::Error for an unsupported dtype.
void matmul(const float* x, int64_t m, const WeightMatrix& w, float* y);

}  // namespace anybit
