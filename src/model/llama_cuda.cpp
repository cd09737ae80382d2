#ifdef ANYBIT_WITH_CUDA
#include "model/llama_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "kernels/rope.h"

namespace anybit {

using cuda::check;

namespace {

bool gpu_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

}  // namespace

void* LlamaCudaModel::upload(const void* host, size_t bytes) {
  void* d = nullptr;
  check(cudaMalloc(&d, bytes ? bytes : 16), "cudaMalloc (weights)");
  allocs_.push_back(d);
  if (bytes) check(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (weights)");
  weight_bytes_ += bytes;
  return d;
}

LlamaCudaModel::LlamaCudaModel(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights)
    : cfg_(cfg), weights_(std::move(weights)) {
  if (cuda::device_count() <= 0) fail("CUDA backend: no CUDA device is visible");
  const TensorStore& w = *weights_;
  const std::string& origin = w.origin();
  const int64_t H = cfg.hidden, hd = cfg.head_dim, qd = cfg.n_heads * hd, kvd = cfg.n_kv_heads * hd;
  if (hd > cuda::kMaxHeadDim || hd % 2) fail("{}: head_dim {} is not supported by the CUDA backend", origin, hd);
  if (cfg.n_heads % cfg.n_kv_heads || cfg.n_heads / cfg.n_kv_heads > 8)
    fail("{}: {} heads over {} kv heads is not supported by the CUDA backend", origin, cfg.n_heads, cfg.n_kv_heads);

  cudaDeviceProp prop{};
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  device_name_ = prop.name;
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  if (const char* g = std::getenv("ANYBIT_CUDA_GRAPHS")) graphs_on_ = std::string(g) != "0";

  auto tensor = [&](const std::string& name, std::vector<int64_t> shape) -> const TensorView& {
    const TensorView& t = w.get(name, shape);
    if (!gpu_dtype(t.dtype))
      fail("{}: tensor {} has dtype {}; the CUDA backend runs f32, f16 and bf16 weights", origin, name,
           dtype_name(t.dtype));
    return t;
  };
  // Several [rows_i, cols] tensors of one dtype stacked into one device matrix.
  auto stacked = [&](const std::vector<const TensorView*>& parts, int64_t cols) {
    cuda::DeviceWeight d;
    d.dtype = parts[0]->dtype;
    d.cols = cols;
    size_t bytes = 0;
    for (const TensorView* t : parts) {
      if (t->dtype != d.dtype)
        fail("{}: tensor {} is {} but {} is {}; fused CUDA matrices need one dtype", origin, t->name,
             dtype_name(t->dtype), parts[0]->name, dtype_name(d.dtype));
      d.rows += t->shape[0];
      bytes += t->nbytes;
    }
    void* dst = nullptr;
    check(cudaMalloc(&dst, bytes), "cudaMalloc (weights)");
    allocs_.push_back(dst);
    size_t off = 0;
    for (const TensorView* t : parts) {
      check(cudaMemcpy(static_cast<char*>(dst) + off, t->data, t->nbytes, cudaMemcpyHostToDevice), "cudaMemcpy");
      off += t->nbytes;
    }
    weight_bytes_ += bytes;
    d.data = dst;
    const int64_t vec = d.dtype == DType::F32 ? 4 : 8;
    if (cols % vec) gemv_ok_ = false;
    return d;
  };
  // gate and up rows interleaved (gate_0, up_0, gate_1, ...) so that one GEMV block owns
  // both halves of each SwiGLU product.
  auto interleaved = [&](const TensorView& g, const TensorView& u) {
    if (g.dtype != u.dtype)
      fail("{}: tensor {} is {} but {} is {}; fused CUDA matrices need one dtype", origin, u.name, dtype_name(u.dtype),
           g.name, dtype_name(g.dtype));
    const size_t rb = dtype_row_bytes(g.dtype, g.shape[1]);
    std::vector<uint8_t> host(2 * g.nbytes);
    for (int64_t r = 0; r < g.shape[0]; ++r) {
      std::memcpy(host.data() + size_t(2 * r) * rb, static_cast<const uint8_t*>(g.data) + size_t(r) * rb, rb);
      std::memcpy(host.data() + size_t(2 * r + 1) * rb, static_cast<const uint8_t*>(u.data) + size_t(r) * rb, rb);
    }
    cuda::DeviceWeight d{g.dtype, 2 * g.shape[0], g.shape[1], upload(host.data(), host.size())};
    if (g.shape[1] % (g.dtype == DType::F32 ? 4 : 8)) gemv_ok_ = false;
    return d;
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
  // Concatenated biases (zeros where a part has none); null when no part has one.
  auto bias = [&](const std::vector<std::pair<std::string, int64_t>>& parts, bool present) -> const float* {
    if (!present) return nullptr;
    std::vector<float> all;
    for (const auto& [name, n] : parts) {
      const auto v = vec_f32(name, n);
      all.insert(all.end(), v.begin(), v.end());
    }
    return upload_f32(all);
  };

  const TensorView& emb = tensor("model.embed_tokens.weight", {cfg.vocab, H});
  embed_ = stacked({&emb}, H);
  final_norm_ = upload_f32(vec_f32("model.norm.weight", H));
  if (cfg.tie_embeddings && !w.contains("lm_head.weight")) {
    lm_head_ = embed_;
  } else {
    lm_head_ = stacked({&tensor("lm_head.weight", {cfg.vocab, H})}, H);
  }
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer L;
    L.attn_norm = upload_f32(vec_f32(p + "input_layernorm.weight", H));
    L.mlp_norm = upload_f32(vec_f32(p + "post_attention_layernorm.weight", H));
    L.qkv = stacked({&tensor(p + "self_attn.q_proj.weight", {qd, H}), &tensor(p + "self_attn.k_proj.weight", {kvd, H}),
                     &tensor(p + "self_attn.v_proj.weight", {kvd, H})},
                    H);
    L.o = stacked({&tensor(p + "self_attn.o_proj.weight", {H, qd})}, qd);
    L.gate_up = interleaved(tensor(p + "mlp.gate_proj.weight", {cfg.ffn, H}), tensor(p + "mlp.up_proj.weight", {cfg.ffn, H}));
    L.down = stacked({&tensor(p + "mlp.down_proj.weight", {H, cfg.ffn})}, cfg.ffn);
    L.qkv_bias = bias({{p + "self_attn.q_proj.bias", qd}, {p + "self_attn.k_proj.bias", kvd}, {p + "self_attn.v_proj.bias", kvd}},
                      cfg.attn_bias);
    L.o_bias = bias({{p + "self_attn.o_proj.bias", H}}, cfg.attn_out_bias);
    if (cfg.mlp_bias) {
      const auto g = vec_f32(p + "mlp.gate_proj.bias", cfg.ffn), u = vec_f32(p + "mlp.up_proj.bias", cfg.ffn);
      std::vector<float> gu(size_t(2 * cfg.ffn));
      for (size_t j = 0; j < g.size(); ++j) gu[2 * j] = g[j], gu[2 * j + 1] = u[j];
      L.gu_bias = upload_f32(gu);
    }
    L.down_bias = bias({{p + "mlp.down_proj.bias", H}}, cfg.mlp_bias);
    layers_.push_back(L);
  }
  inv_freq_ = upload_f32(rope_inv_freq(cfg));
  weight_bytes_ = weights_->total_bytes();  // report the model's size, not the copies' count
}

LlamaCudaModel::~LlamaCudaModel() {
  // Errors cannot propagate from a destructor; the device is being torn down anyway.
  clear_graphs();
  for (void* p : allocs_) cudaFree(p);
  cudaFree(kv_dev_);
  cudaFree(scratch_);
  cudaFree(meta_dev_);
  cudaFree(argmax_dev_);
  cudaFreeHost(logits_host_);
  cudaFreeHost(meta_host_);
  if (stream_) cudaStreamDestroy(stream_);
}

std::string LlamaCudaModel::name() const { return "cuda (" + device_name_ + ")"; }

void LlamaCudaModel::clear_graphs() {
  for (auto& [_, g] : graphs_) cudaGraphExecDestroy(g);
  graphs_.clear();
}

void LlamaCudaModel::ensure_kv(const KVCache& kv) {
  if (&kv == kv_host_ && kv.n_blocks() == kv_blocks_) return;
  if (kv.head_dim() != cfg_.head_dim || kv.n_kv_heads() != cfg_.n_kv_heads)
    fail("forward: the KV cache was made for another model shape");
  clear_graphs();
  check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  cudaFree(kv_dev_);
  kv_dev_ = nullptr;
  kv_layout_.n_layers = cfg_.n_layers;
  kv_layout_.n_kv_heads = cfg_.n_kv_heads;
  kv_layout_.head_dim = cfg_.head_dim;
  kv_layout_.block_size = kv.block_size();
  const size_t bytes = size_t(kv.n_blocks()) * size_t(kv_layout_.block_floats()) * sizeof(float);
  check(cudaMalloc(&kv_dev_, bytes ? bytes : 16), "cudaMalloc (KV cache)");
  check(cudaMemset(kv_dev_, 0, bytes), "cudaMemset (KV cache)");
  kv_layout_.base = kv_dev_;
  kv_host_ = &kv;
  kv_blocks_ = kv.n_blocks();
  int64_t cap = kv.n_blocks() * kv.block_size();
  if (cfg_.max_position > 0) cap = std::min(cap, cfg_.max_position + kv.block_size());
  max_blocks_ = std::max<int64_t>(1, (cap + kv.block_size() - 1) / kv.block_size());
  cuda::decode_splits(max_blocks_ * kv.block_size(), n_splits_, split_len_);
  T_cap_ = R_cap_ = 0;  // the attention workspace depends on n_splits
}

void LlamaCudaModel::ensure_scratch(int64_t T, int64_t R) {
  if (T <= T_cap_ && R <= R_cap_) return;
  clear_graphs();
  check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  T_cap_ = std::max<int64_t>({T, T_cap_, 16});
  R_cap_ = std::max<int64_t>({R, R_cap_, 16});
  const ModelConfig& c = cfg_;
  const int64_t qd = c.n_heads * c.head_dim, QKV = qd + 2 * c.n_kv_heads * c.head_dim;
  const int64_t sizes[] = {T_cap_ * c.hidden, T_cap_ * c.hidden, T_cap_ * QKV, T_cap_ * qd, T_cap_ * 2 * c.ffn,
                           T_cap_ * c.ffn, R_cap_ * c.hidden, R_cap_ * c.vocab,
                           T_cap_ * c.n_heads * n_splits_ * (c.head_dim + 2)};
  int64_t total = 0;
  for (int64_t s : sizes) total += align64(s);
  cudaFree(scratch_);
  scratch_ = nullptr;
  check(cudaMalloc(&scratch_, size_t(total) * sizeof(float)), "cudaMalloc (activations)");
  float* p = scratch_;
  float** dst[] = {&x_, &xn_, &qkv_, &att_, &gu_, &act_, &lm_in_, &logits_, &partial_};
  for (size_t i = 0; i < 9; ++i) {
    *dst[i] = p;
    p += align64(sizes[i]);
  }
  cudaFreeHost(logits_host_);
  logits_host_ = nullptr;
  check(cudaMallocHost(&logits_host_, size_t(R_cap_ * c.vocab) * sizeof(float)), "cudaMallocHost (logits)");
  cudaFree(argmax_dev_);
  argmax_dev_ = nullptr;
  check(cudaMalloc(&argmax_dev_, size_t(R_cap_) * sizeof(int32_t)), "cudaMalloc (argmax)");
}

LlamaCudaModel::Meta LlamaCudaModel::layout(int64_t T, int64_t S, int64_t R) const {
  Meta m;
  m.T = T, m.S = S, m.R = R, m.MB = max_blocks_;
  int64_t o = 0;
  m.tokens = o, o += T;
  m.pos = o, o += T;
  m.slot = o, o += T;
  m.tok_seq = o, o += T;
  m.qstart = o, o += S;
  m.nq = o, o += S;
  m.out_src = o, o += R;
  m.btab = o, o += S * m.MB;
  m.total = o;
  return m;
}

void LlamaCudaModel::enqueue(const Meta& m) {
  using namespace cuda;
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden, hd = c.head_dim, qd = c.n_heads * hd, QKV = qd + 2 * c.n_kv_heads * hd, F = c.ffn;
  const int64_t T = m.T;
  const int32_t* md = meta_dev_;
  check(cudaMemcpyAsync(meta_dev_, meta_host_, size_t(m.total) * 4, cudaMemcpyHostToDevice, stream_), "upload metadata");
  embed(md + m.tokens, T, embed_, x_, stream_);
  const bool fused = gemv_ok_ && T <= kGemvMaxRows;

  auto lin = [&](const float* x, int64_t ldx, InputOp op, const float* norm_w, const float* bias, bool acc, float* y,
                 int64_t ldy, const DeviceWeight& w, int64_t rows) {
    LinearArgs a;
    a.x = x, a.m = rows, a.ldx = ldx, a.op = op, a.norm_w = norm_w, a.eps = c.rms_eps, a.bias = bias;
    a.accumulate = acc, a.y = y, a.ldy = ldy;
    linear(a, w, stream_);
  };

  AttentionArgs at;
  at.q = qkv_, at.ldq = QKV, at.out = att_, at.ldo = qd;
  at.kv = kv_layout_, at.n_heads = c.n_heads, at.scale = 1.0f / std::sqrt(float(hd)), at.window = c.sliding_window;
  at.n_tok = T, at.n_seq = m.S, at.tok_pos = md + m.pos, at.tok_seq = md + m.tok_seq;
  at.block_tables = md + m.btab, at.max_blocks = m.MB, at.seq_qstart = md + m.qstart, at.seq_nq = md + m.nq;
  at.max_nq = m.max_nq, at.partial = partial_, at.n_splits = n_splits_, at.split_len = split_len_;

  RopeKVArgs rk;
  rk.qkv = qkv_, rk.ld = QKV, rk.n_tok = T, rk.n_heads = c.n_heads, rk.pos = md + m.pos, rk.slot = md + m.slot;
  rk.inv_freq = inv_freq_, rk.kv = kv_layout_;

  for (int64_t l = 0; l < c.n_layers; ++l) {
    const Layer& L = layers_[size_t(l)];
    if (fused) {
      lin(x_, H, InputOp::RmsNorm, L.attn_norm, L.qkv_bias, false, qkv_, QKV, L.qkv, T);
    } else {
      rmsnorm(x_, H, L.attn_norm, T, H, c.rms_eps, xn_, H, stream_);
      lin(xn_, H, InputOp::None, nullptr, L.qkv_bias, false, qkv_, QKV, L.qkv, T);
    }
    rk.layer = l;
    rope_kv_write(rk, stream_);
    at.layer = l;
    if (m.max_nq == 1) attention_decode(at, stream_);
    else attention_prefill(at, stream_);
    lin(att_, qd, InputOp::None, nullptr, L.o_bias, true, x_, H, L.o, T);
    if (fused) {  // norm, gate|up and SwiGLU in one GEMV
      LinearArgs g;
      g.x = x_, g.m = T, g.ldx = H, g.op = InputOp::RmsNorm, g.norm_w = L.mlp_norm, g.eps = c.rms_eps;
      g.bias = L.gu_bias, g.silu_pairs = true, g.y = act_, g.ldy = F;
      linear(g, L.gate_up, stream_);
    } else {
      rmsnorm(x_, H, L.mlp_norm, T, H, c.rms_eps, xn_, H, stream_);
      lin(xn_, H, InputOp::None, nullptr, L.gu_bias, false, gu_, 2 * F, L.gate_up, T);
      silu_mul_pairs(gu_, T, F, act_, stream_);
    }
    lin(act_, F, InputOp::None, nullptr, L.down_bias, true, x_, H, L.down, T);
  }
  const float* src = x_;
  if (!m.identity_rows) {
    gather_rows(x_, md + m.out_src, m.R, H, lm_in_, stream_);
    src = lm_in_;
  }
  if (gemv_ok_ && m.R <= kGemvMaxRows) {
    lin(src, H, InputOp::RmsNorm, final_norm_, nullptr, false, logits_, c.vocab, lm_head_, m.R);
  } else {
    rmsnorm(src, H, final_norm_, m.R, H, c.rms_eps, xn_, H, stream_);
    lin(xn_, H, InputOp::None, nullptr, nullptr, false, logits_, c.vocab, lm_head_, m.R);
  }
  check(cudaMemcpyAsync(logits_host_, logits_, size_t(m.R * c.vocab) * 4, cudaMemcpyDeviceToHost, stream_),
        "download logits");
}

void LlamaCudaModel::forward(const std::vector<BatchEntry>& batch, KVCache& kv, ForwardOutput& out) {
  int64_t total = 0, out_rows = 0, max_nq = 0;
  bool identity = true;
  for (const auto& e : batch) {
    if (!e.seq || e.n_tokens <= 0 || !e.tokens) fail("forward: empty batch entry");
    for (int64_t i = 0; i < e.n_tokens; ++i)
      if (e.tokens[i] < 0 || e.tokens[i] >= cfg_.vocab)
        fail("token id {} is outside the vocabulary (size {})", e.tokens[i], cfg_.vocab);
    if (cfg_.max_position > 0 && e.seq->n_tokens + e.n_tokens > cfg_.max_position)
      fail("sequence of {} tokens exceeds the model's context of {}", e.seq->n_tokens + e.n_tokens, cfg_.max_position);
    total += e.n_tokens;
    out_rows += e.all_logits ? e.n_tokens : 1;
    max_nq = std::max(max_nq, e.n_tokens);
    identity = identity && (e.all_logits || e.n_tokens == 1);
  }
  if (batch.empty()) fail("forward: empty batch");
  ensure_kv(kv);
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
  for (const auto& e : batch)
    if (int64_t(e.seq->blocks.size()) > max_blocks_)
      fail("forward: sequence holds {} blocks, more than the {} the CUDA backend sized for", e.seq->blocks.size(),
           max_blocks_);

  const int64_t S = int64_t(batch.size());
  ensure_scratch(total, out_rows);
  Meta m = layout(total, S, out_rows);
  m.max_nq = max_nq;
  m.identity_rows = identity;
  if (m.total > meta_cap_) {
    clear_graphs();
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    cudaFree(meta_dev_);
    cudaFreeHost(meta_host_);
    meta_dev_ = nullptr, meta_host_ = nullptr;
    meta_cap_ = std::max<int64_t>(m.total, 2 * meta_cap_);
    check(cudaMalloc(&meta_dev_, size_t(meta_cap_) * 4), "cudaMalloc (metadata)");
    check(cudaMallocHost(&meta_host_, size_t(meta_cap_) * 4), "cudaMallocHost (metadata)");
  }
  int32_t* h = meta_host_;
  const int64_t bs = kv.block_size();
  int64_t t = 0, r = 0;
  out.vocab = cfg_.vocab;
  out.row_offset.assign(batch.size(), 0);
  for (int64_t s = 0; s < S; ++s) {
    const BatchEntry& e = batch[size_t(s)];
    h[m.qstart + s] = int32_t(t);
    h[m.nq + s] = int32_t(e.n_tokens);
    int32_t* bt = h + m.btab + s * m.MB;
    for (size_t b = 0; b < size_t(m.MB); ++b) bt[b] = b < e.seq->blocks.size() ? e.seq->blocks[b] : 0;
    out.row_offset[size_t(s)] = r;
    for (int64_t i = 0; i < e.n_tokens; ++i, ++t) {
      const int64_t p = e.seq->n_tokens + i;
      h[m.tokens + t] = e.tokens[i];
      h[m.pos + t] = int32_t(p);
      h[m.slot + t] = int32_t(int64_t(e.seq->blocks[size_t(p / bs)]) * bs + p % bs);
      h[m.tok_seq + t] = int32_t(s);
      if (e.all_logits || i + 1 == e.n_tokens) h[m.out_src + r++] = int32_t(t);
    }
  }

  const bool decode = graphs_on_ && max_nq == 1 && identity && total == S;
  if (decode) {
    const auto key = std::make_tuple(m.T, m.S, m.R);
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      cudaGraph_t g = nullptr;
      check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
      try {
        enqueue(m);
      } catch (...) {
        cudaStreamEndCapture(stream_, &g);
        if (g) cudaGraphDestroy(g);
        throw;
      }
      check(cudaStreamEndCapture(stream_, &g), "cudaStreamEndCapture");
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
      cudaGraphDestroy(g);
      check(e, "cudaGraphInstantiate");
      it = graphs_.emplace(key, exec).first;
    }
    check(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch");
    ++graph_replays_;
  } else {
    enqueue(m);
  }
  check(cudaStreamSynchronize(stream_), "forward (device)");
  out.logits.assign(logits_host_, logits_host_ + size_t(out_rows * cfg_.vocab));
  for (const auto& e : batch) e.seq->n_tokens += e.n_tokens;
  last_rows_ = out_rows;
}

std::vector<int32_t> LlamaCudaModel::argmax_last() {
  std::vector<int32_t> ids(static_cast<size_t>(last_rows_));
  if (last_rows_ == 0) return ids;
  cuda::argmax_rows(logits_, last_rows_, cfg_.vocab, argmax_dev_, stream_);
  check(cudaMemcpyAsync(ids.data(), argmax_dev_, ids.size() * 4, cudaMemcpyDeviceToHost, stream_), "download argmax");
  check(cudaStreamSynchronize(stream_), "argmax (device)");
  return ids;
}

std::vector<float> LlamaCudaModel::download_kv() const {
  std::vector<float> v(size_t(kv_blocks_ * kv_layout_.block_floats()));
  if (!v.empty()) check(cudaMemcpy(v.data(), kv_dev_, v.size() * 4, cudaMemcpyDeviceToHost), "download KV");
  return v;
}

}  // namespace anybit
#endif  // ANYBIT_WITH_CUDA
