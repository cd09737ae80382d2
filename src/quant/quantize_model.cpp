#include "quant/quantize_model.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "core/error.h"
#include "core/progress.h"
#include "formats/quant_checkpoint.h"
#include "quant/awq.h"
#include "quant/bpw_alloc.h"
#include "quant/calibration.h"
#include "quant/objective.h"

namespace anybit::quant {

namespace {

const char* const kLinear[7] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                "self_attn.o_proj.weight", "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                                "mlp.down_proj.weight"};

struct Matrix {
  std::string name;
  int64_t layer = -1;
  int64_t rows = 0, cols = 0;
  int bits = 0, group = 128;
  bool asym = false;
};

// Calibration statistics of one input site, in the forms the quantizers take.
struct SiteStats {
  std::vector<float> mean_abs, second_moment, h;
  std::vector<float> target_op;  // M^T of reference_target_operator; empty = quantize W itself
};

SiteStats site_stats(const InputStats& s, double damp) {
  SiteStats st{s.mean_abs(), s.second_moment(), s.hessian(), {}};
  if (!s.rtx.empty() && !st.h.empty()) st.target_op = reference_target_operator(st.h, s.cross(), s.k, damp);
  return st;
}

std::vector<float> matrix_f32(const TensorView& t) {
  if (t.shape.size() != 2) fail("tensor {} is not a matrix", t.name);
  if (t.dtype == DType::QBITS) fail("tensor {} is already quantized; quantize the original model", t.name);
  return tensor_as_f32(t);
}

// A store with the input's tensors, some replaced by fp32 buffers (quantized weights
// dequantized, so calibration forwards see the quantized model at fp32 kernel speed).
std::shared_ptr<TensorStore> with_replacements(const std::shared_ptr<TensorStore>& in,
                                               const std::map<std::string, std::shared_ptr<std::vector<float>>>& repl) {
  auto s = std::make_shared<TensorStore>();
  s->set_origin(in->origin());
  s->keep_alive(std::shared_ptr<MappedFile>(in, nullptr));
  for (const auto& [name, t] : in->all()) {
    auto it = repl.find(name);
    if (it == repl.end()) {
      s->add(t);
      continue;
    }
    TensorView v = t;
    v.dtype = DType::F32;
    v.data = it->second->data();
    v.nbytes = it->second->size() * 4;
    s->add(std::move(v));
    s->keep_alive(std::shared_ptr<MappedFile>(it->second, nullptr));
  }
  return s;
}

struct OneResult {
  QuantizedWeight q;
  float alpha = 0.0f;
};

OneResult quantize_one(const std::string& method, const std::vector<float>& w, int64_t rows, int64_t cols,
                       const MatrixOptions& mo, const SiteStats* st, const QuantizeOptions& o) {
  OneResult r;
  const float* cw = st ? st->second_moment.data() : nullptr;
  const float* h = st && !st->h.empty() ? st->h.data() : nullptr;
  if (method == "rtn" || method == "rtn-clip") {
    MatrixOptions m = mo;
    m.search = method == "rtn-clip";
    r.q = quantize_rtn(w.data(), rows, cols, m, cw);
    return r;
  }
  if (!st) fail("quantizer {} needs calibration text (--calib)", method);
  AwqOptions ao;
  ao.grid = o.awq_grid;
  // The alpha search ranks candidates with a coarser clipping search; the winner is
  // then quantized with the full one.
  MatrixOptions coarse = mo;
  coarse.search_opts.grid = 8;
  coarse.search_opts.refine_iters = 1;
  auto rtn_inner = [&](const std::vector<float>& ws, const float* cws, const float*) {
    return quantize_rtn(ws.data(), rows, cols, coarse, cws);
  };
  if (method == "awq") {
    const AwqResult a = search_awq(w.data(), rows, cols, st->mean_abs, st->second_moment, h, ao, rtn_inner);
    r.q = quantize_rtn(w.data(), rows, cols, mo, cw);
    if (a.alpha > 0.0f) {
      const std::vector<float> s = awq_scales(st->mean_abs, a.alpha);
      std::vector<float> cws(static_cast<size_t>(cols));
      for (int64_t c = 0; c < cols; ++c) cws[size_t(c)] = cw[c] / (s[size_t(c)] * s[size_t(c)]);
      QuantizedWeight qs = quantize_rtn(scale_columns(w.data(), rows, cols, s).data(), rows, cols, mo, cws.data());
      qs.input_scale = s;
      if (awq_objective(w.data(), qs, st->second_moment, h) < awq_objective(w.data(), r.q, st->second_moment, h)) {
        r.q = std::move(qs);
        r.alpha = a.alpha;
      }
    }
    r.q.quantizer = "awq";
    return r;
  }
  if (method == "gptq") {
    r.q = quantize_gptq(w.data(), rows, cols, mo, h, o.gptq);
    return r;
  }
  if (method == "awq-gptq") {
    // alpha from the cheap rounding search, then GPTQ on the scaled matrix; plain GPTQ
    // is kept when it is better on the calibration objective.
    AwqResult a = search_awq(w.data(), rows, cols, st->mean_abs, st->second_moment, h, ao, rtn_inner);
    r.q = quantize_gptq(w.data(), rows, cols, mo, h, o.gptq);
    if (a.alpha > 0.0f) {
      const std::vector<float> s = awq_scales(st->mean_abs, a.alpha);
      std::vector<float> hs(size_t(cols * cols));
      for (int64_t i = 0; i < cols; ++i)
        for (int64_t j = 0; j < cols; ++j) hs[size_t(i * cols + j)] = h[i * cols + j] / (s[size_t(i)] * s[size_t(j)]);
      QuantizedWeight qs = quantize_gptq(scale_columns(w.data(), rows, cols, s).data(), rows, cols, mo, hs.data(), o.gptq);
      qs.input_scale = s;
      if (awq_objective(w.data(), qs, st->second_moment, h) < awq_objective(w.data(), r.q, st->second_moment, h)) {
        r.q = std::move(qs);
        r.alpha = a.alpha;
      }
    }
    r.q.quantizer = "awq-gptq";
    return r;
  }
  fail("unknown quantizer '{}' (rtn, rtn-clip, awq, gptq, awq-gptq)", method);
}

double relative_error(const std::vector<float>& w, const QuantizedWeight& q, const SiteStats* st) {
  const float* h = st && !st->h.empty() ? st->h.data() : nullptr;
  const double e = st ? awq_objective(w.data(), q, st->second_moment, h) : output_error(w.data(), q, nullptr);
  double energy = 0.0;
  if (st && h) {
    energy = output_error_of_delta(w.data(), q.rows, q.cols, h);
  } else {
    for (int64_t r = 0; r < q.rows; ++r)
      for (int64_t c = 0; c < q.cols; ++c) {
        const double v = w[size_t(r * q.cols + c)];
        energy += (st ? double(st->second_moment[size_t(c)]) : 1.0) * v * v;
      }
  }
  return energy > 0.0 ? e / energy : 0.0;
}

std::vector<std::string> layer_sites(int64_t l) {
  const std::string p = "model.layers." + std::to_string(l) + ".";
  return {p + "self_attn.q_proj.weight", p + "self_attn.o_proj.weight", p + "mlp.gate_proj.weight",
          p + "mlp.down_proj.weight"};
}

MatrixOptions matrix_options(const QuantizeOptions& o, int bits, int group, bool asym) {
  MatrixOptions m;
  m.bits = bits;
  m.group = group;
  m.asym = asym;
  m.meta = o.scale_dtype;
  m.act_bits = o.act_bits;
  return m;
}

}  // namespace

std::string resolve_method(const QuantizeOptions& o) {
  if (o.method != "auto") return o.method;
  return o.calib_text.empty() ? "rtn-clip" : "gptq";
}

QuantizeResult quantize_model(const ModelFiles& in, const QuantizeOptions& o) {
  const std::string method = resolve_method(o);
  const bool calib = !o.calib_text.empty();
  if (method != "rtn" && method != "rtn-clip" && method != "awq" && method != "gptq" && method != "awq-gptq")
    fail("unknown quantizer '{}' (rtn, rtn-clip, awq, gptq, awq-gptq)", method);
  if (!calib && method != "rtn" && method != "rtn-clip") fail("quantizer {} needs calibration text (--calib)", method);
  if (o.site_sequential && !(calib && o.sequential))
    fail("--site-sequential needs sequential calibration (--calib, without --no-sequential)");
  if (o.reference_target && !(calib && o.sequential))
    fail("--reference-target needs sequential calibration (--calib, without --no-sequential)");
  if (o.finetune.epochs > 0 && !calib) fail("--finetune needs calibration text (--calib)");
  if (o.target_bpw > 0.0 && !calib) fail("--target-bpw needs calibration text (--calib) to measure sensitivity");
  if (o.lm_head_bits != 0 && (o.lm_head_bits < 2 || o.lm_head_bits > 8))
    fail("--lm-head-bits must be 0 (keep) or 2..8 (got {})", o.lm_head_bits);
  if (o.embed_bits != 0 && (o.embed_bits < 2 || o.embed_bits > 8))
    fail("--embed-bits must be 0 (keep) or 2..8 (got {})", o.embed_bits);
  if (o.group != 32 && o.group != 64 && o.group != 128) fail("--group must be 32, 64 or 128 (got {})", o.group);
  const ModelConfig& cfg = in.config;
  const TensorStore& src = *in.weights;

  // A matrix whose rows are not whole groups of --group gets the largest of 64 and 32 that
  // fits (fitting_group); one line per row length says so.
  std::map<int64_t, int> fallback_cols;  // row length -> group it got
  auto group_for = [&](int64_t cols, const std::string& name) {
    const int g = fitting_group(o.group, cols);
    if (g == 0) fail("{}: {}: the row length {} is not a multiple of 32, the smallest group", src.origin(), name, cols);
    if (g != o.group && fallback_cols.emplace(cols, g).second)
      spdlog::info("rows of {} are not whole groups of {}: matrices with them use groups of {}", cols, o.group, g);
    return g;
  };

  std::vector<Matrix> mats;
  for (int64_t l = 0; l < cfg.n_layers; ++l)
    for (const char* n : kLinear) {
      Matrix m;
      m.name = "model.layers." + std::to_string(l) + "." + n;
      m.layer = l;
      const TensorView& t = src.get(m.name);
      if (t.shape.size() != 2) fail("{}: tensor {} is not a matrix", src.origin(), m.name);
      m.rows = t.shape[0];
      m.cols = t.shape[1];
      m.bits = o.bits;
      m.group = group_for(m.cols, m.name);
      m.asym = o.asym;
      check_matrix_options(matrix_options(o, o.bits, m.group, o.asym), m.rows, m.cols, src.origin() + ": " + m.name);
      mats.push_back(m);
    }

  std::vector<std::vector<int32_t>> windows;
  if (calib) {
    windows = calibration_windows(in.tokenizer, o.calib_text, o.calib_ctx, o.calib_tokens, o.calib_origin);
    spdlog::info("calibration: {} windows of {} tokens from {}", windows.size(), o.calib_ctx, o.calib_origin);
  }
  std::shared_ptr<const std::map<std::string, InputStats>> fp_shared = o.fp_stats;
  auto collect_all = [&]() {
    if (fp_shared) return;
    CollectOptions co;
    for (int64_t l = 0; l < cfg.n_layers; ++l)
      for (const auto& s : layer_sites(l)) co.sites.insert(s);
    ProgressBar bar("calibrating", o.progress);
    bar.update(0, 1);
    auto st = std::make_shared<std::map<std::string, InputStats>>();
    collect_input_stats(cfg, in.weights, windows, co, *st);
    fp_shared = st;
    bar.finish();
  };

  QuantizeResult res;
  res.summary = nlohmann::json::object();
  if (o.target_bpw > 0.0) {
    // Sensitivity: output error at every width (cheap), and one measured calibration
    // loss increase per matrix at the reference width to turn error into loss.
    collect_all();
    const int ref = std::clamp(int(std::floor(o.target_bpw)), o.min_bits, o.max_bits);
    const size_t nsens = size_t(std::max<int64_t>(1, o.sensitivity_tokens / o.calib_ctx));
    std::vector<std::vector<int32_t>> sens(windows.begin(), windows.begin() + long(std::min(nsens, windows.size())));
    const double base = calibration_nll(cfg, in.weights, sens);
    // Candidate formats: the widths at --group/--asym (and at the fallback groups of the
    // matrices whose rows are not whole groups), or with mixed_formats every width at every
    // group size, symmetric and asymmetric. Each matrix may take only the formats whose
    // group divides its rows (and without mixed_formats only its own group).
    std::vector<AllocOption> fmts;
    std::set<int> groups;
    for (const Matrix& m : mats) groups.insert(m.group);
    if (o.mixed_formats) groups = {32, 64, 128};
    for (int b = o.min_bits; b <= o.max_bits; ++b)
      for (int g : groups)
        for (bool a : {false, true})
          if (o.mixed_formats || a == o.asym) fmts.push_back({b, g, a});
    std::vector<AllocItem> items(mats.size());
    const int nw = int(fmts.size());
    ProgressBar bar("sensitivity", o.progress);
    for (size_t i = 0; i < mats.size(); ++i) {
      const Matrix& m = mats[i];
      const SiteStats st = site_stats(fp_shared->at(input_site(m.name)), o.gptq.damp);
      const std::vector<float> w = matrix_f32(src.get(m.name));
      items[i].numel = m.rows * m.cols;
      items[i].cost.assign(size_t(nw), 0.0);
      items[i].allowed.assign(size_t(nw), 0);
      // The sensitivity reference: width floor(X) at the matrix's group and --asym.
      int iref = -1;
      for (int f = 0; f < nw; ++f) {
        const AllocOption& fo = fmts[size_t(f)];
        items[i].allowed[size_t(f)] = o.mixed_formats ? m.cols % fo.group == 0 : fo.group == m.group;
        if (fo.bits == ref && fo.group == m.group && fo.asym == o.asym) iref = f;
      }
      std::vector<double> err(static_cast<size_t>(nw));
      std::shared_ptr<std::vector<float>> ref_w;
      for (int f = 0; f < nw; ++f) {
        if (!items[i].allowed[size_t(f)]) continue;
        const AllocOption& fo = fmts[size_t(f)];
        const QuantizedWeight q = quantize_rtn(w.data(), m.rows, m.cols, matrix_options(o, fo.bits, fo.group, fo.asym),
                                               st.second_moment.data());
        err[size_t(f)] = awq_objective(w.data(), q, st.second_moment, st.h.data());
        if (f == iref) ref_w = std::make_shared<std::vector<float>>(effective_weight(q));
      }
      const double loss = calibration_nll(cfg, with_replacements(in.weights, {{m.name, ref_w}}), sens) - base;
      const double e_ref = err[size_t(iref)];
      // A measured decrease is noise around zero: keep a small positive sensitivity.
      const double gain = e_ref > 0.0 ? std::max(loss, 1e-6) / e_ref : 0.0;
      for (int b = 0; b < nw; ++b) items[i].cost[size_t(b)] = gain * err[size_t(b)];
      bar.update(double(i + 1), double(mats.size()), " matrices");
    }
    bar.finish();
    const AllocResult a = allocate_formats(items, fmts, o.target_bpw);
    for (size_t i = 0; i < mats.size(); ++i) {
      const AllocOption& fo = fmts[size_t(a.choice[i])];
      mats[i].bits = fo.bits;
      mats[i].group = fo.group;
      mats[i].asym = fo.asym;
    }
    spdlog::info("mixed precision: {:.4f} bits per weight for target {}", a.bpw, o.target_bpw);
    res.summary["target_bpw"] = o.target_bpw;
    res.summary["sensitivity_reference_bits"] = ref;
    res.summary["mixed_formats"] = o.mixed_formats;
    res.summary["sensitivity_base_nll"] = base;
  }

  auto out = std::make_shared<TensorStore>();
  out->set_origin(src.origin());
  out->keep_alive(std::shared_ptr<MappedFile>(in.weights, nullptr));
  std::map<std::string, std::shared_ptr<std::vector<float>>> repl;  // quantized so far, as fp32
  std::map<std::string, std::shared_ptr<QuantizedWeight>> done;
  ProgressBar bar("quantizing", o.progress);
  size_t n_done = 0;
  // Stages of the sequential pass: a whole layer, or with site_sequential each input site
  // of it (attention input, o_proj input, MLP input, down_proj input), so that a site's
  // statistics see the matrices before it in the same layer already quantized.
  std::vector<std::vector<std::string>> stages;
  std::vector<int64_t> stage_layer;
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    if (!o.site_sequential) stages.push_back(layer_sites(l)), stage_layer.push_back(l);
    else
      for (const auto& site : layer_sites(l)) stages.push_back({site}), stage_layer.push_back(l);
  }
  // The residual streams entering the current layer, kept between stages (StreamCache).
  std::unique_ptr<StreamCache> streams;
  if (calib && o.sequential) streams = std::make_unique<StreamCache>(cfg, in.weights, windows, o.reference_target);
  for (size_t si = 0; si < stages.size(); ++si) {
    const std::vector<std::string>& stage = stages[si];
    std::map<std::string, InputStats> stage_stats;
    const std::map<std::string, InputStats>* stats = nullptr;
    if (calib && o.sequential && !(repl.empty() && fp_shared)) {
      // Layers before this stage's are quantized by now: move the streams past them.
      while (streams->layer() < stage_layer[si]) streams->advance(with_replacements(in.weights, repl), in.weights);
      CollectOptions co;
      co.sites.insert(stage.begin(), stage.end());
      co.stop_after = stage.back();
      // Before anything is quantized both models feed the same inputs: nothing to correct.
      const bool paired = o.reference_target && !repl.empty();
      streams->collect(with_replacements(in.weights, repl), paired ? in.weights : nullptr, co, stage_stats);
      stats = &stage_stats;
    } else if (calib) {
      collect_all();
      stats = fp_shared.get();
    }
    std::map<std::string, SiteStats> ss;
    if (stats)
      for (const auto& s : stage) ss[s] = site_stats(stats->at(s), o.gptq.damp);
    for (const Matrix& m : mats) {
      if (std::find(stage.begin(), stage.end(), input_site(m.name)) == stage.end()) continue;
      const SiteStats* st = stats ? &ss.at(input_site(m.name)) : nullptr;
      std::vector<float> w = matrix_f32(src.get(m.name));
      if (st && !st->target_op.empty()) w = apply_target_operator(w.data(), m.rows, m.cols, st->target_op);
      OneResult r = quantize_one(method, w, m.rows, m.cols, matrix_options(o, m.bits, m.group, m.asym), st, o);
      MatrixReport rep;
      rep.name = m.name;
      rep.bits = m.bits;
      rep.quantizer = r.q.quantizer;
      rep.alpha = r.alpha;
      rep.rel_error = relative_error(w, r.q, st);
      rep.numel = m.rows * m.cols;
      res.matrices.push_back(rep);
      if (calib && o.sequential) repl[m.name] = std::make_shared<std::vector<float>>(effective_weight(r.q));
      done[m.name] = std::make_shared<QuantizedWeight>(std::move(r.q));
      bar.update(double(++n_done), double(mats.size()), " matrices");
    }
  }
  bar.finish();

