// CUDA RoPE + KV write and attention (decode and prefill) against the CPU references over a
// paged cache with non-contiguous blocks, for fp32, f16, bf16 and int8 caches and both decode
// kernels (SIMT and tensor-core). Fresh random data each run (the seed is printed on
// failure; ANYBIT_TEST_SEED=<seed> replays), outputs poisoned with NaN first.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "test_cuda_util.h"

#ifdef ANYBIT_WITH_CUDA
#include "kernels/attention.h"
#include "kernels/cuda_kernels.h"
#include "kernels/rope.h"

namespace anybit {
namespace {

using test::DeviceArray;
using test::randn;

ModelConfig attn_config(int64_t hd, int64_t heads, int64_t kv_heads) {
  ModelConfig c;
  c.hidden = heads * hd, c.n_layers = 2, c.n_heads = heads, c.n_kv_heads = kv_heads, c.head_dim = hd;
  c.ffn = 64, c.vocab = 32, c.max_position = 4096;
  c.rope_scaling.kind = RopeScaling::Kind::Llama3, c.rope_scaling.factor = 8, c.rope_scaling.original_max_position = 64;
  return c;
}

cuda::KVLayout layout_of(const ModelConfig& c, int64_t bs, void* base, DType dt = DType::F32) {
  cuda::KVLayout l;
  l.base = base, l.dtype = dt, l.n_layers = c.n_layers, l.n_kv_heads = c.n_kv_heads, l.head_dim = c.head_dim;
  l.block_size = bs;
  return l;
}

float round_to(DType dt, float v) {
  if (dt == DType::F16) return f16_to_f32(f32_to_f16(v));
  if (dt == DType::BF16) return bf16_to_f32(f32_to_bf16(v));
  return v;
}

// int8 row quantization as the device does it: scale max|x| / 127, codes rounded to nearest.
float quantize_row_i8(const float* x, int64_t n, int8_t* codes) {
  float mx = 0.0f;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, std::fabs(x[i]));
  const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
  for (int64_t i = 0; i < n; ++i) codes[i] = int8_t(std::clamp(std::nearbyint(x[i] * inv), -127.0f, 127.0f));
  return mx / 127.0f;
}

// The device image of host cache `kv` in dtype dt (layout lay), and the host cache rounded
// in place to exactly the values the device stores, so the reference reads them too.
std::vector<uint8_t> device_image(KVCache& kv, const cuda::KVLayout& lay) {
  const int64_t hd = lay.head_dim, bs = lay.block_size;
  std::vector<uint8_t> img(size_t(kv.n_blocks() * lay.block_bytes()));
  std::vector<int8_t> codes(static_cast<size_t>(hd));
  for (int32_t b = 0; b < int32_t(kv.n_blocks()); ++b)
    for (int64_t l = 0; l < lay.n_layers; ++l)
      for (int kvs = 0; kvs < 2; ++kvs)
        for (int64_t h = 0; h < lay.n_kv_heads; ++h) {
          float* rows = kvs == 0 ? kv.k(b, l, h) : kv.v(b, l, h);
          uint8_t* dst = img.data() + lay.head_offset(b, l, kvs, h);
          for (int64_t s = 0; s < bs; ++s) {
            float* x = rows + s * hd;
            if (lay.dtype == DType::I8) {
              const float scale = quantize_row_i8(x, hd, codes.data());
              std::memcpy(dst + s * hd, codes.data(), size_t(hd));
              std::memcpy(dst + bs * hd + s * 4, &scale, 4);
              for (int64_t i = 0; i < hd; ++i) x[i] = float(codes[size_t(i)]) * scale;
            } else {
              for (int64_t i = 0; i < hd; ++i) {
                x[i] = round_to(lay.dtype, x[i]);
                if (lay.dtype == DType::F32) std::memcpy(dst + (s * hd + i) * 4, &x[i], 4);
                else {
                  const uint16_t v = lay.dtype == DType::F16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
                  std::memcpy(dst + (s * hd + i) * 2, &v, 2);
                }
              }
            }
          }
        }
  return img;
}

// Reads back what the device stored for slot `off` of `block` (widened / dequantized).
float stored(const std::vector<uint8_t>& img, const cuda::KVLayout& lay, int64_t block, int64_t layer, int kv,
             int64_t h, int64_t off, int64_t i) {
  const uint8_t* p = img.data() + lay.head_offset(block, layer, kv, h);
  if (lay.dtype == DType::I8) {
    float scale;
    std::memcpy(&scale, p + lay.block_size * lay.head_dim + off * 4, 4);
    return float(int8_t(p[off * lay.head_dim + i])) * scale;
  }
  if (lay.dtype == DType::F32) {
    float v;
    std::memcpy(&v, p + (off * lay.head_dim + i) * 4, 4);
    return v;
  }
  uint16_t v;
  std::memcpy(&v, p + (off * lay.head_dim + i) * 2, 2);
  return lay.dtype == DType::F16 ? f16_to_f32(v) : bf16_to_f32(v);
}

TEST(CudaAttention, RopeAndKVWriteMatchCpu) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::I8})
    for (int64_t hd : {32, 48, 64, 128}) {
      SCOPED_TRACE(fmt::format("{} hd {}", dtype_name(dt), hd));
      const ModelConfig c = attn_config(hd, 4, 2);
      const int64_t bs = 16, n_blocks = 6, T = 7, qd = c.n_heads * hd, kvd = c.n_kv_heads * hd, ld = qd + 2 * kvd;
      const auto qkv = randn(rng, size_t(T * ld));
      std::vector<int32_t> pos = {0, 1, 15, 16, 40, 95, 3000}, slot = {0, 1, 15, 16, 40, 95, 50};
      const auto inv = rope_inv_freq(c);
      cuda::KVLayout lay = layout_of(c, bs, nullptr, dt);
      DeviceArray<float> dqkv(qkv), dinv(inv);
      DeviceArray<uint8_t> dkv(size_t(n_blocks * lay.block_bytes()));
      DeviceArray<int32_t> dpos(pos), dslot(slot);
      dkv.poison();
      lay.base = dkv.get();
      cuda::RopeKVArgs a;
      a.qkv = dqkv.get(), a.ld = ld, a.n_tok = T, a.n_heads = c.n_heads, a.pos = dpos.get(), a.slot = dslot.get();
      a.inv_freq = dinv.get(), a.kv = lay, a.layer = 1;
      cuda::rope_kv_write(a, nullptr);
      const auto got = dqkv.download();
      const auto img = dkv.download();
      std::vector<float> q(size_t(T * qd)), k(size_t(T * kvd));
      std::vector<int64_t> p64(pos.begin(), pos.end());
      for (int64_t t = 0; t < T; ++t) {
        std::memcpy(&q[size_t(t * qd)], &qkv[size_t(t * ld)], size_t(qd) * 4);
        std::memcpy(&k[size_t(t * kvd)], &qkv[size_t(t * ld + qd)], size_t(kvd) * 4);
      }
      rope_apply(q.data(), T, p64.data(), c.n_heads, hd, inv);
      rope_apply(k.data(), T, p64.data(), c.n_kv_heads, hd, inv);
      std::vector<int8_t> codes(static_cast<size_t>(hd));
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < qd; ++i) ASSERT_NEAR(got[size_t(t * ld + i)], q[size_t(t * qd + i)], 2e-6);
        const int64_t blk = slot[size_t(t)] / bs, off = slot[size_t(t)] % bs;
        for (int64_t h = 0; h < c.n_kv_heads; ++h) {
          const float* kr = &k[size_t(t * kvd + h * hd)];
          const float* vr = &qkv[size_t(t * ld + qd + kvd + h * hd)];
          // The stored value is the fp32 result rounded once: half an ulp of the dtype (f16,
          // bf16), half a step of the row's scale (int8), plus the fp32 rotation's own error.
          const float ks = dt == DType::I8 ? quantize_row_i8(kr, hd, codes.data()) : 0.0f;
          const float vs = dt == DType::I8 ? quantize_row_i8(vr, hd, codes.data()) : 0.0f;
          for (int64_t i = 0; i < hd; ++i) {
            const double rel = dt == DType::F16 ? 1.0 / 2048 : dt == DType::BF16 ? 1.0 / 256 : 0.0;
            ASSERT_NEAR(stored(img, lay, blk, 1, 0, h, off, i), kr[i], 2e-6 + rel * std::fabs(kr[i]) + 0.5001 * ks);
            if (dt == DType::I8) ASSERT_NEAR(stored(img, lay, blk, 1, 1, h, off, i), vr[i], 0.5001 * vs);
            else ASSERT_EQ(stored(img, lay, blk, 1, 1, h, off, i), round_to(dt, vr[i]));
          }
        }
      }
      // Nothing else in the cache was touched: every other element is still all 0xFF bytes
      // (a NaN in f32 / f16 / bf16; for int8 a code of -1 is 0xFF too, so only a bound).
      const size_t es = size_t(lay.elem_bytes()), rows = size_t(T * 2 * c.n_kv_heads);
      size_t untouched = 0;
      for (size_t e = 0; e + es <= img.size(); e += es) {
        bool ff = true;
        for (size_t b = 0; b < es; ++b) ff = ff && img[e + b] == 0xFF;
        untouched += ff ? 1 : 0;
      }
      if (dt == DType::I8) EXPECT_GE(untouched, img.size() - rows * size_t(lay.row_bytes() + 4));
      else EXPECT_EQ(untouched, img.size() / es - rows * size_t(hd));
    }
}

