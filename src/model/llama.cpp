#include "model/llama.h"

#include <cmath>
#include <cstring>
#include <string>

#include "core/error.h"
#include "kernels/attention.h"
#include "kernels/rope.h"
#include "quant/quantized_weight.h"

namespace anybit {

namespace {

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> v(size_t(t.numel()));
  dequantize_row(t.dtype, t.data, v.data(), t.numel());
  return v;
}

void add_bias(float* y, int64_t m, const std::vector<float>& b) {
  if (b.empty()) return;
  const int64_t n = int64_t(b.size());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) y[i * n + j] += b[size_t(j)];
}

void check_matrix_dtype(const TensorView& t, const std::string& origin) {
  const auto& table = kernels();
  if (!table.matmul[int(t.dtype)])
    fail("{}: tensor {} has dtype {}, which has no matmul kernel", origin, t.name, dtype_name(t.dtype));
  if (t.shape.size() == 2 && t.shape[1] % dtype_block_size(t.dtype) != 0)
    fail("{}: tensor {} row length {} is not a multiple of its block size", origin, t.name, t.shape[1]);
}

}  // namespace

const float* ForwardOutput::row(size_t entry, int64_t i) const {
  return logits.data() + size_t(row_offset[entry] + i) * size_t(vocab);
}

LlamaModel::LlamaModel(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights)
    : cfg_(cfg), weights_(std::move(weights)) {
  const TensorStore& w = *weights_;
  const std::string& origin = w.origin();
  const int64_t H = cfg.hidden, hd = cfg.head_dim;
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
    const TensorView& t = w.get(name, {rows, cols});
    check_matrix_dtype(t, origin);
    if (t.dtype == DType::QBITS) {  // data is a QuantizedWeight (quant/quantized_weight.h)
      const auto* q = static_cast<const QuantizedWeight*>(t.data);
      if (!q || q->rows != rows || q->cols != cols) fail("{}: quantized tensor {} is not {}x{}", origin, name, rows, cols);
    }
    return WeightMatrix{t.dtype, rows, cols, t.data};
  };
  auto vec = [&](const std::string& name, int64_t n) { return to_f32(w.get(name, {n})); };
  auto opt_vec = [&](const std::string& name, int64_t n, bool present) {
    return present ? vec(name, n) : std::vector<float>();
  };

  embed_ = &w.get("model.embed_tokens.weight", {cfg.vocab, H});
  // Rows are looked up one at a time: through dequantize_row, which reads every stored
  // dtype (GGUF blocks and K-quants included), or, for an any-bit table (`anybit quantize
  // --embed-bits`), through the QuantizedWeight's own row dequantization.
  if (embed_->dtype == DType::QBITS) {
    const auto* q = static_cast<const QuantizedWeight*>(embed_->data);
    if (!q || q->rows != cfg.vocab || q->cols != H || !q->input_scale.empty())
      fail("{}: the quantized embedding table is not {}x{} without input scales", origin, cfg.vocab, H);
  } else if (embed_->dtype == DType::I32 || embed_->dtype == DType::I64 || H % dtype_block_size(embed_->dtype) != 0) {
    fail("{}: embedding dtype {} is not supported", origin, dtype_name(embed_->dtype));
  }
  final_norm_ = vec("model.norm.weight", H);
  if (cfg.tie_embeddings && !w.contains("lm_head.weight")) {
    check_matrix_dtype(*embed_, origin);
    lm_head_ = WeightMatrix{embed_->dtype, cfg.vocab, H, embed_->data};
  } else {
    lm_head_ = matrix("lm_head.weight", cfg.vocab, H);
  }
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer L;
    L.prefix = p;
    L.attn_norm = vec(p + "input_layernorm.weight", H);
    L.mlp_norm = vec(p + "post_attention_layernorm.weight", H);
    L.q = matrix(p + "self_attn.q_proj.weight", cfg.n_heads * hd, H);
    L.k = matrix(p + "self_attn.k_proj.weight", cfg.n_kv_heads * hd, H);
    L.v = matrix(p + "self_attn.v_proj.weight", cfg.n_kv_heads * hd, H);
    L.o = matrix(p + "self_attn.o_proj.weight", H, cfg.n_heads * hd);
    L.gate = matrix(p + "mlp.gate_proj.weight", cfg.ffn, H);
    L.up = matrix(p + "mlp.up_proj.weight", cfg.ffn, H);
    L.down = matrix(p + "mlp.down_proj.weight", H, cfg.ffn);
    L.q_bias = opt_vec(p + "self_attn.q_proj.bias", cfg.n_heads * hd, cfg.attn_bias);
    L.k_bias = opt_vec(p + "self_attn.k_proj.bias", cfg.n_kv_heads * hd, cfg.attn_bias);
    L.v_bias = opt_vec(p + "self_attn.v_proj.bias", cfg.n_kv_heads * hd, cfg.attn_bias);
    L.o_bias = opt_vec(p + "self_attn.o_proj.bias", H, cfg.attn_out_bias);
    L.gate_bias = opt_vec(p + "mlp.gate_proj.bias", cfg.ffn, cfg.mlp_bias);
    L.up_bias = opt_vec(p + "mlp.up_proj.bias", cfg.ffn, cfg.mlp_bias);
    L.down_bias = opt_vec(p + "mlp.down_proj.bias", H, cfg.mlp_bias);
    layers_.push_back(std::move(L));
  }
  inv_freq_ = rope_inv_freq(cfg);
}

