// LlamaCudaModel's weight loading: every matrix checked like LlamaModel does and copied to
// the device once, fused where the kernels can run the parts as one matrix.
//
// Fusing rules (docs/CUDA.md):
// - q|k|v: adjacent tensors of one format are stacked row-wise into one device matrix
//   (dense: same dtype; QBITS: same bits, group, zero-point mode, act_bits and identical
//   input_scale, so one set of kernel parameters and one 1/input_scale vector serve all
//   rows). A change of format starts a new part; parts write adjacent output columns of
//   the same qkv row, so mixed q/k/v (dense and QBITS, or different bit widths) runs as
//   two or three launches instead of failing.
// - gate|up: one format -> rows interleaved (gate_0, up_0, gate_1, ...) so the GEMV
//   epilogue computes silu(gate) * up; otherwise two parts writing [gate F | up F] and a
//   separate silu_mul.
// - o, down, lm_head: one part each, in whatever format the tensor has.
#ifdef ANYBIT_WITH_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <deque>

#include "core/error.h"
#include "core/kquants.h"
#include "kernels/qbits_cuda_pack.h"
#include "kernels/rope.h"
#include "model/llama_cuda.h"
#include "quant/gguf_qbits.h"
#include "quant/quantized_weight.h"

namespace anybit {

using cuda::check;

namespace {

bool dense_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }
bool gguf_block_dtype(DType t) { return t == DType::Q8_0 || t == DType::Q4_0 || kquant_block_bytes(t) > 0; }

const QuantizedWeight& qweight(const TensorView& t) { return *static_cast<const QuantizedWeight*>(t.data); }

// Whether the rows of `a` and `b` can live in one device matrix.
bool same_format(const TensorView& a, const TensorView& b) {
  if (a.dtype != b.dtype) return false;
  if (a.dtype != DType::QBITS) return a.shape[1] == b.shape[1];
  const QuantizedWeight &x = qweight(a), &y = qweight(b);
  return x.bits == y.bits && x.group == y.group && x.asymmetric == y.asymmetric && x.act_bits == y.act_bits &&
         x.cols == y.cols && x.input_scale == y.input_scale;
}

// The rows of several same-format QBITS weights in one weight: one after the other, or
// interleaved row by row (every weight then has the same number of rows).
QuantizedWeight merge_rows(const std::vector<const QuantizedWeight*>& ws, bool interleave) {
  const QuantizedWeight& f = *ws[0];
  QuantizedWeight out;
  out.bits = f.bits, out.group = f.group, out.asymmetric = f.asymmetric, out.act_bits = f.act_bits;
  out.cols = f.cols, out.quantizer = f.quantizer, out.input_scale = f.input_scale;
  std::vector<std::pair<const QuantizedWeight*, int64_t>> order;
  if (interleave) {
    for (int64_t r = 0; r < f.rows; ++r)
      for (const QuantizedWeight* w : ws) order.emplace_back(w, r);
  } else {
    for (const QuantizedWeight* w : ws)
      for (int64_t r = 0; r < w->rows; ++r) order.emplace_back(w, r);
  }
  out.rows = int64_t(order.size());
  const size_t rb = f.row_code_bytes(), G = size_t(f.groups_per_row());
  out.codes.resize(order.size() * rb);
  out.scales.resize(order.size() * G);
  if (f.asymmetric) out.zeros.resize(order.size() * G);
  for (size_t i = 0; i < order.size(); ++i) {
    const auto& [w, r] = order[i];
    // Sizes were validated by the caller's shape checks only; a short vector in a
    // malformed weight must fail in pack_qbits_for_gpu, not read out of bounds here.
    if (w->codes.size() < size_t(r + 1) * rb || w->scales.size() < size_t(r + 1) * G ||
        (f.asymmetric && w->zeros.size() < size_t(r + 1) * G))
      fail("QBITS (CUDA): row {} is missing from the weight's codes, scales or zeros", r);
    std::memcpy(out.codes.data() + i * rb, w->codes.data() + size_t(r) * rb, rb);
    std::memcpy(out.scales.data() + i * G, w->scales.data() + size_t(r) * G, G * sizeof(float));
    if (f.asymmetric) std::memcpy(out.zeros.data() + i * G, w->zeros.data() + size_t(r) * G, G * sizeof(float));
  }
  return out;
}

}  // namespace

