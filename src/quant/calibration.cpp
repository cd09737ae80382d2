#include "quant/calibration.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "model/llama.h"

namespace anybit::quant {

namespace {

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Thrown by the observer to end a forward early; never escapes this file.
struct StopForward {};

}  // namespace

void InputStats::add(const float* x, int64_t m, int64_t kk, bool with_hessian) {
  if (k == 0) {
    k = kk;
    abs_sum.assign(size_t(k), 0.0);
    sq_sum.assign(size_t(k), 0.0);
  }
  if (kk != k) fail("calibration: input width changed from {} to {}", k, kk);
  for (int64_t t = 0; t < m; ++t)
    for (int64_t c = 0; c < k; ++c) {
      const double v = x[t * k + c];
      abs_sum[size_t(c)] += std::fabs(v);
      sq_sum[size_t(c)] += v * v;
    }
  n += m;
  if (!with_hessian) return;
  if (xtx.empty()) xtx.assign(size_t(k * k), 0.0);
  // X^T X through the matmul kernel: rows of X^T against rows of X^T.
  std::vector<float> xt(size_t(k * m)), prod(size_t(k * k));
  for (int64_t t = 0; t < m; ++t)
    for (int64_t c = 0; c < k; ++c) xt[size_t(c * m + t)] = x[t * k + c];
  matmul(xt.data(), k, WeightMatrix{DType::F32, k, m, xt.data()}, prod.data());
  for (size_t i = 0; i < prod.size(); ++i) xtx[i] += double(prod[i]);
}

void InputStats::add_cross(const float* ref, const float* x, int64_t m, int64_t kk) {
  if (kk != k) fail("calibration: input width changed from {} to {}", k, kk);
  if (rtx.empty()) rtx.assign(size_t(k * k), 0.0);
  // R^T X through the matmul kernel: prod[i][j] = sum_t r_ti x_tj.
  std::vector<float> rt(size_t(k * m)), xt(size_t(k * m)), prod(size_t(k * k));
  for (int64_t t = 0; t < m; ++t)
    for (int64_t c = 0; c < k; ++c) rt[size_t(c * m + t)] = ref[t * k + c], xt[size_t(c * m + t)] = x[t * k + c];
  matmul(rt.data(), k, WeightMatrix{DType::F32, k, m, xt.data()}, prod.data());
  for (size_t i = 0; i < prod.size(); ++i) rtx[i] += double(prod[i]);
}

std::vector<float> InputStats::cross() const {
  std::vector<float> c(rtx.size());
  for (size_t i = 0; i < c.size(); ++i) c[i] = n ? float(rtx[i] / double(n)) : 0.0f;
  return c;
}

std::vector<float> InputStats::mean_abs() const {
  std::vector<float> v(static_cast<size_t>(k));
  for (int64_t c = 0; c < k; ++c) v[size_t(c)] = n ? float(abs_sum[size_t(c)] / double(n)) : 0.0f;
  return v;
}

std::vector<float> InputStats::second_moment() const {
  std::vector<float> v(static_cast<size_t>(k));
  for (int64_t c = 0; c < k; ++c) v[size_t(c)] = n ? float(sq_sum[size_t(c)] / double(n)) : 0.0f;
  return v;
}

std::vector<float> InputStats::hessian() const {
  std::vector<float> h(xtx.size());
  for (size_t i = 0; i < h.size(); ++i) h[i] = n ? float(xtx[i] / double(n)) : 0.0f;
  return h;
}

std::string input_site(const std::string& w) {
  for (const char* s : {"self_attn.k_proj.weight", "self_attn.v_proj.weight"})
    if (ends_with(w, s)) return w.substr(0, w.size() - std::string(s).size()) + "self_attn.q_proj.weight";
  if (ends_with(w, "mlp.up_proj.weight"))
    return w.substr(0, w.size() - std::string("mlp.up_proj.weight").size()) + "mlp.gate_proj.weight";
  return w;
}

std::vector<std::vector<int32_t>> calibration_windows(const Tokenizer& tok, const std::string& text, int64_t ctx,
                                                      int64_t max_tokens, const std::string& origin) {
  if (ctx < 2) fail("{}: calibration window must be at least 2 tokens", origin);
  const std::vector<int32_t> ids = tok.encode(text, false);
  std::vector<std::vector<int32_t>> w;
  // ctx + 1 tokens per window so that every fed token has a next token to score.
  for (size_t s = 0; s + size_t(ctx) + 1 <= ids.size() && int64_t(w.size() + 1) * ctx <= max_tokens; s += size_t(ctx))
    w.emplace_back(ids.begin() + long(s), ids.begin() + long(s + size_t(ctx) + 1));
  if (w.empty())
    fail("{}: calibration text has {} tokens, fewer than one window of {} (+1)", origin, ids.size(), ctx);
  return w;
}

namespace {

// A KV cache for `n` windows of at most `longest` tokens each.
KVCache window_cache(const ModelConfig& cfg, int64_t n, int64_t longest) {
  const int64_t block = 16;
  return KVCache(cfg, n * ((longest + block - 1) / block + 1), block);
}

// Releases the sequences' blocks however the forward ends.
struct ReleaseOnExit {
  KVCache& kv;
  std::vector<SequenceKV>& seqs;
  ~ReleaseOnExit() {
    for (auto& s : seqs) kv.release(s);
  }
};

// Fresh sequences for windows [b, e), each scored on all but its last token.
std::vector<BatchEntry> window_batch(const std::vector<std::vector<int32_t>>& windows, size_t b, size_t e,
                                     std::vector<SequenceKV>& seqs, bool all_logits) {
  seqs.assign(e - b, SequenceKV{});
  std::vector<BatchEntry> batch;
  for (size_t i = b; i < e; ++i)
    batch.push_back(BatchEntry{&seqs[i - b], windows[i].data(), int64_t(windows[i].size()) - 1, all_logits});
  return batch;
}

template <typename F>
void run_batches(const ModelConfig& cfg, LlamaModel& model, const std::vector<std::vector<int32_t>>& windows,
                 int64_t batch_windows, bool all_logits, F&& on_output) {
  const int64_t bw = std::max<int64_t>(1, batch_windows);
  int64_t longest = 0;
  for (const auto& w : windows) longest = std::max<int64_t>(longest, int64_t(w.size()));
  KVCache kv = window_cache(cfg, bw, longest);
  ForwardOutput out;
  for (size_t b = 0; b < windows.size(); b += size_t(bw)) {
    const size_t e = std::min(windows.size(), b + size_t(bw));
    std::vector<SequenceKV> seqs;
    const std::vector<BatchEntry> batch = window_batch(windows, b, e, seqs, all_logits);
    bool stopped = false;
    {
      ReleaseOnExit release{kv, seqs};
      try {
        model.forward(batch, kv, out);
      } catch (const StopForward&) {
        stopped = true;
      }
    }
    if (!stopped) on_output(b, e, out);
  }
}

// Runs layers [from, to) of windows [b, e) on `stream` (LlamaModel::forward_layers). A
// StopForward from an observer ends it early, leaving `stream` unchanged.
void run_stream(const ModelConfig& cfg, LlamaModel& model, const std::vector<std::vector<int32_t>>& windows, size_t b,
                size_t e, int64_t from, int64_t to, std::vector<float>& stream) {
  int64_t longest = 0;
  for (size_t i = b; i < e; ++i) longest = std::max<int64_t>(longest, int64_t(windows[i].size()));
  KVCache kv = window_cache(cfg, int64_t(e - b), longest);
  std::vector<SequenceKV> seqs;
  const std::vector<BatchEntry> batch = window_batch(windows, b, e, seqs, false);
  ReleaseOnExit release{kv, seqs};
  try {
    model.forward_layers(batch, kv, from, to, stream);
  } catch (const StopForward&) {
  }
}

// The observers that record opts.sites into `out`: the statistics of `model`'s inputs and,
// with a reference model, the cross moments against the reference's inputs to the same
// sites, paired by call order (both models make the same calls: same windows, same
// batches, same architecture). Run the reference first on each batch, after next_batch().
class SiteRecorder {
 public:
  SiteRecorder(const CollectOptions& opts, std::map<std::string, InputStats>& out, LlamaModel& model,
               LlamaModel* reference) {
    const bool paired = reference != nullptr;
    if (paired)
      reference->set_observer([this, &opts](const std::string& name, const float* x, int64_t m, int64_t k) {
        if (opts.sites.count(name)) held_[name].emplace_back(x, x + m * k);
        if (!opts.stop_after.empty() && name == opts.stop_after) throw StopForward{};
      });
    model.set_observer([this, &opts, &out, paired](const std::string& name, const float* x, int64_t m, int64_t k) {
      if (opts.sites.count(name)) {
        InputStats& s = out[name];
        s.add(x, m, k, opts.hessian);
        if (paired) {
          const std::vector<std::vector<float>>& chunks = held_[name];
          const size_t i = next_[name]++;
          if (i >= chunks.size() || chunks[i].size() != size_t(m * k))
            fail("calibration: the reference model fed {} differently shaped inputs", name);
          s.add_cross(chunks[i].data(), x, m, k);
        }
      }
      if (!opts.stop_after.empty() && name == opts.stop_after) throw StopForward{};
    });
  }
  void next_batch() {
    held_.clear();
    next_.clear();
  }

