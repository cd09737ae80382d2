// GGUF blocks as QBITS (quant/gguf_qbits.h), the conversion the CUDA backend loads llama.cpp
// files through: every value of the QBITS copy against the CPU's own dequantization of the
// blocks. Exact formats (Q8_0, Q4_0, Q4_K, Q5_K) to fp32 rounding; the others (Q6_K, Q3_K,
// Q2_K) within one 8-bit step of their group. Fresh random blocks each run (seed
// printed; replay with ANYBIT_TEST_SEED); the output buffers are poisoned first.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/gguf_qbits.h"
#include "test_gguf_common.h"
#include "test_qbits_util.h"

namespace anybit {
namespace {

TEST(GgufQbits, EveryBlockFormatKeepsItsValues) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const DType types[] = {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q3_K, DType::Q2_K};
  for (DType t : types) {
    const int64_t blk = dtype_block_size(t);
    const int64_t rows = 1 + int64_t(rng() % 7), cols = blk * (1 + int64_t(rng() % 3));
    SCOPED_TRACE(std::string(dtype_name(t)) + " " + std::to_string(rows) + "x" + std::to_string(cols));
    const auto blocks = gguf_test::random_gguf_blocks(t, rows * cols / blk, 0.05f, rng);
    const QuantizedWeight q = quant::qbits_from_gguf_blocks(t, blocks.data(), rows, cols);
    const bool exact = quant::gguf_blocks_map_exactly(t);
    EXPECT_EQ(exact, t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_K || t == DType::Q5_K);
    ASSERT_EQ(q.rows, rows);
    ASSERT_EQ(q.cols, cols);
    EXPECT_EQ(q.group, 32);
    EXPECT_EQ(q.bits, t == DType::Q4_0 || t == DType::Q4_K ? 4 : t == DType::Q5_K ? 5 : 8);
    EXPECT_EQ(q.asymmetric, t == DType::Q4_K || t == DType::Q5_K);
    ASSERT_EQ(q.codes.size(), size_t(rows) * q.row_code_bytes());

    const size_t rb = dtype_row_bytes(t, cols);
    std::vector<float> want(static_cast<size_t>(cols)), got(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      std::fill(want.begin(), want.end(), std::numeric_limits<float>::quiet_NaN());
      std::fill(got.begin(), got.end(), std::numeric_limits<float>::quiet_NaN());
      dequantize_row(t, blocks.data() + size_t(r) * rb, want.data(), cols);
      q.dequantize_row(r, got.data());
      for (int64_t g = 0; g < cols / 32; ++g) {
        float amax = 0.0f;
        for (int64_t c = g * 32; c < g * 32 + 32; ++c) amax = std::max(amax, std::fabs(want[size_t(c)]));
        // Exact: fp32 rounding of s * (code - z) against d * sc * q - dmin * m. Requantized:
        // one 8-bit step amax / 128 (the side opposite the largest magnitude can reach one
        // step past code 127), plus 128 times the f16 rounding of the scale amax / 128, with
        // a factor 2 of margin: relative 2^-11 for a normal f16, but an absolute 2^-25 (half
        // the spacing) once the scale is subnormal (groups with amax below 2^-7; a random
        // draw had amax 0.0035 and erred by 1.14 steps).
        const float s = amax / 128.0f, s_err = std::max(s * 0x1p-11f, 0x1p-25f);
        const float tol = exact ? 1e-5f * amax + 1e-9f : amax / 128.0f + 2.0f * 128.0f * s_err + 1e-9f;
        for (int64_t c = g * 32; c < g * 32 + 32; ++c)
          ASSERT_NEAR(got[size_t(c)], want[size_t(c)], tol) << "row " << r << " column " << c;
      }
    }
  }
}

TEST(GgufQbits, RefusesWhatIsNotWholeGgufBlocks) {
  std::mt19937_64 rng(3);
  const auto blocks = gguf_test::random_gguf_blocks(DType::Q4_K, 2, 0.05f, rng);
  EXPECT_THROW(quant::qbits_from_gguf_blocks(DType::Q4_K, blocks.data(), 1, 384), Error);  // not whole blocks
  EXPECT_THROW(quant::qbits_from_gguf_blocks(DType::Q4_K, blocks.data(), 0, 256), Error);
  const std::vector<float> f(64, 1.0f);
  EXPECT_THROW(quant::qbits_from_gguf_blocks(DType::F32, f.data(), 2, 32), Error);
  EXPECT_THROW(quant::qbits_from_gguf_blocks(DType::BF16, f.data(), 2, 32), Error);
  EXPECT_NO_THROW(quant::qbits_from_gguf_blocks(DType::Q4_K, blocks.data(), 2, 256));
}

}  // namespace
}  // namespace anybit