// Two sequences with interleaved (non-contiguous) blocks in a randomly filled cache.
struct AttnFixture {
  ModelConfig cfg;
  KVCache kv;
  SequenceKV a, b;
  AttnFixture(const ModelConfig& c, std::mt19937_64& rng, int64_t len_a, int64_t len_b)
      : cfg(c), kv(c, (len_a + len_b) / 16 + 8, 16) {
    for (int64_t n = 16; n < std::max(len_a, len_b) + 16; n += 16) {
      kv.reserve(a, std::min(n, len_a));
      kv.reserve(b, std::min(n, len_b));
    }
    a.n_tokens = len_a, b.n_tokens = len_b;
    std::normal_distribution<float> nd(0.0f, 1.0f);
    float* s = kv.k(0, 0, 0);
    for (size_t i = 0; i < kv.bytes() / 4; ++i) s[i] = nd(rng);
  }
};

enum class Path { Auto, Simt, Mma };

struct AttnCase {
  int64_t hd = 64, heads = 8, kv_heads = 2, window = 0, split_len = 0;
  bool prefill = false;
  DType dt = DType::F32;
  Path path = Path::Auto;
  int64_t len_a = 37, len_b = 90;
  float q_sd = 1.0f;  // large values make sharp softmaxes (the decode maximum moves often)
};

