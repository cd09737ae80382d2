// The GPU layout of QBITS weights (kernels/qbits_cuda_pack.h), checked on the CPU: every
// code reassembled from the bit planes equals QuantizedWeight::code, metadata round-trips,
// malformed weights are refused. Fresh random weights each run (seed printed on failure;
// ANYBIT_TEST_SEED replays).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <random>
#include <string>

#include "core/error.h"
#include "kernels/qbits_cuda_pack.h"
#include "test_qbits_util.h"

namespace anybit {
namespace {

TEST(QbitsCudaPack, PlaneSplit) {
  const int expect[9][3] = {{0}, {0}, {2}, {2, 1}, {4}, {4, 1}, {4, 2}, {4, 2, 1}, {4, 4}};
  for (int bits = 2; bits <= 8; ++bits) {
    int n = 0, w[3] = {}, sh[3] = {};
    qbits_plane_split(bits, n, w, sh);
    int at = 0;
    for (int p = 0; p < n; ++p) {
      EXPECT_EQ(w[p], expect[bits][p]) << bits;
      EXPECT_EQ(sh[p], at) << bits;
      at += w[p];
    }
    EXPECT_EQ(at, bits);
  }
  int n = 0, w[3], sh[3];
  EXPECT_THROW(qbits_plane_split(1, n, w, sh), Error);
  EXPECT_THROW(qbits_plane_split(9, n, w, sh), Error);
}

TEST(QbitsCudaPack, CodesAndMetadataRoundTrip) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int bits = 2; bits <= 8; ++bits)
    for (int group : {32, 64, 128})
      for (bool asym : {false, true})
        for (bool f32_meta : {false, true}) {
          test::QSpec s;
          s.bits = bits, s.group = group, s.asym = asym, s.f32_meta = f32_meta;
          s.rows = int64_t(1 + rng() % 37);               // rows a multiple of nothing
          s.cols = int64_t(group) * int64_t(1 + rng() % 5);  // a multiple of 32 and of group
          s.input_scale = rng() % 2 == 0;
          SCOPED_TRACE(fmt::format("bits={} group={} asym={} f32_meta={} {}x{}", bits, group, asym, f32_meta, s.rows,
                                   s.cols));
          const QuantizedWeight w = test::random_qweight(s, rng);
          const QbitsGpuPack p = pack_qbits_for_gpu(w);
          ASSERT_EQ(p.bits, bits);
          ASSERT_EQ(p.rows, w.rows);
          ASSERT_EQ(p.cols, w.cols);
          for (int q = 0; q < p.n_planes; ++q) {
            ASSERT_EQ(p.planes[q].size(), size_t(w.rows * w.cols * p.width[q] / 8));
            // 32-element chunks of 4 * width bytes: the plane row is a whole number of them
            ASSERT_EQ(p.planes[q].size() % size_t(4 * p.width[q]), 0u);
          }
          for (int64_t r = 0; r < w.rows; ++r)
            for (int64_t c = 0; c < w.cols; ++c)
              ASSERT_EQ(unpack_code(p, r, c), w.code(r, c)) << "r " << r << " c " << c;
          // f16 exactly when the checkpoint-like f16-rounded metadata was used
          EXPECT_EQ(p.scales_f16, !f32_meta);
          if (asym) EXPECT_EQ(p.zeros_f16, !f32_meta);
          const int64_t G = w.groups_per_row();
          for (int64_t r = 0; r < w.rows; ++r)
            for (int64_t g = 0; g < G; ++g) {
              ASSERT_EQ(p.scale(r, g), w.scales[size_t(r * G + g)]);
              ASSERT_EQ(p.zero(r, g), w.zero(r, g));
            }
          ASSERT_EQ(p.inv_input_scale.size(), w.input_scale.size());
          for (size_t c = 0; c < w.input_scale.size(); ++c) ASSERT_EQ(p.inv_input_scale[c], 1.0f / w.input_scale[c]);
          size_t expect_bytes = size_t(w.rows * w.cols * bits / 8) + size_t(w.rows * G) * (f32_meta ? 4 : 2);
          if (asym) expect_bytes += size_t(w.rows * G) * (f32_meta ? 4 : 2);
          EXPECT_EQ(p.weight_bytes(), expect_bytes);
        }
}

// One f32-only scale among f16-exact ones switches the whole tensor to fp32.
TEST(QbitsCudaPack, OneInexactScaleSelectsFp32) {
  std::mt19937_64 rng(7);
  test::QSpec s;
  s.bits = 4, s.group = 32, s.rows = 3, s.cols = 64, s.asym = true;
  QuantizedWeight w = test::random_qweight(s, rng);
  EXPECT_TRUE(pack_qbits_for_gpu(w).scales_f16);
  w.scales[5] = 0.1f;  // not an f16 value
  const QbitsGpuPack p = pack_qbits_for_gpu(w);
  EXPECT_FALSE(p.scales_f16);
  EXPECT_TRUE(p.zeros_f16);
  EXPECT_EQ(p.scale(2, 1), 0.1f);
  w.zeros[0] = 3.3f;
  EXPECT_FALSE(pack_qbits_for_gpu(w).zeros_f16);
}