  // lm_head: round-to-nearest with clipping search (8 bits by default: near lossless,
  // and it is a large matrix in small-vocabulary-to-hidden ratios). A tied model gets its
  // own quantized lm_head.weight, which the model prefers over the embedding.
  std::shared_ptr<QuantizedWeight> head;
  if (o.lm_head_bits > 0) {
    const TensorView* ht = src.find("lm_head.weight");
    if (!ht && cfg.tie_embeddings) ht = src.find("model.embed_tokens.weight");
    if (ht) {
      const int g = ht->shape.size() == 2 ? fitting_group(o.group, ht->shape[1]) : 0;
      if (g > 0) {
        MatrixOptions mo = matrix_options(o, o.lm_head_bits, g, o.asym);
        mo.act_bits = o.act_bits;
        const std::vector<float> w = matrix_f32(*ht);
        head = std::make_shared<QuantizedWeight>(quantize_rtn(w.data(), ht->shape[0], ht->shape[1], mo, nullptr));
      } else {
        spdlog::info("keeping lm_head as stored: its rows are not a multiple of 32");
      }
    }
  }

  // The embedding table: round-to-nearest with clipping search, rows read one at a time
  // by the lookup (a tied lm_head without --lm-head-bits then runs on it as a QBITS matrix).
  // 8 bits by default: +0.01% perplexity on tiny-llama for half the table's bytes. A table
  // whose rows are not a multiple of 32 keeps its dtype, as lm_head does.
  std::shared_ptr<QuantizedWeight> embed;
  if (o.embed_bits > 0) {
    const TensorView* et = src.find("model.embed_tokens.weight");
    const int g = et && et->shape.size() == 2 ? fitting_group(o.group, et->shape[1]) : 0;
    if (g > 0) {
      const MatrixOptions mo = matrix_options(o, o.embed_bits, g, o.asym);
      const std::vector<float> w = matrix_f32(*et);
      embed = std::make_shared<QuantizedWeight>(quantize_rtn(w.data(), et->shape[0], et->shape[1], mo, nullptr));
    } else if (et) {
      spdlog::info("keeping the embedding table as stored: its rows are not a multiple of 32");
    }
  }

