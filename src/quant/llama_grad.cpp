#include "quant/llama_grad.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "kernels/rope.h"

namespace anybit::quant {

namespace {

// y[m x n] = x[m x k] . w[n x k]^T through the engine's fp32 GEMM (OpenMP inside).
void mm_t(const float* x, int64_t m, const float* w, int64_t n, int64_t k, float* y) {
  matmul(x, m, WeightMatrix{DType::F32, n, k, w}, y);
}

// out[c x r] = in[r x c]^T, in blocks that stay in cache.
void transpose(const float* in, int64_t r, int64_t c, float* out) {
  constexpr int64_t kB = 32;
#pragma omp parallel for collapse(2) schedule(static) if (r * c > 65536)
  for (int64_t i0 = 0; i0 < r; i0 += kB)
    for (int64_t j0 = 0; j0 < c; j0 += kB)
      for (int64_t i = i0; i < std::min(r, i0 + kB); ++i)
        for (int64_t j = j0; j < std::min(c, j0 + kB); ++j) out[j * r + i] = in[i * c + j];
}

// y[m x k] = x[m x n] . w[n x k] (the input gradient of a linear layer).
void mm_n(const float* x, int64_t m, const float* w, int64_t n, int64_t k, float* y, std::vector<float>& tmp) {
  tmp.resize(size_t(n * k));
  transpose(w, n, k, tmp.data());
  mm_t(x, m, tmp.data(), k, n, y);
}

// dw[n x k] = dy[m x n]^T . x[m x k] (the weight gradient of a linear layer).
void mm_grad(const float* dy, int64_t m, int64_t n, const float* x, int64_t k, float* dw, std::vector<float>& t1,
             std::vector<float>& t2) {
  t1.resize(size_t(n * m));
  t2.resize(size_t(k * m));
  transpose(dy, m, n, t1.data());
  transpose(x, m, k, t2.data());
  mm_t(t1.data(), n, t2.data(), k, m, dw);
}

void linear(const GradLinear& l, const float* x, int64_t m, float* y) {
  mm_t(x, m, l.w, l.rows, l.cols, y);
  if (l.b)
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < l.rows; ++j) y[i * l.rows + j] += l.b[j];
}

// y = x / rms(x) * w per row; r keeps 1 / rms.
void rmsnorm_fwd(const float* x, const float* w, int64_t m, int64_t n, float eps, float* y, float* r) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * n;
    double ss = 0.0;
    for (int64_t j = 0; j < n; ++j) ss += double(xi[j]) * xi[j];
    const float ri = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
    r[i] = ri;
    for (int64_t j = 0; j < n; ++j) y[i * n + j] = xi[j] * ri * w[j];
  }
}

// dx (+)= the input gradient of rmsnorm for output gradient dy; dw += the weight's.
void rmsnorm_bwd(const float* x, const float* w, const float* r, const float* dy, int64_t m, int64_t n, float* dx,
                 bool add, std::vector<float>& dw) {
  std::vector<double> dwd(size_t(n), 0.0);
#pragma omp parallel
  {
    std::vector<double> part(size_t(n), 0.0);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * n;
      const float* gi = dy + i * n;
      const float ri = r[i];
      double dot = 0.0;
      for (int64_t j = 0; j < n; ++j) dot += double(gi[j]) * w[j] * xi[j];
      const float c = float(dot * double(ri) * ri * ri / double(n));
      for (int64_t j = 0; j < n; ++j) {
        const float v = ri * w[j] * gi[j] - xi[j] * c;
        dx[i * n + j] = add ? dx[i * n + j] + v : v;
        part[size_t(j)] += double(gi[j]) * xi[j] * ri;
      }
    }
#pragma omp critical
    for (int64_t j = 0; j < n; ++j) dwd[size_t(j)] += part[size_t(j)];
  }
  dw.resize(size_t(n));
  for (int64_t j = 0; j < n; ++j) dw[size_t(j)] = float(dwd[size_t(j)]);
}

float sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }

}  // namespace

LlamaGrad::LlamaGrad(const ModelConfig& cfg) : cfg_(cfg) {
  if (cfg.head_dim % 2 != 0 || cfg.n_heads % cfg.n_kv_heads != 0)
    fail("fine-tuning: unsupported head layout ({} heads, {} kv heads, head_dim {})", cfg.n_heads, cfg.n_kv_heads,
         cfg.head_dim);
}

void LlamaGrad::rope_table(int64_t T) {
  const int64_t half = cfg_.head_dim / 2;
  if (int64_t(cos_.size()) == T * half) return;
  const std::vector<float> f = rope_inv_freq(cfg_);
  cos_.resize(size_t(T * half));
  sin_.resize(size_t(T * half));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      // fp32 angle, exact cos/sin of it: as kernels/rope_cpu.cpp does.
      const float angle = float(t) * f[size_t(i)];
      cos_[size_t(t * half + i)] = float(std::cos(double(angle)));
      sin_[size_t(t * half + i)] = float(std::sin(double(angle)));
    }
}

namespace {

// Rotates (dir = +1) or un-rotates (dir = -1, the backward pass) nh heads of m rows; row
// i is at position i % T.
void rope(float* x, int64_t m, int64_t T, int64_t nh, int64_t hd, const std::vector<float>& cs,
          const std::vector<float>& sn, float dir) {
  const int64_t half = hd / 2;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    const float* c = cs.data() + (i % T) * half;
    const float* s = sn.data() + (i % T) * half;
    for (int64_t h = 0; h < nh; ++h) {
      float* v = x + (i * nh + h) * hd;
      for (int64_t j = 0; j < half; ++j) {
        const float a = v[j], b = v[j + half], sj = dir * s[j];
        v[j] = a * c[j] - b * sj;
        v[j + half] = b * c[j] + a * sj;
      }
    }
  }
}

// Head h of window b as a contiguous T x hd matrix (from rows of stride ld).
void gather_head(const float* src, int64_t ld, int64_t b, int64_t T, int64_t h, int64_t hd, float* dst) {
  for (int64_t t = 0; t < T; ++t) std::copy_n(src + (b * T + t) * ld + h * hd, hd, dst + t * hd);
}

}  // namespace