void check_attention(std::mt19937_64& rng, const AttnCase& k) {
  SCOPED_TRACE(fmt::format("hd={} heads={}/{} window={} prefill={} split_len={} {} path={} len={}/{} q_sd={}", k.hd,
                           k.heads, k.kv_heads, k.window, k.prefill, k.split_len, dtype_name(k.dt), int(k.path),
                           k.len_a, k.len_b, k.q_sd));
  ModelConfig c = attn_config(k.hd, k.heads, k.kv_heads);
  AttnFixture f(c, rng, k.len_a, k.len_b);
  const std::vector<SequenceKV*> seqs = {&f.a, &f.b};
  // queries: decode = the last position of each; prefill = the last 20 of a, last 5 of b
  const std::vector<int64_t> nq = k.prefill ? std::vector<int64_t>{20, 5} : std::vector<int64_t>{1, 1};
  const int64_t qd = k.heads * k.hd, T = nq[0] + nq[1];
  auto q = randn(rng, size_t(T * qd), k.q_sd);
  // The tensor-core kernel rounds q to the cache dtype: give both sides the rounded q, so
  // the comparison measures the kernel and not that rounding (amplified by sharp scores).
  const bool mma = !k.prefill && k.path == Path::Mma;
  if (mma)
    for (auto& x : q) x = round_to(k.dt == DType::I8 ? DType::F16 : k.dt, x);
  std::vector<int32_t> tok_pos, tok_seq, qstart, seq_nq, btab;
  const int64_t MB = (std::max(k.len_a, k.len_b) + 15) / 16 + 2;
  for (size_t s = 0; s < 2; ++s) {
    qstart.push_back(int32_t(tok_pos.size()));
    seq_nq.push_back(int32_t(nq[s]));
    for (int64_t i = 0; i < nq[s]; ++i) {
      tok_pos.push_back(int32_t(seqs[s]->n_tokens - nq[s] + i));
      tok_seq.push_back(int32_t(s));
    }
    for (int64_t bi = 0; bi < MB; ++bi)
      btab.push_back(bi < int64_t(seqs[s]->blocks.size()) ? seqs[s]->blocks[size_t(bi)] : 0);
  }
  // The reference reads the values the device stores: the host cache rounded to the dtype.
  cuda::KVLayout lay = layout_of(c, 16, nullptr, k.dt);
  const auto img = device_image(f.kv, lay);
  DeviceArray<uint8_t> dkv(img);
  DeviceArray<float> dq(q), dout(size_t(T * qd));
  DeviceArray<int32_t> dpos(tok_pos), dseq(tok_seq), dqs(qstart), dnq(seq_nq), dbt(btab);
  const int64_t longest = std::max(k.len_a, k.len_b);
  const int64_t n_splits = k.split_len > 0 ? (longest + k.split_len - 1) / k.split_len : 1;
  DeviceArray<float> dpart(size_t(T * k.heads * n_splits * (k.hd + 2)));
  dout.poison();
  dpart.poison();
  cuda::AttentionArgs a;
  a.q = dq.get(), a.ldq = qd, a.out = dout.get(), a.ldo = qd, a.kv = lay;
  a.kv.base = dkv.get();
  a.layer = 1, a.n_heads = k.heads, a.scale = 1.0f / std::sqrt(float(k.hd)), a.window = k.window;
  a.n_tok = T, a.n_seq = 2, a.tok_pos = dpos.get(), a.tok_seq = dseq.get(), a.block_tables = dbt.get();
  a.max_blocks = MB, a.seq_qstart = dqs.get(), a.seq_nq = dnq.get(), a.max_nq = std::max(nq[0], nq[1]);
  a.partial = dpart.get(), a.n_splits = n_splits, a.split_len = k.split_len > 0 ? k.split_len : longest;
  if (k.prefill) cuda::attention_prefill(a, nullptr);
  else if (k.path == Path::Simt) cuda::attention_decode_simt(a, nullptr);
  else if (k.path == Path::Mma) cuda::attention_decode_mma(a, nullptr);
  else cuda::attention_decode(a, nullptr);
  const auto got = dout.download();
  std::vector<float> ref(size_t(T * qd));
  for (size_t s = 0; s < 2; ++s) {
    AttentionArgs r;
    r.q = q.data() + qstart[s] * qd, r.n_q = nq[s], r.pos0 = seqs[s]->n_tokens - nq[s], r.layer = 1;
    r.n_heads = k.heads, r.scale = a.scale, r.window = k.window, r.out = ref.data() + qstart[s] * qd;
    attention_paged_reference(r, f.kv, *seqs[s]);
  }
  // SIMT kernels multiply the stored values in fp32: fp32 tolerance. The tensor-core kernel
  // also rounds the probabilities to the cache dtype (relative 2^-11 for f16 and int8 caches,
  // 2^-8 for bf16) before the weighted sum of V rows (|V| ~ N(0,1)).
  const double tol = !mma ? 2e-5 : k.dt == DType::BF16 ? 3e-2 : 4e-3;
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], tol * (1 + std::fabs(ref[i]))) << "element " << i;
}