  // End-to-end tuning of the scales, zeros and norms, with lm_head and the embedding as
  // the file will hold them.
  std::map<std::string, std::vector<float>> tuned_norms;
  if (o.finetune.epochs > 0) {
    FinetuneFixed fixed;
    if (head) fixed.lm_head = effective_weight(*head);
    if (embed) fixed.embed = effective_weight(*embed);
    FinetuneOptions fo = o.finetune;
    fo.progress = o.progress;
    fo.meta_dtype = o.scale_dtype;
    res.finetune = finetune_quantized(cfg, src, done, fixed, windows, fo);
    tuned_norms = res.finetune.norms;
  }

  for (const auto& [name, t] : src.all()) {
    if (auto nt = tuned_norms.find(name); nt != tuned_norms.end()) {
      add_float_tensor(*out, name, t.shape, nt->second, DType::F32);
      continue;
    }
    auto it = done.find(name);
    if (it != done.end()) {
      add_quantized(*out, name, it->second);
    } else if (name == "lm_head.weight" && head) {
      add_quantized(*out, name, head);
    } else if (name == "model.embed_tokens.weight" && embed) {
      add_quantized(*out, name, embed);
    } else {
      out->add(t);
    }
  }
  if (head && !src.contains("lm_head.weight")) add_quantized(*out, "lm_head.weight", head);
  res.weights = out;
  res.fp_stats = fp_shared;

