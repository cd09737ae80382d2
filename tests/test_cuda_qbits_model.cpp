// The CUDA model on any-bit (QBITS) weights against the CPU LlamaModel on the same weights:
// uniform models at every bit width and both zero-point modes, a model that mixes formats
// inside the fused q|k|v and gate|up matrices (and keeps some tensors dense bf16), and the
// weights the GPU refuses; quantized embedding tables and GGUF block models. Skipped when no
// CUDA device is visible.
#include <gtest/gtest.h>

#include "test_cuda_util.h"

#ifdef ANYBIT_WITH_CUDA
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>

#include "core/error.h"
#include "model/llama.h"
#include "model/llama_cuda.h"
#include "quant/group_quant.h"
#include "quant/random_qbits.h"
#include "runtime/random_model.h"
#include "runtime/sampler.h"
#include "test_gguf_common.h"

namespace anybit {
namespace {

// How one matrix of a test model is stored.
struct QSpec {
  bool dense = false;  // keep the random bf16 tensor
  int bits = 4, group = 64;
  bool asym = false;
  bool input_scale = false;  // an AWQ-style per-input scale (shared by the tensors that read the same input)
  int act_bits = 0;
  bool bad_scale = false;  // one infinite scale: the GPU loader refuses it
};
using SpecFn = std::function<QSpec(const std::string& name)>;

// Every K (256, 768) and every fused width is a multiple of 128, so groups 32..128 fit.
ModelConfig test_shape(bool biases) {
  ModelConfig c = named_shape("tiny");  // hidden 256, 4 layers, 8 heads / 2 kv heads of 32, FFN 768
  // A smaller vocabulary leaves larger gaps between the top logits of random weights, so
  // the greedy comparison measures the kernels rather than near-ties.
  c.vocab = 2048;
  c.attn_bias = c.attn_out_bias = c.mlp_bias = biases;
  return c;
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// Tensors that read the same input (q, k, v; gate, up) get the same input_scale, as AWQ
// produces, so the loader may stack them.
std::vector<float> input_scale_for(const std::string& name, int64_t cols) {
  std::string key = name;
  const size_t attn = name.find(".self_attn."), layer_end = attn != std::string::npos ? attn : name.find(".mlp.");
  if (layer_end != std::string::npos) {
    const std::string layer = name.substr(0, layer_end);
    if (contains(name, "q_proj") || contains(name, "k_proj") || contains(name, "v_proj")) key = layer + ".qkv";
    if (contains(name, "gate_proj") || contains(name, "up_proj")) key = layer + ".gate_up";
  }
  std::mt19937_64 rng(std::hash<std::string>{}(key));
  std::uniform_real_distribution<float> u(0.5f, 2.0f);
  std::vector<float> v(static_cast<size_t>(cols));
  for (auto& x : v) x = u(rng);
  return v;
}

// The random bf16 model of `cfg` with every matrix (embedding excluded unless asked)
// replaced per `spec` by a random QBITS weight, plus random biases where cfg has them.
ModelFiles qbits_model(const ModelConfig& cfg, const SpecFn& spec, uint64_t seed, bool quantize_embedding = false) {
  ModelFiles dense = make_random_model(cfg, DType::BF16, seed);
  ModelFiles m;
  m.path = dense.path, m.format = dense.format, m.config = dense.config;
  auto store = std::make_shared<TensorStore>();
  store->set_origin("test qbits model");
  // The dense store owns the tensors that are kept: keep it alive as long as this one.
  store->keep_alive(std::shared_ptr<MappedFile>(dense.weights, nullptr));
  uint64_t wseed = seed * 7919;
  for (const auto& [name, t] : dense.weights->all()) {
    const bool embedding = name == "model.embed_tokens.weight";
    const QSpec s = t.shape.size() == 2 && (!embedding || quantize_embedding) ? spec(name) : QSpec{true};
    if (s.dense) {
      store->add(t);
      continue;
    }
    auto q = make_random_qweight(t.shape[0], t.shape[1], s.bits, s.group, s.asym, ++wseed);
    q->act_bits = s.act_bits;
    if (s.bad_scale) q->scales[0] = INFINITY;
    if (s.input_scale) q->input_scale = input_scale_for(name, t.shape[1]);
    TensorView v = t;
    v.dtype = DType::QBITS;
    v.data = q.get();
    v.nbytes = q->codes.size() + 2 * (q->scales.size() + q->zeros.size());
    store->add(v);
    store->keep_alive(std::shared_ptr<MappedFile>(std::move(q), nullptr));
  }
  std::mt19937_64 rng(seed + 17);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  auto bias = [&](const std::string& name, int64_t n) {
    std::vector<uint8_t> bytes(size_t(n) * 4);
    for (int64_t i = 0; i < n; ++i) {
      const float x = nd(rng);
      std::memcpy(bytes.data() + 4 * i, &x, 4);
    }
    TensorView t;
    t.name = name;
    t.dtype = DType::F32;
    t.shape = {n};
    t.nbytes = bytes.size();
    t.data = store->own(std::move(bytes));
    store->add(std::move(t));
  };
  const int64_t qd = cfg.n_heads * cfg.head_dim, kvd = cfg.n_kv_heads * cfg.head_dim;
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    if (cfg.attn_bias) {
      bias(p + "self_attn.q_proj.bias", qd);
      bias(p + "self_attn.k_proj.bias", kvd);
      bias(p + "self_attn.v_proj.bias", kvd);
    }
    if (cfg.attn_out_bias) bias(p + "self_attn.o_proj.bias", cfg.hidden);
    if (cfg.mlp_bias) {
      bias(p + "mlp.gate_proj.bias", cfg.ffn);
      bias(p + "mlp.up_proj.bias", cfg.ffn);
      bias(p + "mlp.down_proj.bias", cfg.hidden);
    }
  }
  m.weights = std::move(store);
  return m;
}

// The same model with every QBITS matrix replaced by its exact fp32 value,
// W[r][c] = s * (q - z) / input_scale[c]: what both backends approximate.
ModelFiles dequantized(const ModelFiles& f) {
  ModelFiles m;
  m.path = f.path, m.format = f.format, m.config = f.config;
  auto store = std::make_shared<TensorStore>();
  store->set_origin("dequantized test model");
  store->keep_alive(std::shared_ptr<MappedFile>(f.weights, nullptr));
  for (const auto& [name, t] : f.weights->all()) {
    const bool blocks = t.dtype != DType::QBITS && dtype_block_size(t.dtype) > 1;  // GGUF Q8_0, Q4_0, K-quants
    if (t.dtype != DType::QBITS && !blocks) {
      store->add(t);
      continue;
    }
    std::vector<float> w(size_t(t.shape[0] * t.shape[1]));
    if (blocks) {
      const size_t rb = dtype_row_bytes(t.dtype, t.shape[1]);
      for (int64_t r = 0; r < t.shape[0]; ++r)
        dequantize_row(t.dtype, static_cast<const uint8_t*>(t.data) + size_t(r) * rb, w.data() + r * t.shape[1],
                       t.shape[1]);
    } else {
      const QuantizedWeight& q = *static_cast<const QuantizedWeight*>(t.data);
      for (int64_t r = 0; r < q.rows; ++r) {
        float* row = w.data() + r * q.cols;
        q.dequantize_row(r, row);
        if (!q.input_scale.empty())
          for (int64_t c = 0; c < q.cols; ++c) row[c] /= q.input_scale[size_t(c)];
      }
    }
    std::vector<uint8_t> bytes(w.size() * 4);
    std::memcpy(bytes.data(), w.data(), bytes.size());
    TensorView v = t;
    v.dtype = DType::F32;
    v.nbytes = bytes.size();
    v.data = store->own(std::move(bytes));
    store->add(v);
  }
  m.weights = std::move(store);
  return m;
}

struct Agreement {
  int64_t rows = 0, same = 0;
};

// Tolerance. Neither backend computes the QBITS matrices exactly, so the GPU is checked
// against a third model: the CPU LlamaModel on the exact fp32 values of the same weights
// (`dequantized`). The GPU GEMV rounds activations to fp16 and sums each 32-element chunk
// in fp16 (W*A16), the prefill path rounds the dequantized weights to bf16; the CPU kernels
// quantize activations to int8 per group (up to half a step, amax/254, per element). Both
// errors are relative to the activations and compound over the 4 layers (most of all with
// the random asymmetric zero points, whose s * (sum x q - z sum x) cancels large terms), so
// bounds are relative to the largest logit. Measured on an H100 over all these models: GPU
// vs exact <= 1.6%, CPU vs exact <= 5.4%, GPU vs CPU <= 5.6% (2026-11-22). Bounds: GPU vs
// exact 3%; GPU vs CPU 10% (the CPU's own error dominates that difference); +1e-3 for
// near-zero rows. A wiring bug (wrong part offset, bias slot, row interleave, input_scale,
// missing RMSNorm) moves logits by O(100%). Scale-free check: the greedy token must agree
// with the CPU's on >= 90% of rows; random weights leave some rows with near-tied top
// logits that a 1% error may swap.
double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::fabs(x)));
  return m;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    e = std::isnan(d) ? INFINITY : std::max(e, d);
  }
  return e;
}

