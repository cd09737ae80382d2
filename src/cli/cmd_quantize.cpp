// `anybit quantize`: any-bit (2..8) group quantization of a model into an anybit
// quantized folder (docs/QUANTIZATION.md, docs/FORMAT.md).
#include <spdlog/spdlog.h>

#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/model_loader.h"
#include "formats/quant_checkpoint.h"
#include "quant/quantize_model.h"
#include "quant/rotate.h"

namespace anybit::cli {

namespace {

struct QuantizeArgs {
  std::string model, out, calib, scale_dtype = "f16";
  bool rotate = false;
  uint64_t rotate_seed = 1;
  quant::QuantizeOptions opts;
  bool sym = false, asym = false, no_sequential = false, act_order = true;
  int reference_target = -1;  // -1: on exactly when calibrating sequentially
  int refine = 3;
  int cd_passes = 4;
};

int run_quantize(QuantizeArgs& a) {
  quant::QuantizeOptions o = a.opts;
  if (a.sym && a.asym) fail("--sym and --asym exclude each other");
  // At 2-3 bits the zero point is worth its 16 bits per group (docs/QUANTIZATION.md: W2 g64
  // +81% -> +61%, W3 +10.1% -> +9.3%), so uniform widths that low default to asymmetric.
  o.asym = a.asym || (!a.sym && o.target_bpw <= 0.0 && o.bits <= 3);
  o.sequential = !a.no_sequential;
  // With sequential calibration, matching the unquantized model's outputs is the default: it
  // halves the W4/W3 degradation on tiny-llama (docs/QUANTIZATION.md, fifth session), and
  // 3 refinement rounds take it further at twice GPTQ's time.
  const bool seq_calib = !a.calib.empty() && o.sequential;
  o.reference_target = a.reference_target < 0 ? seq_calib : a.reference_target != 0;
  o.gptq.refine = a.refine;
  o.gptq.cd_passes = a.cd_passes;
  o.gptq.act_order = a.act_order;
  if (a.scale_dtype == "f16") o.scale_dtype = DType::F16;
  else if (a.scale_dtype == "bf16") o.scale_dtype = DType::BF16;
  else if (a.scale_dtype == "f32") o.scale_dtype = DType::F32;
  else fail("--scale-dtype must be f16, bf16 or f32 (got '{}')", a.scale_dtype);
  if (!a.calib.empty()) {
    o.calib_text = read_text_file(a.calib);
    o.calib_origin = a.calib;
  }
  const std::string in_path = model_path_or_default(a.model);
  if (is_quant_checkpoint(in_path)) fail("{}: already quantized; quantize the original model", in_path);
  ModelFiles m = load_model_files(in_path);
  std::string rotation;
  if (a.rotate) {
    m = quant::rotate_residual(std::move(m), a.rotate_seed, &rotation);
    spdlog::info("residual stream rotated ({})", rotation);
  }
  quant::QuantizeResult r = quant::quantize_model(m, o);
  QuantWriteOptions w;
  w.scale_dtype = o.scale_dtype;
  w.summary = r.summary;
  if (a.rotate) w.summary["rotation"] = rotation;
  w.summary["source"] = in_path;
  std::error_code ec;
  if (std::filesystem::is_directory(in_path, ec)) w.tokenizer_source = in_path;
  write_quant_folder(a.out, m.config, *r.weights, m.tokenizer, w);
  spdlog::info("wrote {}: {} matrices, {:.4f} bits per weight in the linear layers", a.out, r.matrices.size(),
               r.linear_bpw);
  return 0;
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto* a = new QuantizeArgs();
  auto& o = a->opts;
  auto* sub = app.add_subcommand("quantize", "Quantize a model's linear layers to 2..8 bits");
  sub->add_option("-m,--model", a->model, "HF model folder or GGUF file (default: embedded model)");
  sub->add_option("-o,--output", a->out, "Output folder")->required();
  sub->add_option("--bits", o.bits, "Weight bits, 2..8 (uniform; see --target-bpw)")->check(CLI::Range(2, 8));
  sub->add_option("--group", o.group, "Weights per scale: 32, 64 or 128")->check(CLI::IsMember({32, 64, 128}));
  sub->add_flag("--sym", a->sym, "Symmetric groups (default for 4..8 bits and --target-bpw)");
  sub->add_flag("--asym", a->asym, "Asymmetric groups, a zero point per group (default for 2..3 bits)");
  sub->add_flag("--rotate", a->rotate,
                "Rotate the residual stream by a random Hadamard/orthogonal matrix first (QuaRot idea, folded into "
                "the weights: same architecture, outlier channels spread out)");
  sub->add_option("--rotate-seed", a->rotate_seed, "Seed of the --rotate matrix");
  sub->add_option("--calib", a->calib, "Calibration text file (never the evaluation text)");
  sub->add_option("--calib-tokens", o.calib_tokens, "Calibration tokens to use (default 131072; fewer if the text is shorter)")->check(CLI::PositiveNumber);
  sub->add_option("--calib-ctx", o.calib_ctx, "Calibration window length")->check(CLI::Range(int64_t(16), int64_t(1) << 20));
  sub->add_option("--quantizer", o.method, "auto, rtn, rtn-clip, awq, gptq, awq-gptq (auto: gptq with --calib, else rtn-clip)");
  sub->add_option("--target-bpw", o.target_bpw, "Mixed precision: average bits per weight of the linear layers");
  sub->add_flag("--mixed-formats", o.mixed_formats,
                "With --target-bpw: choose each matrix's group size (32/64/128) and symmetric/asymmetric groups as "
                "well as its width");
  sub->add_option("--min-bits", o.min_bits, "Smallest width for --target-bpw")->check(CLI::Range(2, 8));
  sub->add_option("--max-bits", o.max_bits, "Largest width for --target-bpw")->check(CLI::Range(2, 8));
  sub->add_option("--act-bits", o.act_bits, "8 = dynamic per-token int8 activations (W*A8); 0 = fp32")->check(CLI::IsMember({0, 8}));
  sub->add_option("--lm-head-bits", o.lm_head_bits, "lm_head width (0 keeps it as stored)")->check(CLI::Range(0, 8));
  sub->add_option("--embed-bits", o.embed_bits,
                  "Embedding table width, round-to-nearest (default 8; 0 keeps it as stored; the lookup "
                  "dequantizes one row per token)")
      ->check(CLI::Range(0, 8));
  sub->add_option("--scale-dtype", a->scale_dtype, "On-disk scales and zeros: f16, bf16, f32");
  sub->add_flag("--no-sequential", a->no_sequential, "Calibrate every layer on the unquantized model");
  sub->add_option("--act-order", a->act_order, "GPTQ: round columns by decreasing activation energy (1/0)");
  sub->add_option("--reference-target", a->reference_target,
                  "1/0: quantize each matrix toward the unquantized model's outputs on the calibration tokens, "
                  "correcting the error of the layers below (default 1 with sequential calibration)")
      ->check(CLI::Range(0, 1));
  sub->add_flag("--site-sequential", o.site_sequential,
                "Calibrate each input site (attention, o_proj, MLP, down_proj inputs) after the matrices before it in "
                "the same layer are quantized, not once per layer");
  sub->add_option("--refine", a->refine,
                  "GPTQ: rounds of refitting the group scales/zeros for the rounded codes under the full "
                  "calibration Hessian, then re-rounding on the refitted grids (default 3; 0 = off)")
      ->check(CLI::Range(0, 20));
  sub->add_option("--cd-passes", a->cd_passes,
                  "GPTQ: rounds of coordinate descent on the codes after refinement, each a sweep re-rounding every "
                  "column against all others under the calibration Hessian, then a scale/zero refit (default 4; "
                  "0 = off)")
      ->check(CLI::Range(0, 50));
  sub->add_option("--cd-group-search", o.gptq.cd_search_grid,
                  "With --cd-passes: in every round, a clipping search per group under the calibration Hessian, "
                  "N candidate grids around the group's optimum given the other groups (default 0 = off)")
      ->check(CLI::Range(0, 100));
  sub->add_option("--finetune", o.finetune.epochs,
                  "Epochs of end-to-end tuning of every group scale, zero and norm weight against the unquantized "
                  "model's next-token distributions on the calibration text, after the layer-wise quantizer (codes "
                  "unchanged; the epoch with the lowest held-out calibration KL is kept; default 0 = off)")
      ->check(CLI::Range(0, 100));
  sub->add_option("--finetune-lr", o.finetune.lr, "--finetune: peak step of the log-scales and norms (default 2e-3)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--finetune-zero-lr", o.finetune.zero_lr,
                  "--finetune: peak step of the zero points, in code units (default 1e-2)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--finetune-batch", o.finetune.batch_windows, "--finetune: calibration windows per step (default 4)")
      ->check(CLI::Range(int64_t(1), int64_t(64)));
  sub->add_option("--finetune-norms", o.finetune.train_norms, "--finetune: also tune the RMSNorm weights (1/0, default 1)");
  sub->add_option("--awq-grid", o.awq_grid, "AWQ: alpha grid points")->check(CLI::Range(1, 100));
  add_command(sub, [a] { return run_quantize(*a); });
}

}  // namespace anybit::cli