  double bits = 0.0;
  int64_t numel = 0;
  nlohmann::json per = nlohmann::json::object();
  for (const auto& rep : res.matrices) {
    bits += double(rep.numel) * done.at(rep.name)->bits_per_weight();
    numel += rep.numel;
    const QuantizedWeight& qd = *done.at(rep.name);
    per[rep.name] = {{"bits", rep.bits},        {"group", qd.group},      {"sym", !qd.asymmetric},
                     {"quantizer", rep.quantizer}, {"awq_alpha", rep.alpha},
                     {"relative_error", rep.rel_error}};
  }
  res.linear_bpw = numel ? bits / double(numel) : 0.0;
  auto& s = res.summary;
  s["quantizer"] = method;
  s["bits"] = o.target_bpw > 0.0 ? nlohmann::json("mixed") : nlohmann::json(o.bits);
  s["group"] = o.group;
  s["sym"] = !o.asym;
  s["act_bits"] = o.act_bits;
  s["scale_dtype"] = o.scale_dtype == DType::F16 ? "f16" : o.scale_dtype == DType::BF16 ? "bf16" : "f32";
  s["lm_head_bits"] = head ? o.lm_head_bits : 0;
  s["embed_bits"] = embed ? o.embed_bits : 0;
  s["linear_bpw"] = res.linear_bpw;
  if (method == "gptq" || method == "awq-gptq") {
    s["gptq_refine"] = o.gptq.refine;
    s["gptq_cd_passes"] = o.gptq.cd_passes;
    s["gptq_cd_search_grid"] = o.gptq.cd_search_grid;
  }
  if (calib) {
    s["calibration"] = {{"file", o.calib_origin},
                        {"tokens", int64_t(windows.size()) * o.calib_ctx},
                        {"window", o.calib_ctx},
                        {"sequential", o.sequential},
                        {"reference_target", o.reference_target},
                        {"site_sequential", o.site_sequential}};
  }
  if (o.finetune.epochs > 0) {
    const FinetuneResult& f = res.finetune;
    s["finetune"] = {{"epochs", o.finetune.epochs},       {"steps", f.steps},
                     {"batch_windows", o.finetune.batch_windows}, {"lr", o.finetune.lr},
                     {"zero_lr", o.finetune.zero_lr},     {"norms", o.finetune.train_norms},
                     {"heldout_kl_start", f.kl_start},    {"heldout_kl", f.kl_best},
                     {"best_epoch", f.best_epoch}};
  }
  s["matrices"] = per;
  return res;
}

}  // namespace anybit::quant