void LlamaGrad::forward(const GradModel& m, const std::vector<const std::vector<int32_t>*>& windows, bool save,
                        std::vector<float>& logits) {
  const int64_t B = int64_t(windows.size());
  if (B == 0) fail("fine-tuning: no windows to run");
  const int64_t T = int64_t(windows[0]->size());
  for (const auto* w : windows)
    if (int64_t(w->size()) != T) fail("fine-tuning: windows of unequal length ({} and {})", T, w->size());
  if (cfg_.sliding_window > 0 && cfg_.sliding_window < T)
    fail("fine-tuning: sliding-window attention ({}) shorter than the {}-token windows is not supported",
         cfg_.sliding_window, T);
  rope_table(T);
  const int64_t H = cfg_.hidden, M = B * T, nh = cfg_.n_heads, nkv = cfg_.n_kv_heads, hd = cfg_.head_dim;
  const int64_t F = cfg_.ffn, V = m.lm_head.rows, L = int64_t(m.layers.size());
  const float scale = 1.0f / std::sqrt(float(hd));
  B_ = B, T_ = T;
  if (save) save_.assign(size_t(L), LayerSave{});

  std::vector<float> x(size_t(M * H));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int32_t id = (*windows[size_t(b)])[size_t(t)];
      if (id < 0 || id >= m.lm_head.rows) fail("fine-tuning: token id {} outside the vocabulary", id);
      std::copy_n(m.embed + int64_t(id) * H, H, x.data() + (b * T + t) * H);
    }
  std::vector<float> n1(size_t(M * H)), r1(static_cast<size_t>(M)), q(size_t(M * nh * hd)), k(size_t(M * nkv * hd)),
      v(size_t(M * nkv * hd)), a(size_t(M * nh * hd)), o(size_t(M * H)), n2(size_t(M * H)), r2(static_cast<size_t>(M)),
      gate(size_t(M * F)), up(size_t(M * F)), act(size_t(M * F)), d(size_t(M * H)), p;
  std::vector<float> qh(size_t(T * hd)), kh(size_t(T * hd)), vt(size_t(T * hd)), oh(size_t(T * hd)), s(size_t(T * T));
  for (int64_t l = 0; l < L; ++l) {
    const GradLayer& ly = m.layers[size_t(l)];
    rmsnorm_fwd(x.data(), ly.attn_norm, M, H, cfg_.rms_eps, n1.data(), r1.data());
    linear(ly.lin[kGq], n1.data(), M, q.data());
    linear(ly.lin[kGk], n1.data(), M, k.data());
    linear(ly.lin[kGv], n1.data(), M, v.data());
    rope(q.data(), M, T, nh, hd, cos_, sin_, 1.0f);
    rope(k.data(), M, T, nkv, hd, cos_, sin_, 1.0f);
    if (save) p.assign(size_t(B * nh * T * T), 0.0f);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t kvh = h / (nh / nkv);
        gather_head(q.data(), nh * hd, b, T, h, hd, qh.data());
        gather_head(k.data(), nkv * hd, b, T, kvh, hd, kh.data());
        gather_head(v.data(), nkv * hd, b, T, kvh, hd, oh.data());
        transpose(oh.data(), T, hd, vt.data());  // v^T: hd x T
        mm_t(qh.data(), T, kh.data(), T, hd, s.data());
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < T; ++i) {
          float* si = s.data() + i * T;
          float mx = -INFINITY;
          for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, si[j] * scale);
          double sum = 0.0;
          for (int64_t j = 0; j <= i; ++j) sum += (si[j] = std::exp(si[j] * scale - mx));
          const float inv = float(1.0 / sum);
          for (int64_t j = 0; j <= i; ++j) si[j] *= inv;
          for (int64_t j = i + 1; j < T; ++j) si[j] = 0.0f;
        }
        if (save) std::copy(s.begin(), s.end(), p.begin() + (b * nh + h) * T * T);
        mm_t(s.data(), T, vt.data(), hd, T, oh.data());
        for (int64_t t = 0; t < T; ++t) std::copy_n(oh.data() + t * hd, hd, a.data() + (b * T + t) * nh * hd + h * hd);
      }
    linear(ly.lin[kGo], a.data(), M, o.data());
    std::vector<float> x2(size_t(M * H));
    for (size_t i = 0; i < x2.size(); ++i) x2[i] = x[i] + o[i];
    rmsnorm_fwd(x2.data(), ly.mlp_norm, M, H, cfg_.rms_eps, n2.data(), r2.data());
    linear(ly.lin[kGgate], n2.data(), M, gate.data());
    linear(ly.lin[kGup], n2.data(), M, up.data());
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M * F; ++i) act[size_t(i)] = gate[size_t(i)] * sigmoid(gate[size_t(i)]) * up[size_t(i)];
    linear(ly.lin[kGdown], act.data(), M, d.data());
    if (save) {
      LayerSave& sv = save_[size_t(l)];
      sv.x = x, sv.n1 = n1, sv.r1 = r1, sv.q = q, sv.k = k, sv.v = v, sv.p = std::move(p), sv.a = a;
      sv.x2 = x2, sv.n2 = n2, sv.r2 = r2, sv.gate = gate, sv.up = up, sv.act = act;
    }
    for (size_t i = 0; i < x.size(); ++i) x[i] = x2[i] + d[i];
  }
  std::vector<float> nf(size_t(M * H)), rf(static_cast<size_t>(M));
  rmsnorm_fwd(x.data(), m.final_norm, M, H, cfg_.rms_eps, nf.data(), rf.data());
  logits.resize(size_t(M * V));
  linear(m.lm_head, nf.data(), M, logits.data());
  if (save) x_final_ = std::move(x), nf_ = std::move(nf), rf_ = std::move(rf);
}