// The pair order the f16x2 kernel relies on, pinned by hand: columns 2p and 2p+1 of a
// chunk share a bit position in the low and high halves of one 32-bit word.
TEST(QbitsCudaPack, PairOrderLayout) {
  // width 4, 64 columns (2 chunks of 16 bytes): (row, col) -> bit
  EXPECT_EQ(plane_bit(4, 64, 0, 0), 0);
  EXPECT_EQ(plane_bit(4, 64, 0, 1), 16);
  EXPECT_EQ(plane_bit(4, 64, 0, 2), 4);
  EXPECT_EQ(plane_bit(4, 64, 0, 7), 16 + 12);
  EXPECT_EQ(plane_bit(4, 64, 0, 8), 32);
  EXPECT_EQ(plane_bit(4, 64, 0, 31), 3 * 32 + 16 + 12);
  EXPECT_EQ(plane_bit(4, 64, 0, 32), 128);
  EXPECT_EQ(plane_bit(4, 64, 1, 0), 256);
  // width 2: 8 pairs per word; width 1: 16
  EXPECT_EQ(plane_bit(2, 32, 0, 15), 16 + 14);
  EXPECT_EQ(plane_bit(2, 32, 0, 16), 32);
  EXPECT_EQ(plane_bit(1, 32, 0, 31), 16 + 15);
  EXPECT_EQ(plane_bit(1, 64, 0, 33), 32 + 16);
  // a packed 4-bit code lands there
  QuantizedWeight w;
  w.bits = 4, w.group = 32, w.rows = 1, w.cols = 32;
  w.codes.assign(w.row_code_bytes(), 0);
  w.codes[1] = 0x0b;  // code of column 2 = 11
  w.scales.assign(1, 1.0f);
  const QbitsGpuPack p = pack_qbits_for_gpu(w);
  EXPECT_EQ(p.planes[0][0], 0xb0);  // column 2 at bits 4..7 of word 0
  EXPECT_EQ(unpack_code(p, 0, 2), 11u);
}

TEST(QbitsCudaPack, MalformedWeightsThrow) {
  std::mt19937_64 rng(11);
  test::QSpec s;
  s.bits = 3, s.group = 64, s.rows = 5, s.cols = 128, s.asym = true, s.input_scale = true;
  const QuantizedWeight good = test::random_qweight(s, rng);
  EXPECT_NO_THROW(pack_qbits_for_gpu(good));
  auto expect_fail = [&](const char* what, auto&& edit) {
    QuantizedWeight w = good;
    edit(w);
    EXPECT_THROW(pack_qbits_for_gpu(w), Error) << what;
  };
  expect_fail("bits 1", [](QuantizedWeight& w) { w.bits = 1; });
  expect_fail("bits 9", [](QuantizedWeight& w) { w.bits = 9; });
  expect_fail("act_bits 4", [](QuantizedWeight& w) { w.act_bits = 4; });
  {
    QuantizedWeight w = good;
    w.act_bits = 8;  // W*A8: packed like any other weight, act_bits carried along
    EXPECT_EQ(pack_qbits_for_gpu(w).act_bits, 8);
  }
  expect_fail("no rows", [](QuantizedWeight& w) { w.rows = 0; });
  expect_fail("group 48", [](QuantizedWeight& w) { w.group = 48; });
  expect_fail("group does not divide cols", [](QuantizedWeight& w) { w.group = 96; });
  expect_fail("cols not a multiple of 32", [](QuantizedWeight& w) {
    w.cols = 80, w.group = 16;
    w.codes.resize(size_t(w.rows) * w.row_code_bytes());
    w.scales.resize(size_t(w.rows * 5)), w.zeros.resize(size_t(w.rows * 5)), w.input_scale.resize(80);
  });
  expect_fail("codes short", [](QuantizedWeight& w) { w.codes.pop_back(); });
  expect_fail("codes long", [](QuantizedWeight& w) { w.codes.push_back(0); });
  expect_fail("scales short", [](QuantizedWeight& w) { w.scales.pop_back(); });
  expect_fail("zeros short", [](QuantizedWeight& w) { w.zeros.pop_back(); });
  expect_fail("symmetric with zeros", [](QuantizedWeight& w) { w.asymmetric = false; });
  expect_fail("asymmetric without zeros", [](QuantizedWeight& w) { w.zeros.clear(); });
  expect_fail("input_scale size", [](QuantizedWeight& w) { w.input_scale.pop_back(); });
  expect_fail("input_scale zero", [](QuantizedWeight& w) { w.input_scale[3] = 0.0f; });
  expect_fail("nan scale", [](QuantizedWeight& w) { w.scales[2] = std::nanf(""); });
  expect_fail("inf zero", [](QuantizedWeight& w) { w.zeros[1] = INFINITY; });
  const QbitsGpuPack p = pack_qbits_for_gpu(good);
  EXPECT_THROW(unpack_code(p, 5, 0), Error);
  EXPECT_THROW(unpack_code(p, 0, 128), Error);
}

}  // namespace
}  // namespace anybit
