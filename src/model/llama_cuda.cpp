#ifdef ANYBIT_WITH_CUDA
#include "model/llama_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>

#include "core/error.h"
#include "kernels/sampling_cuda.h"

namespace anybit {

using cuda::check;

namespace {

int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

}  // namespace

// A device copy of `bytes` host bytes (left uninitialised when `host` is null), freed with the model.
void* LlamaCudaModel::upload(const void* host, size_t bytes) {
  void* d = nullptr;
  check(cudaMalloc(&d, bytes ? bytes : 16), "cudaMalloc (weights)");
  allocs_.push_back(d);
  if (bytes && host) check(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (weights)");
  weight_bytes_ += bytes;
  return d;
}

LlamaCudaModel::LlamaCudaModel(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights)
    : cfg_(cfg), weights_(std::move(weights)) {
  if (cuda::device_count() <= 0) fail("CUDA backend: no CUDA device is visible");
  const std::string& origin = weights_->origin();
  const int64_t hd = cfg.head_dim;
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

  try {
    load_weights();
  } catch (...) {
    // No destructor runs for a constructor that throws: free what was uploaded so far.
    release();
    throw;
  }
}

LlamaCudaModel::~LlamaCudaModel() { release(); }

void LlamaCudaModel::release() {
  // Errors are ignored: this runs in the destructor, and on a failed load it must not
  // replace the error being reported.
  clear_graphs();
  for (void* p : allocs_) cudaFree(p);
  allocs_.clear();
  for (auto& q : qallocs_) cuda::free_qbits(q);
  qallocs_.clear();
  cudaFree(qscratch_);
  cudaFree(kv_dev_);
  cudaFree(scratch_);
  cudaFree(meta_dev_);
  cudaFree(argmax_dev_);
  cudaFree(sample_work_);
  cudaFree(sample_rows_dev_);
  cudaFree(sample_pen_dev_);
  cudaFreeHost(logits_host_);
  cudaFreeHost(meta_host_);
  if (stream_) cudaStreamDestroy(stream_);
  qscratch_ = nullptr, kv_dev_ = nullptr, scratch_ = nullptr, meta_dev_ = nullptr, argmax_dev_ = nullptr;
  sample_work_ = nullptr, sample_rows_dev_ = nullptr, sample_pen_dev_ = nullptr, sample_pen_cap_ = 0;
  logits_host_ = nullptr, meta_host_ = nullptr, stream_ = nullptr;
}

std::string LlamaCudaModel::name() const {
  return "cuda (" + device_name_ + (kv_dtype_ == DType::F32 ? "" : ", kv " + std::string(dtype_name(kv_dtype_))) + ")";
}

void LlamaCudaModel::clear_graphs() {
  for (auto& [_, g] : graphs_) cudaGraphExecDestroy(g);
  graphs_.clear();
}

namespace {
bool fused_rope_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("ANYBIT_CUDA_FUSED_ROPE");
    return !(e && e[0] == '0');
  }();
  return on;
}
}  // namespace