void LlamaGrad::backward(const GradModel& m, const std::vector<float>& dlogits, ModelGrads& g) {
  const int64_t B = B_, T = T_, H = cfg_.hidden, M = B * T, nh = cfg_.n_heads, nkv = cfg_.n_kv_heads;
  const int64_t hd = cfg_.head_dim, F = cfg_.ffn, V = m.lm_head.rows, L = int64_t(m.layers.size());
  if (int64_t(save_.size()) != L || x_final_.empty()) fail("fine-tuning: backward without a saved forward pass");
  if (int64_t(dlogits.size()) != M * V) fail("fine-tuning: dlogits has {} values, expected {}", dlogits.size(), M * V);
  const float scale = 1.0f / std::sqrt(float(hd));
  g.layers.assign(size_t(L), LayerGrads{});
  std::vector<float> t1, t2, t3;
  std::vector<float> dnf(size_t(M * H)), dx(size_t(M * H));
  mm_n(dlogits.data(), M, m.lm_head.w, V, H, dnf.data(), t1);
  rmsnorm_bwd(x_final_.data(), m.final_norm, rf_.data(), dnf.data(), M, H, dx.data(), false, g.final_norm);

  std::vector<float> dact(size_t(M * F)), dgate(size_t(M * F)), dup(size_t(M * F)), dn(size_t(M * H)),
      tmp(size_t(M * std::max(H, nh * hd))), dx2(size_t(M * H)), da(size_t(M * nh * hd)), dq(size_t(M * nh * hd)),
      dk(size_t(M * nkv * hd)), dv(size_t(M * nkv * hd));
  std::vector<float> qh(size_t(T * hd)), kh(size_t(T * hd)), vh(size_t(T * hd)), doh(size_t(T * hd)),
      ht(size_t(T * hd)), dp(size_t(T * T)), pt(size_t(T * T)), outh(size_t(T * hd));
  auto wgrad = [&](LayerGrads& lg, int which, const GradLinear& lin, const float* dy, const float* xin) {
    lg.w[which].resize(size_t(lin.rows * lin.cols));
    mm_grad(dy, M, lin.rows, xin, lin.cols, lg.w[which].data(), t2, t3);
  };
  for (int64_t l = L - 1; l >= 0; --l) {
    const GradLayer& ly = m.layers[size_t(l)];
    const LayerSave& sv = save_[size_t(l)];
    LayerGrads& lg = g.layers[size_t(l)];
    // MLP: x_next = x2 + down(silu(gate) * up).
    wgrad(lg, kGdown, ly.lin[kGdown], dx.data(), sv.act.data());
    mm_n(dx.data(), M, ly.lin[kGdown].w, H, F, dact.data(), t1);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < M * F; ++i) {
      const float gv = sv.gate[size_t(i)], sg = sigmoid(gv);
      dup[size_t(i)] = dact[size_t(i)] * gv * sg;
      dgate[size_t(i)] = dact[size_t(i)] * sv.up[size_t(i)] * sg * (1.0f + gv * (1.0f - sg));
    }
    wgrad(lg, kGgate, ly.lin[kGgate], dgate.data(), sv.n2.data());
    wgrad(lg, kGup, ly.lin[kGup], dup.data(), sv.n2.data());
    mm_n(dgate.data(), M, ly.lin[kGgate].w, F, H, dn.data(), t1);
    mm_n(dup.data(), M, ly.lin[kGup].w, F, H, tmp.data(), t1);
    for (int64_t i = 0; i < M * H; ++i) dn[size_t(i)] += tmp[size_t(i)];
    dx2 = dx;
    rmsnorm_bwd(sv.x2.data(), ly.mlp_norm, sv.r2.data(), dn.data(), M, H, dx2.data(), true, lg.mlp_norm);
    // Attention: x2 = x + o(attn(rope(q), rope(k), v)).
    wgrad(lg, kGo, ly.lin[kGo], dx2.data(), sv.a.data());
    mm_n(dx2.data(), M, ly.lin[kGo].w, H, nh * hd, da.data(), t1);
    std::fill(dk.begin(), dk.end(), 0.0f);
    std::fill(dv.begin(), dv.end(), 0.0f);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < nh; ++h) {
        const int64_t kvh = h / (nh / nkv);
        const float* P = sv.p.data() + (b * nh + h) * T * T;
        gather_head(sv.q.data(), nh * hd, b, T, h, hd, qh.data());
        gather_head(sv.k.data(), nkv * hd, b, T, kvh, hd, kh.data());
        gather_head(sv.v.data(), nkv * hd, b, T, kvh, hd, vh.data());
        gather_head(da.data(), nh * hd, b, T, h, hd, doh.data());
        mm_t(doh.data(), T, vh.data(), T, hd, dp.data());  // dP = dO V^T
        transpose(P, T, T, pt.data());
        transpose(doh.data(), T, hd, ht.data());
        mm_t(pt.data(), T, ht.data(), hd, T, outh.data());  // dV = P^T dO
        for (int64_t t = 0; t < T; ++t) {
          float* dst = dv.data() + (b * T + t) * nkv * hd + kvh * hd;
          for (int64_t j = 0; j < hd; ++j) dst[j] += outh[size_t(t * hd + j)];
        }
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < T; ++i) {  // dS = P (dP - rowsum(P dP)) / sqrt(hd), in place in dp
          const float* pi = P + i * T;
          float* di = dp.data() + i * T;
          double dot = 0.0;
          for (int64_t j = 0; j <= i; ++j) dot += double(pi[j]) * di[j];
          for (int64_t j = 0; j <= i; ++j) di[j] = pi[j] * (di[j] - float(dot)) * scale;
          for (int64_t j = i + 1; j < T; ++j) di[j] = 0.0f;
        }
        transpose(kh.data(), T, hd, ht.data());
        mm_t(dp.data(), T, ht.data(), hd, T, outh.data());  // dQ = dS K
        for (int64_t t = 0; t < T; ++t) std::copy_n(outh.data() + t * hd, hd, dq.data() + (b * T + t) * nh * hd + h * hd);
        transpose(dp.data(), T, T, pt.data());
        transpose(qh.data(), T, hd, ht.data());
        mm_t(pt.data(), T, ht.data(), hd, T, outh.data());  // dK = dS^T Q
        for (int64_t t = 0; t < T; ++t) {
          float* dst = dk.data() + (b * T + t) * nkv * hd + kvh * hd;
          for (int64_t j = 0; j < hd; ++j) dst[j] += outh[size_t(t * hd + j)];
        }
      }
    rope(dq.data(), M, T, nh, hd, cos_, sin_, -1.0f);
    rope(dk.data(), M, T, nkv, hd, cos_, sin_, -1.0f);
    wgrad(lg, kGq, ly.lin[kGq], dq.data(), sv.n1.data());
    wgrad(lg, kGk, ly.lin[kGk], dk.data(), sv.n1.data());
    wgrad(lg, kGv, ly.lin[kGv], dv.data(), sv.n1.data());
    mm_n(dq.data(), M, ly.lin[kGq].w, nh * hd, H, dn.data(), t1);
    mm_n(dk.data(), M, ly.lin[kGk].w, nkv * hd, H, tmp.data(), t1);
    for (int64_t i = 0; i < M * H; ++i) dn[size_t(i)] += tmp[size_t(i)];
    mm_n(dv.data(), M, ly.lin[kGv].w, nkv * hd, H, tmp.data(), t1);
    for (int64_t i = 0; i < M * H; ++i) dn[size_t(i)] += tmp[size_t(i)];
    dx = dx2;
    rmsnorm_bwd(sv.x.data(), ly.attn_norm, sv.r1.data(), dn.data(), M, H, dx.data(), true, lg.attn_norm);
  }
}

}  // namespace anybit::quant