// A cache sized for far more splits than the contexts fill (a graph captured for a long
// context decoding a short one): most splits are empty, a row of <= 16 positions has one
// active split and is written by the decode kernel itself, the other row by the merge of
// its active splits. The partial rows are poisoned, so a merge that read an empty split
// or a row left unwritten fails.
void check_many_splits(std::mt19937_64& rng, DType dt, Path path) {
  for (int64_t window : {0, 20}) {
    AttnCase k;
    k.dt = dt, k.path = path, k.hd = 64, k.len_a = 9, k.len_b = 90, k.split_len = 2, k.window = window;
    check_attention(rng, k);
  }
}

TEST(CudaAttention, DecodeSplitKvMatchesReference) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::I8})
    for (int64_t hd : {32, 48, 64, 128})
      for (int64_t split : {0, 16, 32})
        for (int64_t window : {0, 20}) {
          AttnCase k;
          k.hd = hd, k.split_len = split, k.window = window, k.dt = dt, k.path = Path::Simt;
          check_attention(rng, k);
        }
  for (DType dt : {DType::F32, DType::F16}) {
    AttnCase k;
    k.dt = dt, k.split_len = 16, k.kv_heads = 8, k.path = Path::Simt;  // no GQA
    check_attention(rng, k);
    k.kv_heads = 1, k.split_len = 0;  // a group of 8
    check_attention(rng, k);
  }
  for (DType dt : {DType::F32, DType::F16}) check_many_splits(rng, dt, Path::Simt);
}

