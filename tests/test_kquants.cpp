// GGUF K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): the reference dequantization against a
// second, independently structured decoder written from the ggml block layouts; the SIMD
// matmul kernels against the scalar (dequantizing) reference within the int8-activation
// bound; GGUF type ids 10..14 read as these dtypes. Fresh random blocks each run (seed
// printed; replay with ANYBIT_TEST_SEED); outputs poisoned first.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/kquants.h"
#include "formats/gguf_reader.h"
#include "formats/tensor_store.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "runtime/random_model.h"
#include "formats/gguf_writer.h"
#include "kernels/dispatch.h"
#include "test_gguf_common.h"
#include "test_qbits_util.h"

namespace anybit {
namespace {

constexpr DType kKTypes[] = {DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q2_K, DType::Q3_K};

void put_half(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
float get_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Random bytes with finite, moderate f16 super-block scales.
std::vector<uint8_t> random_blocks(DType t, int64_t nblocks, std::mt19937_64& rng) {
  const size_t bb = kquant_block_bytes(t);
  std::vector<uint8_t> v(bb * size_t(nblocks));
  for (auto& b : v) b = uint8_t(rng());
  std::normal_distribution<float> nd(0.0f, 0.01f);
  for (int64_t i = 0; i < nblocks; ++i) {
    uint8_t* b = v.data() + bb * size_t(i);
    switch (t) {
      case DType::Q4_K:
      case DType::Q5_K: put_half(b, std::fabs(nd(rng))), put_half(b + 2, std::fabs(nd(rng))); break;
      case DType::Q6_K: put_half(b + 208, nd(rng)); break;
      case DType::Q2_K: put_half(b + 80, std::fabs(nd(rng))), put_half(b + 82, std::fabs(nd(rng))); break;
      case DType::Q3_K: put_half(b + 108, nd(rng)); break;
      default: break;
    }
  }
  return v;
}

// Second decoder, structured like ggml's dequantization loops (pointers walking the
// block, output written in order), to catch index mistakes in core/kquants.cpp.
void decode_block(DType t, const uint8_t* b, float* y) {
  switch (t) {
    case DType::Q4_K:
    case DType::Q5_K: {
      const bool five = t == DType::Q5_K;
      const float d = get_half(b), dmin = get_half(b + 2);
      const uint8_t* s = b + 4;
      const uint8_t* qh = b + 16;
      const uint8_t* q = b + (five ? 48 : 16);
      for (int chunk = 0; chunk < 4; ++chunk, q += 32) {
        for (int h = 0; h < 2; ++h) {
          const int j = 2 * chunk + h;
          int sc, mn;
          if (j < 4) {
            sc = s[j] & 63, mn = s[j + 4] & 63;
          } else {
            sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
          }
          const float dl = d * float(sc), ml = dmin * float(mn);
          const uint8_t mask = uint8_t(1u << j);
          for (int l = 0; l < 32; ++l) {
            int v = h ? q[l] >> 4 : q[l] & 0xF;
            if (five && (qh[l] & mask)) v += 16;
            *y++ = dl * float(v) - ml;
          }
        }
      }
      return;
    }
    case DType::Q6_K: {
      const float d = get_half(b + 208);
      const uint8_t* ql = b;
      const uint8_t* qh = b + 128;
      const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
      for (int n = 0; n < 2; ++n, y += 128, ql += 64, qh += 32, sc += 8)
        for (int l = 0; l < 32; ++l) {
          const int is = l / 16;
          const int v0 = (ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4);
          const int v1 = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
          const int v2 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
          const int v3 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
          y[l] = d * float(sc[is]) * float(v0 - 32);
          y[l + 32] = d * float(sc[is + 2]) * float(v1 - 32);
          y[l + 64] = d * float(sc[is + 4]) * float(v2 - 32);
          y[l + 96] = d * float(sc[is + 6]) * float(v3 - 32);
        }
      return;
    }
    case DType::Q2_K:
    case DType::Q3_K: {
      const bool three = t == DType::Q3_K;
      const uint8_t* q = b + (three ? 32 : 16);
      const uint8_t* hm = b;
      int scale[16], mins[16];
      float d, dmin = 0.0f;
      if (three) {
        const uint8_t* s = b + 96;
        for (int j = 0; j < 16; ++j) {
          const int low = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
          scale[j] = (low | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
          mins[j] = 0;
        }
        d = get_half(b + 108);
      } else {
        for (int j = 0; j < 16; ++j) scale[j] = b[j] & 0xF, mins[j] = b[j] >> 4;
        d = get_half(b + 80), dmin = get_half(b + 82);
      }
      int is = 0;
      uint8_t m = 1;
      for (int n = 0; n < 2; ++n, q += 32)
        for (int shift = 0; shift < 8; shift += 2, m <<= 1)
          for (int half_ = 0; half_ < 2; ++half_, ++is)
            for (int l = 0; l < 16; ++l) {
              const int li = l + 16 * half_;
              int v = (q[li] >> shift) & 3;
              if (three) {
                v -= (hm[li] & m) ? 0 : 4;
                *y++ = d * float(scale[is]) * float(v);
              } else {
                *y++ = d * float(scale[is]) * float(v) - dmin * float(mins[is]);
              }
            }
      return;
    }
    default: FAIL();
  }
}

TEST(KQuants, ReferenceDequantizationMatchesLayout) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (DType t : kKTypes) {
    SCOPED_TRACE(std::string(dtype_name(t)));
    EXPECT_EQ(dtype_block_size(t), 256);
    EXPECT_EQ(dtype_row_bytes(t, 512), 2 * kquant_block_bytes(t));
    const auto blocks = random_blocks(t, 6, rng);
    std::vector<float> a(6 * 256), b(6 * 256);
    dequantize_row(t, blocks.data(), a.data(), 6 * 256);
    for (int i = 0; i < 6; ++i) decode_block(t, blocks.data() + i * kquant_block_bytes(t), b.data() + i * 256);
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "weight " << i;
  }
  // Known values: a Q4_K block with d = 1, dmin = 0.5, every scale 2 and min 3, all codes 5.
  std::vector<uint8_t> blk(144, 0);
  put_half(blk.data(), 1.0f), put_half(blk.data() + 2, 0.5f);
  for (int j = 0; j < 4; ++j) blk[4 + j] = 2, blk[8 + j] = 3, blk[12 + j] = 2 | (3 << 4);
  std::memset(blk.data() + 16, 0x55, 128);
  std::vector<float> y(256);
  dequantize_row(DType::Q4_K, blk.data(), y.data(), 256);
  for (float v : y) ASSERT_EQ(v, 1.0f * 2 * 5 - 0.5f * 3);
}

void check_kmatmul(const KernelTable& table, DType t, int64_t m, int64_t n, int64_t k, std::mt19937_64& rng) {
  SCOPED_TRACE(fmt::format("isa={} dtype={} m={} n={} k={}", isa_name(table.isa), dtype_name(t), m, n, k));
  const auto w = random_blocks(t, n * k / 256, rng);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t(m * k));
  for (auto& v : x) v = nd(rng);
  x[size_t(rng() % x.size())] *= 30.0f;
  constexpr int64_t kGuard = 9;
  std::vector<float> y(size_t(m * n + kGuard), std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < kGuard; ++i) y[size_t(m * n + i)] = 4321.0f;
  const WeightMatrix wm{t, n, k, w.data()};
  ASSERT_NE(table.matmul[int(t)], nullptr);
  table.matmul[int(t)](x.data(), m, wm, y.data());
  std::vector<float> deq(size_t(n * k));
  for (int64_t r = 0; r < n; ++r)
    dequantize_row(t, w.data() + size_t(r) * dtype_row_bytes(t, k), deq.data() + r * k, k);
  int bad = 0;
  for (int64_t i = 0; i < m && bad < 5; ++i) {
    std::vector<double> step(size_t(k / 256));
    for (int64_t b = 0; b < k / 256; ++b) {
      double amax = 0.0;
      for (int64_t c = b * 256; c < (b + 1) * 256; ++c) amax = std::fmax(amax, std::fabs(x[size_t(i * k + c)]));
      step[size_t(b)] = amax / 127.0;
    }
    for (int64_t r = 0; r < n && bad < 5; ++r) {
      double exact = 0.0, bound = 0.0, mag = 0.0;
      for (int64_t c = 0; c < k; ++c) {
        const double wv = deq[size_t(r * k + c)], xv = x[size_t(i * k + c)];
        exact += wv * xv;
        bound += 0.5 * step[size_t(c / 256)] * std::fabs(wv);
        mag += std::fabs(wv * xv);
      }
      const double tol = bound * 1.001 + 1e-5 * mag + 1e-6;
      const double got = y[size_t(i * n + r)];
      if (!(std::fabs(got - exact) <= tol)) {
        ADD_FAILURE() << "y[" << i << "," << r << "] = " << got << ", exact " << exact << ", bound " << tol;
        ++bad;
      }
    }
  }
  for (int64_t i = 0; i < kGuard; ++i) ASSERT_EQ(y[size_t(m * n + i)], 4321.0f) << "wrote past y";
}

TEST(KQuants, SimdMatmulMatchesReference) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed) + " (replay with ANYBIT_TEST_SEED)");
  std::mt19937_64 rng(seed);
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    const KernelTable* table = kernels_for(isa);
    if (!table) continue;
    for (DType t : kKTypes)
      for (int64_t m : {1, 2, 3, 8, 17, 64}) {
        if (isa == Isa::Scalar && m > 3) continue;  // the slow reference itself
        const int64_t n = 1 + int64_t(rng() % (m > 8 ? 21 : 70));
        const int64_t k = 256 * (1 + int64_t(rng() % 4));
        check_kmatmul(*table, t, m, n, k, rng);
        if (HasFatalFailure()) return;
      }
  }
}