size_t LlamaModel::weight_bytes() const { return weights_->total_bytes(); }

void LlamaModel::Scratch::resize(int64_t t, const ModelConfig& c) {
  const size_t T = size_t(t);
  const size_t qd = size_t(c.n_heads * c.head_dim), kvd = size_t(c.n_kv_heads * c.head_dim);
  x.resize(T * size_t(c.hidden));
  xn.resize(T * size_t(c.hidden));
  proj.resize(T * size_t(c.hidden));
  q.resize(T * qd);
  att.resize(T * qd);
  k.resize(T * kvd);
  v.resize(T * kvd);
  gate.resize(T * size_t(c.ffn));
  up.resize(T * size_t(c.ffn));
  act.resize(T * size_t(c.ffn));
  pos.resize(T);
}

void LlamaModel::embed(const std::vector<BatchEntry>& batch, int64_t total) {
  const int64_t H = cfg_.hidden;
  const bool qbits = embed_->dtype == DType::QBITS;
  const size_t row_bytes = qbits ? 0 : dtype_row_bytes(embed_->dtype, H);
  int64_t t = 0;
  for (const auto& e : batch)
    for (int64_t i = 0; i < e.n_tokens; ++i, ++t) {
      const int32_t id = e.tokens[i];
      if (qbits)
        static_cast<const QuantizedWeight*>(embed_->data)->dequantize_row(id, s_.x.data() + t * H);
      else
        dequantize_row(embed_->dtype, static_cast<const uint8_t*>(embed_->data) + size_t(id) * row_bytes,
                       s_.x.data() + t * H, H);
      s_.pos[size_t(t)] = e.seq->n_tokens + i;
    }
}

void LlamaModel::linear(const Layer& L, const char* name, const WeightMatrix& w, const float* x, int64_t m,
                        float* y) {
  if (observer_) observer_(L.prefix + name, x, m, w.cols);
  kernels().matmul[int(w.dtype)](x, m, w, y);
}