// c: CPU on the QBITS weights, g: GPU on the same, r: CPU on their exact fp32 values.
// ANYBIT_TEST_VERBOSE=1 prints the three errors of every call.
// W*A8 models (act_bits 8) quantize every activation row to int8 in both backends, with
// the same semantics, so the GPU is held to the CPU (a8 bounds) rather than to the exact
// fp32-activation model, whose distance is the format's own error.
struct Bounds {
  double gpu_exact = 0.03, gpu_cpu = 0.10;
  bool agree_with_cpu = false;  // the greedy check compares with the CPU, not the exact model
};

void expect_close(const ForwardOutput& c, const ForwardOutput& g, const ForwardOutput& r, const std::string& what,
                  Agreement& agree, const Bounds& bd) {
  ASSERT_EQ(c.logits.size(), g.logits.size()) << what;
  ASSERT_EQ(c.row_offset, g.row_offset) << what;
  ASSERT_EQ(r.logits.size(), g.logits.size()) << what;
  const double scale = max_abs(c.logits), e_gc = max_diff(g.logits, c.logits), e_gr = max_diff(g.logits, r.logits),
               e_cr = max_diff(c.logits, r.logits);
  if (std::getenv("ANYBIT_TEST_VERBOSE"))
    std::printf("%-44s max|cpu| %.4f  gpu-cpu %.5f (%.2f%%)  gpu-exact %.5f (%.2f%%)  cpu-exact %.5f (%.2f%%)\n",
                what.c_str(), scale, e_gc, 100 * e_gc / scale, e_gr, 100 * e_gr / scale, e_cr, 100 * e_cr / scale);
  EXPECT_LE(e_gr, bd.gpu_exact * scale + 1e-3) << what << ": max |gpu - exact| = " << e_gr << ", max |cpu| = " << scale;
  EXPECT_LE(e_gc, bd.gpu_cpu * scale + 1e-3) << what << ": max |gpu - cpu| = " << e_gc << ", max |cpu| = " << scale
                                       << " (cpu - exact: " << e_cr << ")";
  const int64_t V = c.vocab;
  for (size_t i = 0; i * size_t(V) < c.logits.size(); ++i) {
    ++agree.rows;
    // Against the exact model: the CPU's int8 activations are the noisier side, and random
    // weights give near-tied logits (55 of 62 rows agreed GPU vs CPU on an H100).
    const ForwardOutput& o = bd.agree_with_cpu ? c : r;
    agree.same += argmax(o.logits.data() + i * size_t(V), V) == argmax(g.logits.data() + i * size_t(V), V);
  }
}

