// Calibration: statistics of the inputs each linear layer sees while the model runs
// over calibration text (LlamaModel::set_observer), and the model's mean NLL on it.
// Only calibration text goes through here; validation text never does.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "formats/tensor_store.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace anybit::quant {

// Statistics of one input site (the input shared by q/k/v, by gate/up, ...).
struct InputStats {
  int64_t k = 0;
  int64_t n = 0;                 // tokens accumulated
  std::vector<double> abs_sum;   // sum_t |x_tc|
  std::vector<double> sq_sum;    // sum_t x_tc^2
  std::vector<double> xtx;       // sum_t x_t x_t^T (k x k), only when collected
  // sum_t r_t x_t^T (k x k), where r_t is the input the unquantized reference model feeds
  // the same site on the same token; only from collect_paired_stats.
  std::vector<double> rtx;

  void add(const float* x, int64_t m, int64_t k, bool with_hessian);
  std::vector<float> mean_abs() const;       // E|x_c|
  std::vector<float> second_moment() const;  // E[x_c^2]
  std::vector<float> hessian() const;        // E[x x^T] as fp32 (empty when not collected)
  bool has_hessian() const { return !xtx.empty(); }
  void add_cross(const float* ref, const float* x, int64_t m, int64_t k);
  std::vector<float> cross() const;          // E[r x^T] as fp32 (empty when not collected)
};

// The weight whose input site `weight` reads: k/v_proj -> q_proj, up_proj -> gate_proj,
// everything else itself.
std::string input_site(const std::string& weight);

// Calibration text cut into windows of `ctx` tokens (no BOS, like perplexity), at most
// `max_tokens` tokens in all. Throws if the text yields no full window.
std::vector<std::vector<int32_t>> calibration_windows(const Tokenizer& tok, const std::string& text, int64_t ctx,
                                                      int64_t max_tokens, const std::string& origin);

struct CollectOptions {
  std::set<std::string> sites;   // input sites to collect (input_site names)
  bool hessian = true;
  // Stop each forward once this weight's input has been seen (skips the rest of the
  // model); "" runs to the end.
  std::string stop_after;
  int64_t batch_windows = 4;
};

// Runs the model over `windows` and accumulates the requested sites into `out`.
void collect_input_stats(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights,
                         const std::vector<std::vector<int32_t>>& windows, const CollectOptions& opts,
                         std::map<std::string, InputStats>& out);

// collect_input_stats on `weights` (the partly quantized model), plus the cross moments
// E[r x^T] against the unquantized `reference` on the same windows. The reference's inputs
// for one window batch are held in memory while the same batch runs through `weights`.
void collect_paired_stats(const ModelConfig& cfg, std::shared_ptr<const TensorStore> reference,
                          std::shared_ptr<const TensorStore> weights, const std::vector<std::vector<int32_t>>& windows,
                          const CollectOptions& opts, std::map<std::string, InputStats>& out);

// Sequential calibration in one pass over the layers: the residual stream entering the
// current layer is kept for every window, for the model being quantized and optionally for
// the unquantized reference, so a stage runs one layer instead of the model from the start
// (the stages of an L-layer model cost O(L) layer passes instead of O(L^2)). Statistics
// equal those of collect_input_stats / collect_paired_stats with the same weights.
// Memory: windows x tokens x hidden floats per stream.
class StreamCache {
 public:
  StreamCache(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights,
              const std::vector<std::vector<int32_t>>& windows, bool with_reference, int64_t batch_windows = 4);
  int64_t layer() const { return layer_; }  // the layer the kept streams enter

  // Statistics of opts.sites (inputs of the current layer) under `weights`. With
  // `reference` (needs with_reference), also the cross moments against the reference's
  // inputs at the same sites, as collect_paired_stats.
  void collect(std::shared_ptr<const TensorStore> weights, std::shared_ptr<const TensorStore> reference,
               const CollectOptions& opts, std::map<std::string, InputStats>& out) const;
  // Moves the streams through the current layer: the model's under `weights`, the
  // reference's under `reference` (when kept).
  void advance(std::shared_ptr<const TensorStore> weights, std::shared_ptr<const TensorStore> reference);

 private:
  ModelConfig cfg_;
  std::vector<std::vector<int32_t>> windows_;
  int64_t batch_windows_;
  bool with_reference_;
  int64_t layer_ = 0;
  std::vector<std::vector<float>> model_, reference_;  // per batch of windows
};

// Mean next-token NLL over `windows` (each scored like perplexity does).
double calibration_nll(const ModelConfig& cfg, std::shared_ptr<const TensorStore> weights,
                       const std::vector<std::vector<int32_t>>& windows, int64_t batch_windows = 4);

}  // namespace anybit::quant