void LlamaModel::attention_block(const Layer& L, int64_t layer, const std::vector<BatchEntry>& batch,
                                 int64_t total, KVCache& kv) {
  const auto& K = kernels();
  const int64_t H = cfg_.hidden, hd = cfg_.head_dim;
  const int64_t qd = cfg_.n_heads * hd, kvd = cfg_.n_kv_heads * hd;
  K.rmsnorm(s_.x.data(), L.attn_norm.data(), DType::F32, total, H, cfg_.rms_eps, s_.xn.data());
  linear(L, "self_attn.q_proj.weight", L.q, s_.xn.data(), total, s_.q.data());
  linear(L, "self_attn.k_proj.weight", L.k, s_.xn.data(), total, s_.k.data());
  linear(L, "self_attn.v_proj.weight", L.v, s_.xn.data(), total, s_.v.data());
  add_bias(s_.q.data(), total, L.q_bias);
  add_bias(s_.k.data(), total, L.k_bias);
  add_bias(s_.v.data(), total, L.v_bias);
  rope_apply(s_.q.data(), total, s_.pos.data(), cfg_.n_heads, hd, inv_freq_);
  rope_apply(s_.k.data(), total, s_.pos.data(), cfg_.n_kv_heads, hd, inv_freq_);

  // Write the new keys/values into each sequence's blocks, then attend.
  const int64_t bs = kv.block_size();
  int64_t t0 = 0;
  for (const auto& e : batch) {
    for (int64_t i = 0; i < e.n_tokens; ++i) {
      const int64_t p = e.seq->n_tokens + i;
      const int32_t block = e.seq->blocks[size_t(p / bs)];
      for (int64_t h = 0; h < cfg_.n_kv_heads; ++h) {
        std::memcpy(kv.k(block, layer, h) + (p % bs) * hd, s_.k.data() + (t0 + i) * kvd + h * hd, size_t(hd) * 4);
        std::memcpy(kv.v(block, layer, h) + (p % bs) * hd, s_.v.data() + (t0 + i) * kvd + h * hd, size_t(hd) * 4);
      }
    }
    AttentionArgs a;
    a.q = s_.q.data() + t0 * qd;
    a.n_q = e.n_tokens;
    a.pos0 = e.seq->n_tokens;
    a.layer = layer;
    a.n_heads = cfg_.n_heads;
    a.scale = 1.0f / std::sqrt(float(hd));
    a.window = cfg_.sliding_window;
    a.out = s_.att.data() + t0 * qd;
    attention_paged(a, kv, *e.seq);
    t0 += e.n_tokens;
  }
  linear(L, "self_attn.o_proj.weight", L.o, s_.att.data(), total, s_.proj.data());
  add_bias(s_.proj.data(), total, L.o_bias);
  for (int64_t i = 0; i < total * H; ++i) s_.x[size_t(i)] += s_.proj[size_t(i)];
}

void LlamaModel::mlp_block(const Layer& L, int64_t total) {
  const auto& K = kernels();
  const int64_t H = cfg_.hidden, F = cfg_.ffn;
  K.rmsnorm(s_.x.data(), L.mlp_norm.data(), DType::F32, total, H, cfg_.rms_eps, s_.xn.data());
  linear(L, "mlp.gate_proj.weight", L.gate, s_.xn.data(), total, s_.gate.data());
  linear(L, "mlp.up_proj.weight", L.up, s_.xn.data(), total, s_.up.data());
  add_bias(s_.gate.data(), total, L.gate_bias);
  add_bias(s_.up.data(), total, L.up_bias);
  K.silu_mul(s_.gate.data(), s_.up.data(), total, F, F, s_.act.data());
  linear(L, "mlp.down_proj.weight", L.down, s_.act.data(), total, s_.proj.data());
  add_bias(s_.proj.data(), total, L.down_bias);
  for (int64_t i = 0; i < total * H; ++i) s_.x[size_t(i)] += s_.proj[size_t(i)];
}