// (a) a 20-token prefill with all logits (the dequantize + GEMM path), (b) 10 greedy decode
// steps (the fused GEMV path, replayed from a CUDA graph), (c) two more prompts in one call,
// then batched decode of the 3 sequences (m = 3 GEMVs), (d) batched decode of 6.
void compare_with_cpu(const ModelFiles& f, uint64_t seed, const Bounds& bd = Bounds{}) {
  const ModelConfig& cfg = f.config;
  const ModelFiles exact = dequantized(f);
  LlamaModel cpu(cfg, f.weights), ref(cfg, exact.weights);
  LlamaCudaModel gpu(cfg, f.weights);
  EXPECT_EQ(gpu.weight_bytes(), f.weights->total_bytes());
  KVCache kv_c(cfg, 16, 16), kv_g(cfg, 16, 16), kv_r(cfg, 16, 16);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  auto toks = [&](int n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& t : v) t = int32_t(rng() % uint32_t(cfg.vocab));
    return v;
  };
  Agreement agree;
  SequenceKV seqs[3][6];  // [backend][sequence]
  ForwardOutput out[3];
  // One call on the three backends: entries are (sequence index, tokens, count, all logits).
  struct Entry {
    int seq;
    const int32_t* tokens;
    int64_t n;
    bool all;
  };
  auto step = [&](const std::vector<Entry>& entries, const std::string& what) {
    for (int b = 0; b < 3; ++b) {
      std::vector<BatchEntry> batch;
      for (const Entry& e : entries) batch.push_back(BatchEntry{&seqs[b][e.seq], e.tokens, e.n, e.all});
      if (b == 0) cpu.forward(batch, kv_c, out[0]);
      if (b == 1) gpu.forward(batch, kv_g, out[1]);
      if (b == 2) ref.forward(batch, kv_r, out[2]);
    }
    expect_close(out[0], out[1], out[2], what, agree, bd);
  };

  const auto a = toks(20);
  step({{0, a.data(), 20, true}}, "prefill of 20 tokens, all logits");
  int32_t id = argmax(out[0].row(0, 19), out[0].vocab);
  for (int i = 0; i < 10; ++i) {
    step({{0, &id, 1, false}}, "decode step " + std::to_string(i));
    id = argmax(out[0].row(0), out[0].vocab);  // every backend continues with the CPU's token
  }
  EXPECT_GT(gpu.graph_replays(), 0) << "decode steps did not use the CUDA graph";

  const auto b = toks(7), c = toks(13);
  step({{1, b.data(), 7, false}, {2, c.data(), 13, false}}, "two prefills in one call");
  for (int i = 0; i < 5; ++i) {
    const auto n = toks(3);
    step({{0, &n[0], 1, false}, {1, &n[1], 1, false}, {2, &n[2], 1, false}},
         "batched decode of 3 sequences, step " + std::to_string(i));
  }
  // Six sequences decoding at once: m = 6 > kGemvMaxRows leaves the fused-input path (the
  // QBITS weights still take the tensor-core GEMV up to kQbitsGemvMaxRows) inside the graph
  // capture.
  const auto d = toks(6);
  step({{3, &d[0], 2, false}, {4, &d[2], 2, false}, {5, &d[4], 2, false}}, "three 2-token prefills");
  for (int i = 0; i < 2; ++i) {
    const auto n = toks(6);
    std::vector<Entry> all;
    for (int j = 0; j < 6; ++j) all.push_back({j, &n[size_t(j)], 1, false});
    step(all, "batched decode of 6 sequences, step " + std::to_string(i));
  }
  EXPECT_GE(double(agree.same), 0.9 * double(agree.rows))
      << "greedy tokens of the GPU and the exact model agree on " << agree.same << " of " << agree.rows << " rows";
}

