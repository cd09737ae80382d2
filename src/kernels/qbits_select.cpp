// Run-time choice of the any-bit kernel per (weight, m).
#include <string>

#include "core/error.h"
#include "kernels/qbits.h"
#include "kernels/qbits_kernels.h"
#include "kernels/qbits_pack.h"

namespace anybit {

namespace {

const QuantizedWeight& qweight(const WeightMatrix& w) {
  if (!w.data) fail("qbits matmul: weight has no data");
  const auto& q = *static_cast<const QuantizedWeight*>(w.data);
  if (q.rows != w.rows || q.cols != w.cols)
    fail("qbits matmul: weight is [{}, {}] but the matrix says [{}, {}]", q.rows, q.cols, w.rows, w.cols);
  return q;
}

}  // namespace

namespace avx512 {
void matmul_qbits(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  if (m <= 0) return;
  qbits_int8_matmul(qweight(w), x, m, y);
}
}  // namespace avx512

std::string qbits_kernel_name(const QuantizedWeight& w, int64_t m) {
  (void)w;
  (void)m;
  return "avx512-vnni";
}

}  // namespace anybit