void LlamaCudaModel::set_kv_dtype(DType dtype) {
  cuda::check_kv_dtype(dtype, "set_kv_dtype");
  if (dtype == kv_dtype_) return;
  kv_dtype_ = dtype;
  kv_host_ = nullptr;  // the next forward reallocates the device cache
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
  kv_layout_.dtype = kv_dtype_;
  const size_t bytes = size_t(kv.n_blocks()) * size_t(kv_layout_.block_bytes());
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
  cudaFree(sample_work_), cudaFree(sample_rows_dev_);  // sized by R_cap: allocated again on use
  sample_work_ = nullptr, sample_rows_dev_ = nullptr;
  // Batched decode steps are captured as graphs: the GEMM workspace must exist beforehand.
  const int64_t K = std::max({c.hidden, c.ffn, qd}), N = std::max({QKV, 2 * c.ffn, c.hidden, c.vocab});
  cuda::reserve_gemm_workspace(T_cap_, K, N, stream_);
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

void LlamaCudaModel::run_linear(const Linear& w, cuda::LinearArgs a) {
  float* y = a.y;
  for (const LinearPart& p : w.parts) {
    // Parts write adjacent output columns of the same rows (silu_pairs only ever has one
    // part at offset 0, so halving the offset for its N/2 outputs never arises).
    a.y = y + p.offset;
    a.bias = w.bias ? w.bias + p.offset : nullptr;
    if (p.qbits) cuda::linear_qbits(a, p.q, qscratch_, stream_);
    else cuda::linear(a, p.dense, stream_);
  }
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

  auto lin = [&](const float* x, int64_t ldx, InputOp op, const float* norm_w, bool acc, float* y, int64_t ldy,
                 const Linear& w, int64_t rows) {
    LinearArgs a;
    a.x = x, a.m = rows, a.ldx = ldx, a.op = op, a.norm_w = norm_w, a.eps = c.rms_eps;
    a.accumulate = acc, a.y = y, a.ldy = ldy;
    run_linear(w, a);
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

  // Decode calls on the tensor-core attention fold RoPE and the KV write into it (one kernel
  // less per layer; ANYBIT_CUDA_FUSED_ROPE=0 keeps them apart).
  const bool fuse_rope = m.max_nq == 1 && attention_decode_mma_supported(at) && fused_rope_enabled();
  if (fuse_rope) at.rope_inv_freq = inv_freq_, at.slot = md + m.slot;

  for (int64_t l = 0; l < c.n_layers; ++l) {
    const Layer& L = layers_[size_t(l)];
    if (fused) {
      lin(x_, H, InputOp::RmsNorm, L.attn_norm, false, qkv_, QKV, L.qkv, T);
    } else {
      rmsnorm(x_, H, L.attn_norm, T, H, c.rms_eps, xn_, H, stream_);
      lin(xn_, H, InputOp::None, nullptr, false, qkv_, QKV, L.qkv, T);
    }
    rk.layer = l;
    if (!fuse_rope) rope_kv_write(rk, stream_);
    at.layer = l;
    if (m.max_nq == 1) attention_decode(at, stream_);
    else attention_prefill(at, stream_);
    lin(att_, qd, InputOp::None, nullptr, true, x_, H, L.o, T);
    const Linear& gu = L.gate_up;
    if (fused && gu.pairs) {  // norm, gate|up and SwiGLU in one GEMV
      LinearArgs g;
      g.x = x_, g.m = T, g.ldx = H, g.op = InputOp::RmsNorm, g.norm_w = L.mlp_norm, g.eps = c.rms_eps;
      g.silu_pairs = true, g.y = act_, g.ldy = F;
      run_linear(gu, g);
    } else {
      if (fused) {
        lin(x_, H, InputOp::RmsNorm, L.mlp_norm, false, gu_, 2 * F, gu, T);
      } else {
        rmsnorm(x_, H, L.mlp_norm, T, H, c.rms_eps, xn_, H, stream_);
        lin(xn_, H, InputOp::None, nullptr, false, gu_, 2 * F, gu, T);
      }
      if (gu.pairs) silu_mul_pairs(gu_, T, F, act_, stream_);
      else silu_mul(gu_, T, F, act_, stream_);  // gate and up in different formats: [gate F | up F]
    }
    lin(act_, F, InputOp::None, nullptr, true, x_, H, L.down, T);
  }
  const float* src = x_;
  if (!m.identity_rows) {
    gather_rows(x_, md + m.out_src, m.R, H, lm_in_, stream_);
    src = lm_in_;
  }
  if (gemv_ok_ && m.R <= kGemvMaxRows) {
    lin(src, H, InputOp::RmsNorm, final_norm_, false, logits_, c.vocab, lm_head_, m.R);
  } else {
    rmsnorm(src, H, final_norm_, m.R, H, c.rms_eps, xn_, H, stream_);
    lin(xn_, H, InputOp::None, nullptr, false, logits_, c.vocab, lm_head_, m.R);
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

bool LlamaCudaModel::sample_last(const std::vector<SampleRequest>& req, std::vector<int32_t>& ids) {
  if (int64_t(req.size()) != last_rows_)
    fail("sample_last: {} requests for the {} logits rows of the previous forward", req.size(), last_rows_);
  ids.assign(req.size(), 0);
  if (req.empty()) return true;
  std::vector<cuda::SampleRow> rows(req.size());
  std::vector<int32_t> pen;
  for (size_t i = 0; i < req.size(); ++i) {
    const SamplingParams& p = *req[i].params;
    cuda::SampleRow& r = rows[i];
    r.temperature = p.temperature, r.top_k = p.top_k, r.top_p = p.top_p, r.min_p = p.min_p;
    r.repetition_penalty = p.repetition_penalty, r.u = req[i].u;
    r.penalty_begin = int32_t(pen.size());
    pen.insert(pen.end(), req[i].penalty_ids.begin(), req[i].penalty_ids.end());
    r.penalty_end = int32_t(pen.size());
  }
  if (!sample_work_) check(cudaMalloc(&sample_work_, size_t(R_cap_ * cuda::sample_work_ld(cfg_.vocab)) * 4), "cudaMalloc (sampling)");
  if (!sample_rows_dev_)
    check(cudaMalloc(&sample_rows_dev_, size_t(R_cap_) * sizeof(cuda::SampleRow)), "cudaMalloc (sampling rows)");
  if (int64_t(pen.size()) > sample_pen_cap_) {
    cudaFree(sample_pen_dev_);
    sample_pen_dev_ = nullptr, sample_pen_cap_ = 0;
    const int64_t cap = std::max<int64_t>(int64_t(pen.size()), 1024);
    check(cudaMalloc(&sample_pen_dev_, size_t(cap) * 4), "cudaMalloc (penalty ids)");
    sample_pen_cap_ = cap;
  }
  check(cudaMemcpyAsync(sample_rows_dev_, rows.data(), rows.size() * sizeof(cuda::SampleRow), cudaMemcpyHostToDevice,
                        stream_),
        "upload sampling rows");
  if (!pen.empty())
    check(cudaMemcpyAsync(sample_pen_dev_, pen.data(), pen.size() * 4, cudaMemcpyHostToDevice, stream_),
          "upload penalty ids");
  cuda::SampleArgs a;
  a.logits = logits_, a.ldl = cfg_.vocab, a.vocab = cfg_.vocab, a.n_rows = last_rows_;
  a.rows = static_cast<const cuda::SampleRow*>(sample_rows_dev_), a.penalty_ids = sample_pen_dev_;
  a.work = sample_work_, a.out = argmax_dev_;
  cuda::sample_rows(a, stream_);
  check(cudaMemcpyAsync(ids.data(), argmax_dev_, ids.size() * 4, cudaMemcpyDeviceToHost, stream_), "download ids");
  check(cudaStreamSynchronize(stream_), "sampling (device)");
  return true;
}

std::vector<float> LlamaCudaModel::download_kv() const {
  const size_t n = size_t(kv_blocks_ * kv_layout_.block_elems());
  std::vector<float> v(n);
  if (n == 0) return v;
  if (kv_layout_.dtype == DType::F32) {
    check(cudaMemcpy(v.data(), kv_dev_, n * 4, cudaMemcpyDeviceToHost), "download KV");
    return v;
  }
  const cuda::KVLayout& c = kv_layout_;
  std::vector<uint8_t> raw(size_t(kv_blocks_ * c.block_bytes()));
  check(cudaMemcpy(raw.data(), kv_dev_, raw.size(), cudaMemcpyDeviceToHost), "download KV");
  // Same [block][layer][K|V][kv_head][slot][head_dim] order as the host cache.
  const int64_t per_head = c.block_size * c.head_dim;
  size_t o = 0;
  for (int64_t b = 0; b < kv_blocks_; ++b)
    for (int64_t l = 0; l < c.n_layers; ++l)
      for (int k = 0; k < 2; ++k)
        for (int64_t h = 0; h < c.n_kv_heads; ++h) {
          const uint8_t* p = raw.data() + c.head_offset(b, l, k, h);
          for (int64_t e = 0; e < per_head; ++e, ++o) {
            if (c.dtype == DType::I8) {
              float scale;
              std::memcpy(&scale, p + per_head + (e / c.head_dim) * 4, 4);
              v[o] = float(int8_t(p[e])) * scale;
            } else {
              uint16_t x;
              std::memcpy(&x, p + 2 * e, 2);
              v[o] = c.dtype == DType::F16 ? f16_to_f32(x) : bf16_to_f32(x);
            }
          }
        }
  return v;
}

}  // namespace anybit
#endif  // ANYBIT_WITH_CUDA