void LlamaCudaModel::load_weights() {
  const ModelConfig& cfg = cfg_;
  const TensorStore& w = *weights_;
  const std::string& origin = w.origin();
  const int64_t H = cfg.hidden, hd = cfg.head_dim, qd = cfg.n_heads * hd, kvd = cfg.n_kv_heads * hd;
  size_t qscratch_bytes = 0;

  // GGUF block matrices (llama.cpp's Q8_0, Q4_0 and K-quants) run on the QBITS kernels:
  // converted here once (quant/gguf_qbits.h), the copies kept until the end of the load.
  std::deque<QuantizedWeight> converted;
  std::deque<TensorView> converted_views;
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) -> const TensorView& {
    const TensorView& t = w.get(name, {rows, cols});
    if (t.dtype == DType::QBITS) {
      const auto* q = static_cast<const QuantizedWeight*>(t.data);
      if (!q || q->rows != rows || q->cols != cols)
        fail("{}: quantized tensor {} is not {}x{}", origin, name, rows, cols);
    } else if (gguf_block_dtype(t.dtype)) {
      try {
        converted.push_back(quant::qbits_from_gguf_blocks(t.dtype, t.data, rows, cols));
      } catch (const Error& e) {
        fail("{}: tensor {}: {}", origin, name, e.what());
      }
      TensorView v = t;
      v.dtype = DType::QBITS, v.data = &converted.back();
      converted_views.push_back(v);
      return converted_views.back();
    } else if (!dense_dtype(t.dtype)) {
      fail("{}: tensor {} has dtype {}; the CUDA backend runs f32, f16, bf16, QBITS and GGUF block weights", origin,
           name, dtype_name(t.dtype));
    }
    return t;
  };
  // pack_qbits_for_gpu's message with the tensor named. When `q` merges several tensors,
  // each is packed alone to find the one at fault (error path only).
  auto pack = [&](const QuantizedWeight& q, const std::vector<const TensorView*>& src) {
    try {
      return pack_qbits_for_gpu(q);
    } catch (const Error& e) {
      if (src.size() > 1) {
        for (const TensorView* t : src) {
          try {
            pack_qbits_for_gpu(qweight(*t));
          } catch (const Error& e1) {
            fail("{}: tensor {}: {}", origin, t->name, e1.what());
          }
        }
      }
      std::string names;
      for (const TensorView* t : src) names += (names.empty() ? "" : " + ") + t->name;
      fail("{}: tensor {}: {}", origin, names, e.what());
    }
  };
  // One device matrix from tensors of one format (same_format), stacked or interleaved.
  auto part = [&](const std::vector<const TensorView*>& ts, bool interleave) {
    LinearPart p;
    const TensorView& f = *ts[0];
    const int64_t cols = f.shape[1];
    if (f.dtype == DType::QBITS) {
      QbitsGpuPack packed;
      if (ts.size() == 1) {
        packed = pack(qweight(f), ts);
      } else {
        std::vector<const QuantizedWeight*> qs;
        for (const TensorView* t : ts) qs.push_back(&qweight(*t));
        packed = pack(merge_rows(qs, interleave), ts);
      }
      qallocs_.push_back(cuda::upload_qbits(packed));
      p.qbits = true;
      p.q = qallocs_.back().w;
      qscratch_bytes = std::max(qscratch_bytes, cuda::qbits_scratch_bytes(p.q));
      return p;
    }
    p.dense.dtype = f.dtype;
    p.dense.cols = cols;
    for (const TensorView* t : ts) p.dense.rows += t->shape[0];
    if (interleave) {
      const size_t rb = dtype_row_bytes(f.dtype, cols);
      std::vector<uint8_t> host(size_t(p.dense.rows) * rb);
      for (int64_t r = 0; r < f.shape[0]; ++r)
        for (size_t j = 0; j < ts.size(); ++j)
          std::memcpy(host.data() + (size_t(r) * ts.size() + j) * rb,
                      static_cast<const uint8_t*>(ts[j]->data) + size_t(r) * rb, rb);
      p.dense.data = upload(host.data(), host.size());
    } else {
      size_t bytes = 0;
      for (const TensorView* t : ts) bytes += t->nbytes;
      // Straight from the (mapped) tensors: an 8B model's q|k|v need no host copy.
      char* dst = static_cast<char*>(upload(nullptr, bytes));
      size_t off = 0;
      for (const TensorView* t : ts) {
        check(cudaMemcpy(dst + off, t->data, t->nbytes, cudaMemcpyHostToDevice), "cudaMemcpy (weights)");
        off += t->nbytes;
      }
      p.dense.data = dst;
    }
    if (cols % (f.dtype == DType::F32 ? 4 : 8)) gemv_ok_ = false;
    return p;
  };
  // Output columns in tensor order; adjacent tensors of one format share a part.
  auto stacked = [&](const std::vector<const TensorView*>& ts) {
    Linear l;
    int64_t offset = 0;
    for (size_t i = 0; i < ts.size();) {
      size_t j = i + 1;
      while (j < ts.size() && same_format(*ts[i], *ts[j])) ++j;
      LinearPart p = part(std::vector<const TensorView*>(ts.begin() + long(i), ts.begin() + long(j)), false);
      p.offset = offset;
      for (size_t k = i; k < j; ++k) offset += ts[k]->shape[0];
      l.parts.push_back(p);
      i = j;
    }
    return l;
  };
  auto gate_up = [&](const TensorView& g, const TensorView& u) {
    if (!same_format(g, u)) return stacked({&g, &u});  // different formats: [gate F | up F]
    Linear l;
    l.parts.push_back(part({&g, &u}, true));
    l.pairs = true;
    return l;
  };
  auto vec_f32 = [&](const std::string& name, int64_t n) {
    const TensorView& t = w.get(name, {n});
    std::vector<float> v(size_t(t.numel()));
    dequantize_row(t.dtype, t.data, v.data(), t.numel());
    return v;
  };
  auto upload_f32 = [&](const std::vector<float>& v) {
    return static_cast<const float*>(upload(v.data(), v.size() * sizeof(float)));
  };
  // Concatenated biases (in the matrix's output order); null when absent.
  auto bias = [&](const std::vector<std::pair<std::string, int64_t>>& parts, bool present) -> const float* {
    if (!present) return nullptr;
    std::vector<float> all;
    for (const auto& [name, n] : parts) {
      const auto v = vec_f32(name, n);
      all.insert(all.end(), v.begin(), v.end());
    }
    return upload_f32(all);
  };

  const TensorView& emb_src = w.get("model.embed_tokens.weight", {cfg.vocab, H});
  // A table of GGUF blocks or QBITS codes is widened to f16 on the host (the lookup kernel
  // reads dense rows); f16 keeps 11 significant bits, far below the codes' own rounding.
  std::vector<uint16_t> emb_f16;
  TensorView emb = emb_src;
  const auto* emb_q = emb_src.dtype == DType::QBITS ? static_cast<const QuantizedWeight*>(emb_src.data) : nullptr;
  if (emb_src.dtype == DType::QBITS && (!emb_q || emb_q->rows != cfg.vocab || emb_q->cols != H))
    fail("{}: the quantized embedding table {} is not {}x{}", origin, emb_src.name, cfg.vocab, H);
  if (emb_q || (gguf_block_dtype(emb_src.dtype) && H % dtype_block_size(emb_src.dtype) == 0)) {
    emb_f16.resize(size_t(cfg.vocab * H));
    const size_t rb = emb_q ? 0 : dtype_row_bytes(emb_src.dtype, H);
#pragma omp parallel
    {
      std::vector<float> row(static_cast<size_t>(H));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < cfg.vocab; ++r) {
        if (emb_q) emb_q->dequantize_row(r, row.data());
        else dequantize_row(emb_src.dtype, static_cast<const uint8_t*>(emb_src.data) + size_t(r) * rb, row.data(), H);
        for (int64_t c = 0; c < H; ++c) emb_f16[size_t(r * H + c)] = f32_to_f16(row[size_t(c)]);
      }
    }
    emb.dtype = DType::F16, emb.data = emb_f16.data(), emb.nbytes = emb_f16.size() * 2;
  } else if (!dense_dtype(emb_src.dtype)) {
    fail("{}: embedding table {} has dtype {}; the CUDA backend reads f32, f16, bf16, QBITS and GGUF block "
         "embeddings",
         origin, emb_src.name, dtype_name(emb_src.dtype));
  }
  embed_ = part({&emb}, false).dense;
  final_norm_ = upload_f32(vec_f32("model.norm.weight", H));
  if (cfg.tie_embeddings && !w.contains("lm_head.weight")) {
    LinearPart p;
    p.dense = embed_;
    lm_head_.parts.push_back(p);
  } else {
    lm_head_ = stacked({&matrix("lm_head.weight", cfg.vocab, H)});
  }
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer L;
    L.attn_norm = upload_f32(vec_f32(p + "input_layernorm.weight", H));
    L.mlp_norm = upload_f32(vec_f32(p + "post_attention_layernorm.weight", H));
    L.qkv = stacked({&matrix(p + "self_attn.q_proj.weight", qd, H), &matrix(p + "self_attn.k_proj.weight", kvd, H),
                     &matrix(p + "self_attn.v_proj.weight", kvd, H)});
    L.o = stacked({&matrix(p + "self_attn.o_proj.weight", H, qd)});
    L.gate_up = gate_up(matrix(p + "mlp.gate_proj.weight", cfg.ffn, H), matrix(p + "mlp.up_proj.weight", cfg.ffn, H));
    L.down = stacked({&matrix(p + "mlp.down_proj.weight", H, cfg.ffn)});
    L.qkv.bias = bias(
        {{p + "self_attn.q_proj.bias", qd}, {p + "self_attn.k_proj.bias", kvd}, {p + "self_attn.v_proj.bias", kvd}},
        cfg.attn_bias);
    L.o.bias = bias({{p + "self_attn.o_proj.bias", H}}, cfg.attn_out_bias);
    if (cfg.mlp_bias) {
      const auto g = vec_f32(p + "mlp.gate_proj.bias", cfg.ffn), u = vec_f32(p + "mlp.up_proj.bias", cfg.ffn);
      std::vector<float> gu(size_t(2 * cfg.ffn));
      for (size_t j = 0; j < g.size(); ++j) {
        if (L.gate_up.pairs) gu[2 * j] = g[j], gu[2 * j + 1] = u[j];
        else gu[j] = g[j], gu[g.size() + j] = u[j];
      }
      L.gate_up.bias = upload_f32(gu);
    }
    L.down.bias = bias({{p + "mlp.down_proj.bias", H}}, cfg.mlp_bias);
    layers_.push_back(L);
  }
  inv_freq_ = upload_f32(rope_inv_freq(cfg));
  if (qscratch_bytes > 0) {
    // cudaMalloc returns 256-byte aligned memory, which gemm_qbits requires.
    check(cudaMalloc(&qscratch_, qscratch_bytes), "cudaMalloc (QBITS dequantization scratch)");
  }
  weight_bytes_ = weights_->total_bytes();  // report the model's size, not the copies' count
}

}  // namespace anybit
#endif  // ANYBIT_WITH_CUDA
