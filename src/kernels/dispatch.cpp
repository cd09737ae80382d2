#include "kernels/dispatch.h"

#include <cstdlib>
#include <string>

#include "core/error.h"
#include "kernels/kquants_kernels.h"
#include "kernels/qbits_kernels.h"
#include "kernels/scalar_ref.h"
#include "kernels/simd_kernels.h"

namespace anybit {

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

namespace scalar { void matmul_qbits(const float* x, int64_t m, const WeightMatrix& w, float* y); }

namespace {

bool cpu_supports(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni") &&
             __builtin_cpu_supports("f16c");
  }
  return false;
}

KernelTable make_scalar() {
  KernelTable t;
  t.isa = Isa::Scalar;
  for (DType d : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q5_K,
                  DType::Q6_K, DType::Q2_K, DType::Q3_K})
    t.matmul[int(d)] = scalar::matmul;
  t.matmul[int(DType::QBITS)] = scalar::matmul_qbits;  // kernels/matmul_qbits_scalar.cpp
  t.rmsnorm = scalar::rmsnorm;
  t.silu_mul = scalar::silu_mul;
  return t;
}

// SIMD tables start from the scalar one and override what they implement.
KernelTable make_table(Isa isa) {
  KernelTable t = make_scalar();
  t.isa = isa;
  switch (isa) {
    case Isa::Scalar: break;
    case Isa::Avx2:
      t.matmul[int(DType::F32)] = avx2::matmul_f32;
      t.matmul[int(DType::F16)] = avx2::matmul_f16;
      t.matmul[int(DType::BF16)] = avx2::matmul_bf16;
      t.matmul[int(DType::Q8_0)] = avx2::matmul_q8_0;
      t.matmul[int(DType::Q4_0)] = avx2::matmul_q4_0;
      t.matmul[int(DType::QBITS)] = avx2::matmul_qbits;  // kernels/qbits_select.cpp
      t.rmsnorm = avx2::rmsnorm;
      t.silu_mul = avx2::silu_mul;
      break;
    case Isa::Avx512:
      t.matmul[int(DType::F32)] = avx512::matmul_f32;
      t.matmul[int(DType::F16)] = avx512::matmul_f16;
      t.matmul[int(DType::BF16)] = avx512::matmul_bf16;
      t.matmul[int(DType::Q8_0)] = avx512::matmul_q8_0;
      t.matmul[int(DType::Q4_0)] = avx512::matmul_q4_0;
      t.matmul[int(DType::QBITS)] = avx512::matmul_qbits;  // kernels/qbits_select.cpp
      t.matmul[int(DType::Q4_K)] = avx512::matmul_q4_k;  // kernels/kquants_avx512.cpp
      t.matmul[int(DType::Q5_K)] = avx512::matmul_q5_k;
      t.matmul[int(DType::Q6_K)] = avx512::matmul_q6_k;
      t.matmul[int(DType::Q2_K)] = avx512::matmul_q2_k;
      t.matmul[int(DType::Q3_K)] = avx512::matmul_q3_k;
      t.rmsnorm = avx512::rmsnorm;
      t.silu_mul = avx512::silu_mul;
      break;
  }
  return t;
}

}  // namespace

const KernelTable* kernels_for(Isa isa) {
  static const KernelTable tables[3] = {make_table(Isa::Scalar), make_table(Isa::Avx2),
                                        make_table(Isa::Avx512)};
  if (!cpu_supports(isa)) return nullptr;
  return &tables[int(isa)];
}

const KernelTable& kernels() {
  static const KernelTable* chosen = [] {
    const char* env = std::getenv("ANYBIT_ISA");
    if (env && *env) {
      for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
        if (isa_name(isa) == env) {
          const KernelTable* t = kernels_for(isa);
          if (!t) fail("ANYBIT_ISA={}: this CPU cannot run it", env);
          return t;
        }
      fail("ANYBIT_ISA={}: unknown (scalar, avx2, avx512)", env);
    }
    for (Isa isa : {Isa::Avx512, Isa::Avx2})
      if (const KernelTable* t = kernels_for(isa)) return t;
    return kernels_for(Isa::Scalar);
  }();
  return *chosen;
}

void matmul(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  MatmulFn f = kernels().matmul[int(w.dtype)];
  if (!f) fail("no matmul kernel for weight dtype {}", dtype_name(w.dtype));
  f(x, m, w, y);
}

}  // namespace anybit