TEST(CudaQbitsModel, MatchesCpuModelAtEveryBitWidth) {
  ANYBIT_REQUIRE_CUDA();
  const ModelConfig cfg = test_shape(false);
  for (int bits : {2, 3, 4, 5, 8}) {
    for (bool asym : {false, true}) {
      // Symmetric with group 64; asymmetric with group 128 and AWQ input scales.
      SCOPED_TRACE(std::to_string(bits) + " bits, " + (asym ? "asymmetric g128 + input_scale" : "symmetric g64"));
      const SpecFn spec = [&](const std::string&) {
        QSpec s;
        s.bits = bits, s.asym = asym, s.group = asym ? 128 : 64, s.input_scale = asym;
        return s;
      };
      compare_with_cpu(qbits_model(cfg, spec, 100 + uint64_t(bits) * 2 + asym), uint64_t(bits));
    }
  }
}

// W*A8 models (int8 activations per token) at 8, 6 and 4 bits: prefill, graph-replayed
// decode and batched decode all run a8_qbits.
TEST(CudaQbitsModel, IntActivationModelsMatchCpuModel) {
  ANYBIT_REQUIRE_CUDA();
  const ModelConfig cfg = test_shape(true);
  for (int bits : {8, 6, 4}) {
    const bool asym = bits == 6;
    SCOPED_TRACE(std::to_string(bits) + " bits, act_bits 8" + (asym ? ", asymmetric g64 + input_scale" : ", g128"));
    const SpecFn spec = [&](const std::string&) {
      QSpec s;
      s.bits = bits, s.asym = asym, s.group = asym ? 64 : 128, s.input_scale = asym, s.act_bits = 8;
      return s;
    };
    Bounds bd;
    bd.gpu_exact = 0.10, bd.gpu_cpu = 0.03, bd.agree_with_cpu = true;  // measured 2.98% / 1.47% on an H100
    compare_with_cpu(qbits_model(cfg, spec, 300 + uint64_t(bits)), uint64_t(bits), bd);
  }
}