TEST(KQuants, LayerShape) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  if (const KernelTable* table = kernels_for(Isa::Avx512))
    for (DType t : {DType::Q4_K, DType::Q6_K}) check_kmatmul(*table, t, 1, 301, 2048, rng);
}

TEST(KQuants, GgufTypeIdsMapToDtypes) {
  gguf_test::TempDir dir;
  std::mt19937_64 rng(5);
  const uint32_t ids[] = {12, 13, 14, 10, 11};
  GgufWriter w;
  w.set("general.architecture", GgufValue::make_str("test"));
  std::vector<std::vector<uint8_t>> data;
  for (int i = 0; i < 5; ++i) {
    data.push_back(random_blocks(kKTypes[i], 3 * 2, rng));  // [3, 512]
    w.add_tensor("t" + std::to_string(i), ids[i], {3, 512}, data.back().data(), data.back().size());
  }
  const std::string path = dir.file("k.gguf");
  w.write(path);
  const GgufFile g = GgufFile::open(path);
  for (int i = 0; i < 5; ++i) {
    const GgufTensorInfo* ti = g.find_tensor("t" + std::to_string(i));
    ASSERT_NE(ti, nullptr);
    const TensorView v = g.view(*ti);
    EXPECT_EQ(v.dtype, kKTypes[i]);
    ASSERT_EQ(v.nbytes, data[size_t(i)].size());
    EXPECT_EQ(std::memcmp(v.data, data[size_t(i)].data(), v.nbytes), 0);
    EXPECT_EQ(dtype_to_ggml_type(kKTypes[i]), ids[i]);
  }
}