 private:
  // The reference's site inputs of the current batch, in call order.
  std::map<std::string, std::vector<std::vector<float>>> held_;
  std::map<std::string, size_t> next_;
};

}  // namespace

void collect_input_stats(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights,
                         const std::vector<std::vector<int32_t>>& windows, const CollectOptions& opts,
                         std::map<std::string, InputStats>& out) {
  LlamaModel model(cfg, std::move(weights));
  SiteRecorder rec(opts, out, model, nullptr);
  run_batches(cfg, model, windows, opts.batch_windows, false, [](size_t, size_t, const ForwardOutput&) {});
}

void collect_paired_stats(const ModelConfig& cfg, std::shared_ptr<const TensorStore> reference,
                          std::shared_ptr<const TensorStore> weights, const std::vector<std::vector<int32_t>>& windows,
                          const CollectOptions& opts, std::map<std::string, InputStats>& out) {
  LlamaModel ref_model(cfg, std::move(reference)), model(cfg, std::move(weights));
  SiteRecorder rec(opts, out, model, &ref_model);
  const size_t bw = size_t(std::max<int64_t>(1, opts.batch_windows));
  for (size_t b = 0; b < windows.size(); b += bw) {
    const std::vector<std::vector<int32_t>> part(windows.begin() + long(b),
                                                 windows.begin() + long(std::min(windows.size(), b + bw)));
    rec.next_batch();
    run_batches(cfg, ref_model, part, opts.batch_windows, false, [](size_t, size_t, const ForwardOutput&) {});
    run_batches(cfg, model, part, opts.batch_windows, false, [](size_t, size_t, const ForwardOutput&) {});
  }
}

StreamCache::StreamCache(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights,
                         const std::vector<std::vector<int32_t>>& windows, bool with_reference, int64_t batch_windows)
    : cfg_(cfg), windows_(windows), batch_windows_(std::max<int64_t>(1, batch_windows)), with_reference_(with_reference) {
  LlamaModel model(cfg_, std::move(weights));
  const size_t bw = size_t(batch_windows_);
  for (size_t b = 0; b < windows_.size(); b += bw) {
    model_.emplace_back();
    run_stream(cfg_, model, windows_, b, std::min(windows_.size(), b + bw), 0, 0, model_.back());
  }
  // Both models look up the same embedding (quantize does not touch it before the layers).
  if (with_reference_) reference_ = model_;
}

void StreamCache::collect(std::shared_ptr<const TensorStore> weights, std::shared_ptr<const TensorStore> reference,
                          const CollectOptions& opts, std::map<std::string, InputStats>& out) const {
  if (reference && !with_reference_) fail("calibration: this stream cache keeps no reference stream");
  if (layer_ >= cfg_.n_layers) fail("calibration: every layer has been passed");
  LlamaModel model(cfg_, std::move(weights));
  std::unique_ptr<LlamaModel> ref_model;
  if (reference) ref_model = std::make_unique<LlamaModel>(cfg_, std::move(reference));
  SiteRecorder rec(opts, out, model, ref_model.get());
  const size_t bw = size_t(batch_windows_);
  for (size_t i = 0; i < model_.size(); ++i) {
    const size_t b = i * bw, e = std::min(windows_.size(), b + bw);
    rec.next_batch();
    // Copies: a stage stops inside the layer and must leave the kept streams as they are.
    if (ref_model) {
      std::vector<float> r = reference_[i];
      run_stream(cfg_, *ref_model, windows_, b, e, layer_, layer_ + 1, r);
    }
    std::vector<float> x = model_[i];
    run_stream(cfg_, model, windows_, b, e, layer_, layer_ + 1, x);
  }
}

void StreamCache::advance(std::shared_ptr<const TensorStore> weights, std::shared_ptr<const TensorStore> reference) {
  if (layer_ >= cfg_.n_layers) fail("calibration: every layer has been passed");
  if (with_reference_ && !reference) fail("calibration: the reference stream needs the reference weights");
  auto pass = [&](std::shared_ptr<const TensorStore> w, std::vector<std::vector<float>>& streams) {
    LlamaModel model(cfg_, std::move(w));
    const size_t bw = size_t(batch_windows_);
    for (size_t i = 0; i < streams.size(); ++i)
      run_stream(cfg_, model, windows_, i * bw, std::min(windows_.size(), i * bw + bw), layer_, layer_ + 1, streams[i]);
  };
  pass(std::move(weights), model_);
  if (with_reference_) pass(std::move(reference), reference_);
  ++layer_;
}

double calibration_nll(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights,
                       const std::vector<std::vector<int32_t>>& windows, int64_t batch_windows) {
  LlamaModel model(cfg, std::move(weights));
  double nll = 0.0;
  int64_t scored = 0;
  run_batches(cfg, model, windows, batch_windows, true, [&](size_t b, size_t e, const ForwardOutput& out) {
    for (size_t i = b; i < e; ++i) {
      const auto& w = windows[i];
      const int64_t len = int64_t(w.size()) - 1;
      double part = 0.0;
#pragma omp parallel for reduction(+ : part) schedule(static)
      for (int64_t t = 0; t < len; ++t) {
        const float* row = out.row(i - b, t);
        float mx = row[0];
        for (int64_t v = 1; v < out.vocab; ++v) mx = std::max(mx, row[v]);
        double sum = 0.0;
        for (int64_t v = 0; v < out.vocab; ++v) sum += std::exp(double(row[v] - mx));
        part += double(mx) + std::log(sum) - double(row[w[size_t(t + 1)]]);
      }
      nll += part;
      scored += len;
    }
  });
  return scored ? nll / double(scored) : 0.0;
}

}  // namespace anybit::quant
