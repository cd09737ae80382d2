// `anybit finetune`: end-to-end tuning of an existing anybit quantized folder's group
// scales, zero points and norms against the original model (quant/finetune.h), written as
// a new folder. The same tuning as `anybit quantize --finetune`, without re-running the
// layer-wise quantizer.
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/model_loader.h"
#include "formats/quant_checkpoint.h"
#include "quant/calibration.h"
#include "quant/finetune.h"
#include "quant/objective.h"

namespace anybit::cli {

namespace {

struct FinetuneArgs {
  std::string model, quantized, out, calib;
  int64_t calib_tokens = 131072, calib_ctx = 512;
  quant::FinetuneOptions opts;
};

int run_finetune(FinetuneArgs& a) {
  if (a.opts.epochs <= 0) fail("--epochs must be at least 1");
  const std::string orig_path = model_path_or_default(a.model);
  if (is_quant_checkpoint(orig_path)) fail("{}: -m must be the original (unquantized) model", orig_path);
  if (!is_quant_checkpoint(a.quantized)) fail("{}: -q must be an anybit quantized folder", a.quantized);
  ModelFiles orig = load_model_files(orig_path);
  ModelFiles q = load_quant_folder(a.quantized);
  const ModelConfig& c = orig.config;
  if (q.config.hidden != c.hidden || q.config.n_layers != c.n_layers || q.config.vocab != c.vocab ||
      q.config.ffn != c.ffn || q.config.n_heads != c.n_heads || q.config.n_kv_heads != c.n_kv_heads)
    fail("{} was not quantized from {}: the shapes differ", a.quantized, orig_path);
  nlohmann::json summary = nlohmann::json::parse(read_text_file(a.quantized + "/" + kQuantConfigFile));
  if (summary.contains("rotation"))
    fail("{}: a rotated checkpoint (--rotate) cannot be tuned against the unrotated original", a.quantized);

  std::map<std::string, std::shared_ptr<QuantizedWeight>> linear;
  quant::FinetuneFixed fixed;
  const TensorStore& qs = *q.weights;
  for (const auto& [name, t] : qs.all()) {
    const bool layer_matrix = name.rfind("model.layers.", 0) == 0 && t.shape.size() == 2;
    if (layer_matrix) {
      if (t.dtype != DType::QBITS) fail("{}: {} is not quantized; nothing to tune there", a.quantized, name);
      auto w = std::make_shared<QuantizedWeight>(quantized_of(t));
      w->packed.reset(), w->packed_kind = 0;
      linear[name] = std::move(w);
    } else if (name == "lm_head.weight" && t.dtype == DType::QBITS) {
      fixed.lm_head = quant::effective_weight(quantized_of(t));
    } else if (name == "model.embed_tokens.weight" && t.dtype == DType::QBITS) {
      fixed.embed = quant::effective_weight(quantized_of(t));
    } else if (name.size() > 11 && name.compare(name.size() - 11, 11, "norm.weight") == 0) {
      fixed.norms[name] = tensor_as_f32(t);
    }
  }
  const std::string text = read_text_file(a.calib);
  const auto windows = quant::calibration_windows(orig.tokenizer, text, a.calib_ctx, a.calib_tokens, a.calib);
  spdlog::info("calibration: {} windows of {} tokens from {}", windows.size(), a.calib_ctx, a.calib);
  const std::string scale_dtype = summary.value("scale_dtype", std::string("f16"));
  a.opts.meta_dtype = scale_dtype == "f32" ? DType::F32 : scale_dtype == "bf16" ? DType::BF16 : DType::F16;
  const quant::FinetuneResult r = quant::finetune_quantized(c, *orig.weights, linear, fixed, windows, a.opts);

  auto out = std::make_shared<TensorStore>();
  out->set_origin(a.out);
  out->keep_alive(std::shared_ptr<MappedFile>(q.weights, nullptr));
  for (const auto& [name, t] : qs.all()) {
    if (auto it = linear.find(name); it != linear.end()) {
      add_quantized(*out, name, it->second);
    } else if (auto nt = r.norms.find(name); nt != r.norms.end()) {
      add_float_tensor(*out, name, t.shape, nt->second, DType::F32);
    } else {
      out->add(t);
    }
  }
  summary["finetune"] = {{"epochs", a.opts.epochs},
                         {"steps", r.steps},
                         {"batch_windows", a.opts.batch_windows},
                         {"lr", a.opts.lr},
                         {"zero_lr", a.opts.zero_lr},
                         {"norms", a.opts.train_norms},
                         {"calibration_file", a.calib},
                         {"calibration_tokens", int64_t(windows.size()) * a.calib_ctx},
                         {"heldout_kl_start", r.kl_start},
                         {"heldout_kl", r.kl_best},
                         {"best_epoch", r.best_epoch}};
  QuantWriteOptions w;
  w.scale_dtype = a.opts.meta_dtype;
  w.summary = summary;
  w.tokenizer_source = a.quantized;
  write_quant_folder(a.out, q.config, *out, q.tokenizer, w);
  spdlog::info("wrote {}: held-out calibration KL {:.5f} -> {:.5f}", a.out, r.kl_start, r.kl_best);
  return 0;
}

}  // namespace

void register_finetune(CLI::App& app) {
  auto* a = new FinetuneArgs();
  auto& o = a->opts;
  auto* sub = app.add_subcommand(
      "finetune", "Tune a quantized folder's group scales, zero points and norms end to end against the original model");
  sub->add_option("-m,--model", a->model, "The original model (HF folder or GGUF; default: embedded model)");
  sub->add_option("-q,--quantized", a->quantized, "anybit quantized folder made from it")->required();
  sub->add_option("-o,--output", a->out, "Output folder")->required();
  sub->add_option("--calib", a->calib, "Calibration text file (never the evaluation text)")->required();
  sub->add_option("--calib-tokens", a->calib_tokens, "Calibration tokens (default 131072)")->check(CLI::PositiveNumber);
  sub->add_option("--calib-ctx", a->calib_ctx, "Window length")->check(CLI::Range(int64_t(16), int64_t(1) << 20));
  sub->add_option("--epochs", o.epochs, "Passes over the calibration windows (default 2)")->check(CLI::Range(1, 100));
  sub->add_option("--lr", o.lr, "Peak step of the log-scales and norms (default 2e-3)")->check(CLI::PositiveNumber);
  sub->add_option("--zero-lr", o.zero_lr, "Peak step of the zero points, code units (default 1e-2)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--batch", o.batch_windows, "Windows per step (default 4)")->check(CLI::Range(int64_t(1), int64_t(64)));
  sub->add_option("--norms", o.train_norms, "Also tune the RMSNorm weights (1/0, default 1)");
  o.epochs = 2;
  add_command(sub, [a] { return run_finetune(*a); });
}

}  // namespace anybit::cli