// llama.cpp's K-quant files quantize token_embd too: the model must accept such a table
// and look up exactly the dequantized rows (logits equal to those of an f32 table holding
// the same values).
TEST(KQuants, KQuantEmbeddingTableGivesTheDequantizedRows) {
  const uint64_t seed = test::qbits_seed();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  ModelConfig cfg = named_shape("tiny");
  cfg.vocab = 1024;
  const int64_t H = cfg.hidden;
  const ModelFiles base = make_random_model(cfg, DType::F32, seed);
  std::vector<int32_t> ids(9);
  for (auto& id : ids) id = int32_t(rng() % uint64_t(cfg.vocab));
  for (DType t : kKTypes) {
    SCOPED_TRACE(dtype_name(t));
    std::vector<uint8_t> blocks = random_blocks(t, cfg.vocab * H / 256, rng);
    std::vector<float> table(size_t(cfg.vocab * H));
    const size_t rb = dtype_row_bytes(t, H);
    for (int64_t r = 0; r < cfg.vocab; ++r) dequantize_row(t, blocks.data() + size_t(r) * rb, table.data() + r * H, H);
    auto with_embedding = [&](DType dt, std::vector<uint8_t> bytes) {
      auto st = std::make_shared<TensorStore>();
      for (const auto& [name, view] : base.weights->all())
        if (name != "model.embed_tokens.weight") st->add(view);
      TensorView e;
      e.name = "model.embed_tokens.weight";
      e.shape = {cfg.vocab, H};
      e.dtype = dt;
      e.nbytes = bytes.size();
      e.data = st->own(std::move(bytes));
      st->add(e);
      return st;
    };
    std::vector<uint8_t> f32_bytes(table.size() * sizeof(float));
    std::memcpy(f32_bytes.data(), table.data(), f32_bytes.size());
    std::vector<float> logits[2];
    int k = 0;
    for (auto store : {with_embedding(t, blocks), with_embedding(DType::F32, std::move(f32_bytes))}) {
      LlamaModel model(cfg, store);
      KVCache kv(cfg, 4);
      SequenceKV seq;
      ForwardOutput out;
      out.logits.assign(size_t(ids.size()) * size_t(cfg.vocab), std::numeric_limits<float>::quiet_NaN());
      model.forward({BatchEntry{&seq, ids.data(), int64_t(ids.size()), true}}, kv, out);
      kv.release(seq);
      logits[k++] = out.logits;
    }
    ASSERT_EQ(logits[0].size(), size_t(ids.size()) * size_t(cfg.vocab));
    for (float v : logits[0]) ASSERT_TRUE(std::isfinite(v));
    EXPECT_EQ(logits[0], logits[1]);
  }
}

}  // namespace
}  // namespace anybit