int64_t LlamaModel::reserve_batch(const std::vector<BatchEntry>& batch, KVCache& kv) {
  if (!kv.has_storage()) fail("forward: this KV cache has no host storage (it was made for a GPU backend)");
  int64_t total = 0;
  for (const auto& e : batch) {
    if (!e.seq || e.n_tokens <= 0 || !e.tokens) fail("forward: empty batch entry");
    for (int64_t i = 0; i < e.n_tokens; ++i)
      if (e.tokens[i] < 0 || e.tokens[i] >= cfg_.vocab)
        fail("token id {} is outside the vocabulary (size {})", e.tokens[i], cfg_.vocab);
    if (cfg_.max_position > 0 && e.seq->n_tokens + e.n_tokens > cfg_.max_position)
      fail("sequence of {} tokens exceeds the model's context of {}", e.seq->n_tokens + e.n_tokens,
           cfg_.max_position);
    total += e.n_tokens;
  }
  // Reserve every entry's blocks before touching anything; undo on failure.
  std::vector<size_t> had(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    had[i] = batch[i].seq->blocks.size();
    if (!kv.reserve(*batch[i].seq, batch[i].seq->n_tokens + batch[i].n_tokens)) {
      for (size_t j = 0; j <= i; ++j) {
        SequenceKV& s = *batch[j].seq;
        SequenceKV extra;
        extra.blocks.assign(s.blocks.begin() + long(had[j]), s.blocks.end());
        s.blocks.resize(had[j]);
        kv.release(extra);
      }
      fail("KV cache is full ({} blocks of {} tokens)", kv.n_blocks(), kv.block_size());
    }
  }
  return total;
}

void LlamaModel::forward_layers(const std::vector<BatchEntry>& batch, KVCache& kv, int64_t from, int64_t to,
                                std::vector<float>& stream) {
  if (from < 0 || to < from || to > cfg_.n_layers)
    fail("forward_layers: layers [{}, {}) of a {}-layer model", from, to, cfg_.n_layers);
  for (const auto& e : batch)
    if (e.seq && e.seq->n_tokens != 0) fail("forward_layers: the sequences must be fresh");
  const int64_t H = cfg_.hidden;
  int64_t total = 0;
  for (const auto& e : batch) total += e.n_tokens > 0 ? e.n_tokens : 0;
  if (from > 0 && int64_t(stream.size()) != total * H)
    fail("forward_layers: a stream of {} values for {} tokens of width {}", stream.size(), total, H);
  reserve_batch(batch, kv);
  s_.resize(total, cfg_);
  if (from == 0) {
    embed(batch, total);
  } else {
    std::copy(stream.begin(), stream.end(), s_.x.begin());
    int64_t t = 0;
    for (const auto& e : batch)
      for (int64_t i = 0; i < e.n_tokens; ++i) s_.pos[size_t(t++)] = i;
  }
  for (int64_t l = from; l < to; ++l) {
    attention_block(layers_[size_t(l)], l, batch, total, kv);
    mlp_block(layers_[size_t(l)], total);
  }
  stream.assign(s_.x.begin(), s_.x.begin() + total * H);
}

void LlamaModel::forward(const std::vector<BatchEntry>& batch, KVCache& kv, ForwardOutput& out) {
  const int64_t total = reserve_batch(batch, kv);
  int64_t out_rows = 0;
  for (const auto& e : batch) out_rows += e.all_logits ? e.n_tokens : 1;

  s_.resize(total, cfg_);
  embed(batch, total);
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    attention_block(layers_[size_t(l)], l, batch, total, kv);
    mlp_block(layers_[size_t(l)], total);
  }

  // Final norm and LM head only for the rows whose logits are wanted.
  const int64_t H = cfg_.hidden;
  out.vocab = cfg_.vocab;
  out.row_offset.assign(batch.size(), 0);
  int64_t t = 0, r = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const auto& e = batch[i];
    out.row_offset[i] = r;
    if (e.all_logits) {
      std::memmove(s_.xn.data() + r * H, s_.x.data() + t * H, size_t(e.n_tokens * H) * 4);
      r += e.n_tokens;
    } else {
      std::memmove(s_.xn.data() + r * H, s_.x.data() + (t + e.n_tokens - 1) * H, size_t(H) * 4);
      r += 1;
    }
    t += e.n_tokens;
    e.seq->n_tokens += e.n_tokens;
  }
  const auto& K = kernels();
  K.rmsnorm(s_.xn.data(), final_norm_.data(), DType::F32, out_rows, H, cfg_.rms_eps, s_.proj.data());
  out.logits.resize(size_t(out_rows * cfg_.vocab));
  if (observer_) observer_("lm_head.weight", s_.proj.data(), out_rows, H);
  K.matmul[int(lm_head_.dtype)](s_.proj.data(), out_rows, lm_head_, out.logits.data());
}

}  // namespace anybit