TEST(CudaAttention, TensorCoreDecodeMatchesReference) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (DType dt : {DType::F16, DType::BF16, DType::I8}) {
    for (int64_t hd : {32, 64, 96, 128}) {
      if (dt == DType::I8 && (hd == 32 || hd == 96)) continue;  // int8 tiles: head_dim 64 or 128
      for (int64_t split : {0, 16, 48})
        for (int64_t window : {0, 21}) {
          AttnCase k;
          k.hd = hd, k.split_len = split, k.window = window, k.dt = dt, k.path = Path::Mma;
          check_attention(rng, k);
        }
    }
    for (int64_t kv_heads : {8, 1, 4}) {  // groups of 1, 8 and 2
      AttnCase k;
      k.dt = dt, k.kv_heads = kv_heads, k.split_len = 32, k.path = Path::Mma;
      check_attention(rng, k);
    }
    // Long contexts: many tiles per warp run the whole cp.async ring; sharp scores move
    // the lazily updated maximum again and again.
    for (float q_sd : {1.0f, 12.0f})
      for (int64_t split : {0, 256}) {
        AttnCase k;
        k.hd = 128, k.dt = dt, k.len_a = 1000, k.len_b = 2049, k.split_len = split, k.q_sd = q_sd, k.path = Path::Mma;
        check_attention(rng, k);
        k.window = 700;
        check_attention(rng, k);
      }
  }
  for (DType dt : {DType::F16, DType::BF16, DType::I8}) check_many_splits(rng, dt, Path::Mma);
  // attention_decode() takes the tensor cores only where they apply.
  cuda::AttentionArgs a;
  a.kv.dtype = DType::F16, a.kv.head_dim = 64, a.kv.block_size = 16, a.kv.n_kv_heads = 2, a.n_heads = 8;
  EXPECT_TRUE(cuda::attention_decode_mma_supported(a));
  a.kv.head_dim = 48;
  EXPECT_FALSE(cuda::attention_decode_mma_supported(a));
  a.kv.head_dim = 64, a.kv.dtype = DType::F32;
  EXPECT_FALSE(cuda::attention_decode_mma_supported(a));
  a.kv.dtype = DType::BF16, a.kv.block_size = 8;
  EXPECT_FALSE(cuda::attention_decode_mma_supported(a));
  a.kv.block_size = 16, a.n_heads = 32, a.kv.n_kv_heads = 2;  // 16 heads per kv head
  EXPECT_FALSE(cuda::attention_decode_mma_supported(a));
  a.n_heads = 8, a.kv.dtype = DType::I8;
  EXPECT_TRUE(cuda::attention_decode_mma_supported(a));
  a.kv.head_dim = 96;
  EXPECT_FALSE(cuda::attention_decode_mma_supported(a));
  // Forcing it where it does not apply is a clear error, not a wrong result.
  a.n_tok = 1, a.n_heads = 8, a.kv.head_dim = 48;
  EXPECT_THROW(cuda::attention_decode_mma(a, nullptr), Error);
}