// Formats mixed inside the fused matrices, layer by layer, with biases everywhere (their
// slots must follow the part offsets and the gate|up layout).
QSpec mixed_spec(const std::string& name) {
  QSpec s;
  if (name == "lm_head.weight") return QSpec{true};  // a QBITS checkpoint with a bf16 head
  const bool q = contains(name, "q_proj"), k = contains(name, "k_proj"), v = contains(name, "v_proj"),
             o = contains(name, "o_proj"), gate = contains(name, "gate_proj"), up = contains(name, "up_proj"),
             down = contains(name, "down_proj");
  if (contains(name, "layers.0.")) {
    // q | k | v in three parts (q and v agree but are not adjacent); gate and up at different
    // bit widths: [gate | up] then silu_mul; o dense.
    if (q || v) s.bits = 4, s.group = 64;
    if (k) s.bits = 3, s.group = 128, s.asym = true;
    if (o) s.dense = true;
    if (gate) s.bits = 4, s.group = 32;
    if (up) s.bits = 2, s.group = 128, s.asym = true;
    if (down) s.bits = 5, s.input_scale = true;
  } else if (contains(name, "layers.1.")) {
    // dense q with k | v stacked (one QBITS part with a shared input_scale); gate | up
    // interleaved at 3 bits; down dense.
    if (q || down) s.dense = true;
    if (k || v) s.bits = 4, s.group = 128, s.input_scale = true;
    if (gate || up) s.bits = 3, s.asym = true, s.input_scale = true;
    if (o) s.bits = 8, s.group = 32;
  } else if (contains(name, "layers.3.")) {
    // dense gate with QBITS up; q | k | v one part at 2 bits.
    if (q || k || v) s.bits = 2, s.group = 32, s.asym = true;
    if (gate) s.dense = true;
    if (up) s.bits = 6, s.group = 128;
  }
  return s;  // layer 2: 4-bit g64 everywhere
}

TEST(CudaQbitsModel, MixedFormatsMatchCpuModel) {
  ANYBIT_REQUIRE_CUDA();
  compare_with_cpu(qbits_model(test_shape(true), mixed_spec, 21), 21);
}

// A QBITS embedding table (`anybit quantize --embed-bits`): the GPU loader widens it to f16,
// the CPU dequantizes one row per token.
TEST(CudaQbitsModel, QuantizedEmbeddingTableMatchesCpuModel) {
  ANYBIT_REQUIRE_CUDA();
  for (int bits : {4, 8}) {
    SCOPED_TRACE(std::to_string(bits) + "-bit embedding");
    const SpecFn spec = [&](const std::string& name) {
      QSpec s;
      if (name == "model.embed_tokens.weight") s.bits = bits, s.group = 32;
      return s;
    };
    compare_with_cpu(qbits_model(test_shape(false), spec, 31 + uint64_t(bits), true), uint64_t(bits));
  }
}

// The shapes of `anybit quantize` on a model whose widths are not whole groups of 128 (SmolLM's
// 576, 960): hidden 192 (6 query heads of 32 over 2 KV heads, 3 per group) takes groups of 64,
// FFN 352 (down_proj's rows) groups of 32 (quant::fitting_group); the embedding table is QBITS
// and, tied, also lm_head. Row counts of 192, 256 (q|k|v), 704 (gate|up) and 352 are not
// multiples of the kernels' 128-wide tiles.
TEST(CudaQbitsModel, WidthsThatAreNotWholeGroupsOf128MatchCpuModel) {
  ANYBIT_REQUIRE_CUDA();
  ModelConfig cfg = test_shape(false);
  cfg.hidden = 192, cfg.n_layers = 2, cfg.n_heads = 6, cfg.n_kv_heads = 2, cfg.head_dim = 32, cfg.ffn = 352;
  for (bool tied : {false, true}) {
    for (int bits : {4, 3}) {
      SCOPED_TRACE(std::to_string(bits) + " bits" + (tied ? ", tied embeddings" : ""));
      const SpecFn spec = [&](const std::string& name) {
        QSpec s;
        s.bits = name == "model.embed_tokens.weight" || name == "lm_head.weight" ? 8 : bits;
        s.asym = bits == 3, s.input_scale = bits == 3 && !contains(name, "embed") && !contains(name, "lm_head");
        s.group = quant::fitting_group(128, contains(name, "down_proj") ? cfg.ffn : cfg.hidden);
        return s;
      };
      ModelFiles f = qbits_model(cfg, spec, 41 + uint64_t(bits) + 10 * tied, true);
      if (tied) {
        auto store = std::make_shared<TensorStore>();
        store->set_origin("tied test model");
        store->keep_alive(std::shared_ptr<MappedFile>(f.weights, nullptr));
        for (const auto& [name, t] : f.weights->all())
          if (name != "lm_head.weight") store->add(t);
        f.weights = store;
        f.config.tie_embeddings = true;
      }
      compare_with_cpu(f, uint64_t(bits) + 10 * tied);
    }
  }
}

// llama.cpp's GGUF block formats, every matrix and the embedding table in one format: the
// loader converts the matrices to QBITS (exactly for Q8_0, Q4_0, Q4_K, Q5_K; 8-bit
// requantization for Q6_K and Q3_K) and widens the table to f16. The exact model is the
// blocks' own dequantization; the CPU runs its K-quant and Q8_0/Q4_0 kernels.
TEST(CudaQbitsModel, GgufBlockModelsMatchCpuModel) {
  ANYBIT_REQUIRE_CUDA();
  const ModelConfig cfg = test_shape(false);  // every K (256, 768) is whole 256-blocks
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_0, DType::Q4_0, DType::Q3_K}) {
    SCOPED_TRACE(dtype_name(t));
    ModelFiles dense = make_random_model(cfg, DType::BF16, seed + uint64_t(t));
    ModelFiles m;
    m.path = dense.path, m.format = dense.format, m.config = dense.config;
    auto store = std::make_shared<TensorStore>();
    store->set_origin("test GGUF block model");
    store->keep_alive(std::shared_ptr<MappedFile>(dense.weights, nullptr));
    for (const auto& [name, v] : dense.weights->all()) {
      if (v.shape.size() != 2) {
        store->add(v);
        continue;
      }
      // Values up to about 0.05, as the random bf16 model's N(0, 0.02).
      auto bytes = gguf_test::random_gguf_blocks(t, v.shape[0] * v.shape[1] / dtype_block_size(t), 0.05f, rng);
      TensorView b = v;
      b.dtype = t;
      b.nbytes = bytes.size();
      b.data = store->own(std::move(bytes));
      store->add(b);
    }
    m.weights = std::move(store);
    compare_with_cpu(m, seed);
  }
}

TEST(CudaQbitsModel, RefusesWhatTheGpuCannotRunNamingTheTensor) {
  ANYBIT_REQUIRE_CUDA();
  const ModelConfig cfg = test_shape(false);
  auto expect_error = [&](const SpecFn& spec, bool q_embed, const std::string& tensor, const std::string& why) {
    SCOPED_TRACE(tensor);
    ModelFiles f = qbits_model(cfg, spec, 5, q_embed);
    try {
      LlamaCudaModel gpu(cfg, f.weights);
      ADD_FAILURE() << "the CUDA model accepted the weights";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(tensor), std::string::npos) << msg;
      EXPECT_NE(msg.find(why), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
    }
  };
  auto bad_scale = [](std::vector<std::string> names) {
    return SpecFn([names](const std::string& n) {
      QSpec s;
      for (const auto& x : names)
        if (n == x) s.bad_scale = true;
      return s;
    });
  };
  // k alone (its own part) and gate + up (stacked into one interleaved weight before
  // packing: the loader must still name the tensor at fault).
  expect_error(bad_scale({"model.layers.1.self_attn.k_proj.weight"}), false, "model.layers.1.self_attn.k_proj.weight",
               "non-finite");
  expect_error(bad_scale({"model.layers.2.mlp.gate_proj.weight", "model.layers.2.mlp.up_proj.weight"}), false,
               "model.layers.2.mlp.gate_proj.weight", "non-finite");
  expect_error(bad_scale({"lm_head.weight"}), false, "lm_head.weight", "non-finite");
  // The failed loads freed their device memory: a full model still loads afterwards.
  ModelFiles ok = qbits_model(cfg, [](const std::string&) { return QSpec{}; }, 6);
  EXPECT_NO_THROW((LlamaCudaModel{cfg, ok.weights}));
}

}  // namespace
}  // namespace anybit

#else

TEST(CudaQbitsModel, SkippedWithoutCuda) { GTEST_SKIP() << "built without CUDA: GPU QBITS model tests skipped"; }

#endif