// RoPE + KV write fused into the tensor-core decode kernel gives what the separate kernels
// give: the same cache bytes and the same outputs.
TEST(CudaAttention, FusedRopeDecodeMatchesSeparateKernels) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (DType dt : {DType::F16, DType::BF16, DType::I8})
    for (int64_t hd : {64, 128})
      for (int64_t split : {int64_t(0), int64_t(32)}) {
        SCOPED_TRACE(fmt::format("{} hd {} split {}", dtype_name(dt), hd, split));
        const ModelConfig c = attn_config(hd, 8, 2);
        AttnFixture f(c, rng, 37, 300);
        const std::vector<SequenceKV*> seqs = {&f.a, &f.b};
        const int64_t qd = c.n_heads * hd, kvd = c.n_kv_heads * hd, ld = qd + 2 * kvd, T = 2;
        const auto qkv = randn(rng, size_t(T * ld));
        std::vector<int32_t> tok_pos, tok_seq = {0, 1}, slot, btab;
        const int64_t MB = 300 / 16 + 2;
        for (int s = 0; s < 2; ++s) {
          const int64_t p = seqs[size_t(s)]->n_tokens - 1;
          tok_pos.push_back(int32_t(p));
          slot.push_back(int32_t(seqs[size_t(s)]->blocks[size_t(p / 16)] * 16 + p % 16));
          for (int64_t bi = 0; bi < MB; ++bi)
            btab.push_back(bi < int64_t(seqs[size_t(s)]->blocks.size()) ? seqs[size_t(s)]->blocks[size_t(bi)] : 0);
        }
        cuda::KVLayout lay = layout_of(c, 16, nullptr, dt);
        const auto img = device_image(f.kv, lay);
        const auto inv = rope_inv_freq(c);
        DeviceArray<float> dinv(inv);
        DeviceArray<int32_t> dpos(tok_pos), dseq(tok_seq), dslot(slot), dbt(btab);
        const int64_t n_splits = split > 0 ? (300 + split - 1) / split : 1;
        std::vector<float> out[2];
        std::vector<uint8_t> cache[2];
        for (int fused = 0; fused < 2; ++fused) {
          DeviceArray<float> dqkv(qkv), dout(size_t(T * qd)), dpart(size_t(T * c.n_heads * n_splits * (hd + 2)));
          DeviceArray<uint8_t> dkv(img);
          dout.poison();
          lay.base = dkv.get();
          cuda::AttentionArgs a;
          a.q = dqkv.get(), a.ldq = ld, a.out = dout.get(), a.ldo = qd, a.kv = lay, a.layer = 1;
          a.n_heads = c.n_heads, a.scale = 1.0f / std::sqrt(float(hd)), a.n_tok = T, a.n_seq = 2;
          a.tok_pos = dpos.get(), a.tok_seq = dseq.get(), a.block_tables = dbt.get(), a.max_blocks = MB;
          a.partial = dpart.get(), a.n_splits = n_splits, a.split_len = split > 0 ? split : 300;
          if (fused) {
            a.rope_inv_freq = dinv.get(), a.slot = dslot.get();
          } else {
            cuda::RopeKVArgs r;
            r.qkv = dqkv.get(), r.ld = ld, r.n_tok = T, r.n_heads = c.n_heads, r.pos = dpos.get(), r.slot = dslot.get();
            r.inv_freq = dinv.get(), r.kv = lay, r.layer = 1;
            cuda::rope_kv_write(r, nullptr);
          }
          cuda::attention_decode_mma(a, nullptr);
          out[fused] = dout.download();
          cache[fused] = dkv.download();
        }
        EXPECT_NE(cache[0], img) << "the new tokens were not written";
        EXPECT_EQ(cache[1], cache[0]) << "the fused kernel wrote different cache bytes";
        for (size_t i = 0; i < out[0].size(); ++i)
          ASSERT_NEAR(out[1][i], out[0][i], 1e-5 * (1 + std::fabs(out[0][i]))) << "element " << i;
      }
  cuda::AttentionArgs a;  // the SIMT kernel refuses the fusion clearly
  float dummy = 0.0f;
  a.kv.dtype = DType::F32, a.kv.head_dim = 64, a.kv.block_size = 16, a.kv.n_kv_heads = 2, a.n_heads = 8, a.n_tok = 1;
  a.rope_inv_freq = &dummy;
  EXPECT_THROW(cuda::attention_decode_simt(a, nullptr), Error);
}

TEST(CudaAttention, PrefillMatchesReference) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (DType dt : {DType::F32, DType::BF16, DType::I8})
    for (int64_t hd : {32, 48, 64, 128})
      for (int64_t window : {0, 20}) {
        AttnCase k;
        k.hd = hd, k.heads = 6, k.kv_heads = 2, k.window = window, k.prefill = true, k.dt = dt;
        check_attention(rng, k);
      }
}

TEST(CudaAttention, DecodeSplitsCoverTheContext) {
  for (int64_t ctx : {1, 16, 96, 128, 129, 2048, 4096, 131072}) {
    int64_t n = 0, len = 0;
    cuda::decode_splits(ctx, n, len);
    EXPECT_GE(n * len, ctx);
    EXPECT_LE(n, 64);
    EXPECT_EQ(len % 16, 0);
  }
}

TEST(CudaAttention, RefusesAnUnsupportedCacheDtype) {
  ANYBIT_REQUIRE_CUDA();
  cuda::AttentionArgs a;
  a.kv.dtype = DType::Q8_0, a.kv.head_dim = 64, a.kv.block_size = 16, a.kv.n_kv_heads = 2, a.n_heads = 8, a.n_tok = 1;
  EXPECT_THROW(cuda::attention_decode(a, nullptr), Error);
}

}  // namespace
}  // namespace anybit

#else

TEST(CudaAttention, SkippedWithoutCuda) { GTEST_SKIP() << "built without CUDA: GPU attention tests skipped"; }

#endif
