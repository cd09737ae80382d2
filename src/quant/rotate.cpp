#include "quant/rotate.h"

#include <cmath>
#include <random>

#include "core/error.h"

namespace anybit::quant {

namespace {

bool power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// Sylvester's construction, entries +-1.
std::vector<double> sylvester(int64_t n) {
  std::vector<double> h(size_t(n * n), 1.0);
  for (int64_t len = 1; len < n; len *= 2)
    for (int64_t i = 0; i < len; ++i)
      for (int64_t j = 0; j < len; ++j) {
        const double v = h[size_t(i * n + j)];
        h[size_t(i * n + j + len)] = v;
        h[size_t((i + len) * n + j)] = v;
        h[size_t((i + len) * n + j + len)] = -v;
      }
  return h;
}

// Paley's first construction for q = 11: the 12 x 12 Hadamard matrix I + S, where S borders
// the Jacobsthal matrix (quadratic character of j - i mod 11) with a row of 1s and a column
// of -1s.
std::vector<double> paley12() {
  constexpr int q = 11, n = q + 1;
  auto chi = [](int a) {
    a = ((a % q) + q) % q;
    if (a == 0) return 0;
    for (int x = 1; x < q; ++x)
      if ((x * x) % q == a) return 1;
    return -1;
  };
  std::vector<double> h(size_t(n * n), 0.0);
  for (int j = 1; j < n; ++j) h[size_t(j)] = 1.0, h[size_t(j * n)] = -1.0;
  for (int i = 1; i < n; ++i)
    for (int j = 1; j < n; ++j) h[size_t(i * n + j)] = chi(j - i);
  for (int i = 0; i < n; ++i) h[size_t(i * n + i)] += 1.0;
  return h;
}

std::vector<double> kron(const std::vector<double>& a, int64_t na, const std::vector<double>& b, int64_t nb) {
  const int64_t n = na * nb;
  std::vector<double> k(size_t(n * n));
  for (int64_t i = 0; i < na; ++i)
    for (int64_t j = 0; j < na; ++j)
      for (int64_t p = 0; p < nb; ++p)
        for (int64_t r = 0; r < nb; ++r)
          k[size_t((i * nb + p) * n + j * nb + r)] = a[size_t(i * na + j)] * b[size_t(p * nb + r)];
  return k;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::vector<double> random_rotation(int64_t n, uint64_t seed, std::string* kind) {
  if (n <= 0) fail("random_rotation: size {} must be positive", n);
  std::mt19937_64 rng(seed);
  std::vector<double> q;
  if (power_of_two(n) || (n % 12 == 0 && power_of_two(n / 12))) {
    q = power_of_two(n) ? sylvester(n) : kron(paley12(), 12, sylvester(n / 12), n / 12);
    // Random signs on the rows (Q = D H / sqrt(n)): a different rotation per seed.
    const double norm = 1.0 / std::sqrt(double(n));
    for (int64_t i = 0; i < n; ++i) {
      const double s = (rng() & 1) ? norm : -norm;
      for (int64_t j = 0; j < n; ++j) q[size_t(i * n + j)] *= s;
    }
    if (kind) *kind = "hadamard";
    return q;
  }
  // Rows of a Gaussian matrix, orthonormalised (modified Gram-Schmidt, twice for accuracy).
  std::normal_distribution<double> nd(0.0, 1.0);
  q.resize(size_t(n * n));
  for (auto& v : q) v = nd(rng);
  for (int64_t i = 0; i < n; ++i) {
    double* qi = q.data() + i * n;
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t j = 0; j < i; ++j) {
        const double* qj = q.data() + j * n;
        double d = 0;
        for (int64_t c = 0; c < n; ++c) d += qi[c] * qj[c];
        for (int64_t c = 0; c < n; ++c) qi[c] -= d * qj[c];
      }
    double nn = 0;
    for (int64_t c = 0; c < n; ++c) nn += qi[c] * qi[c];
    nn = 1.0 / std::sqrt(nn);
    for (int64_t c = 0; c < n; ++c) qi[c] *= nn;
  }
  if (kind) *kind = "orthogonal";
  return q;
}

ModelFiles rotate_residual(ModelFiles in, uint64_t seed, std::string* description) {
  const ModelConfig& c = in.config;
  const int64_t H = c.hidden;
  if (c.tie_embeddings)
    fail("--rotate: {} ties lm_head to the embedding; the final norm cannot be folded into a tied matrix", in.path);
  std::string kind;
  const std::vector<double> Q = random_rotation(H, seed, &kind);
  const TensorStore& src = *in.weights;
  auto norm = [&](const std::string& name) {
    const TensorView& t = src.get(name, {H});
    return tensor_as_f32(t);
  };
  auto store = std::make_shared<TensorStore>();
  store->set_origin(src.origin() + " (rotated)");

  // Reads the stream: W' = W diag(g) Q, row by row.
  auto rotate_in = [&](const std::string& name, const std::vector<float>* g) {
    const TensorView& t = src.get(name);
    if (t.shape.size() != 2 || t.shape[1] != H) fail("--rotate: {} has shape {}, expected [*, {}]", name, t.shape_str(), H);
    const int64_t R = t.shape[0];
    std::vector<float> w = tensor_as_f32(t), out(w.size());
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      std::vector<double> row(size_t(H), 0.0), acc(size_t(H), 0.0);
      for (int64_t k = 0; k < H; ++k) row[size_t(k)] = double(w[size_t(r * H + k)]) * (g ? (*g)[size_t(k)] : 1.0f);
      for (int64_t k = 0; k < H; ++k) {
        const double v = row[size_t(k)];
        const double* qk = Q.data() + k * H;
        for (int64_t j = 0; j < H; ++j) acc[size_t(j)] += v * qk[j];
      }
      for (int64_t j = 0; j < H; ++j) out[size_t(r * H + j)] = float(acc[size_t(j)]);
    }
    return std::make_pair(t, out);
  };
  // Writes the stream: W' = Q^T W (W is H x D), b' = Q^T b.
  auto rotate_out = [&](const std::string& name) {
    const TensorView& t = src.get(name);
    if (t.shape.empty() || t.shape[0] != H) fail("--rotate: {} has shape {}, expected [{}, *]", name, t.shape_str(), H);
    const int64_t D = t.shape.size() == 2 ? t.shape[1] : 1;
    std::vector<float> w = tensor_as_f32(t), out(w.size());
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < H; ++i) {
      std::vector<double> acc(size_t(D), 0.0);
      for (int64_t k = 0; k < H; ++k) {
        const double qki = Q[size_t(k * H + i)];
        const float* wk = w.data() + k * D;
        for (int64_t j = 0; j < D; ++j) acc[size_t(j)] += qki * wk[j];
      }
      for (int64_t j = 0; j < D; ++j) out[size_t(i * D + j)] = float(acc[size_t(j)]);
    }
    return std::make_pair(t, out);
  };
  auto put = [&](const std::pair<TensorView, std::vector<float>>& r, DType dtype) {
    add_float_tensor(*store, r.first.name, r.first.shape, r.second, dtype);
  };
  const std::vector<float> ones(size_t(H), 1.0f);

  put(rotate_in("model.embed_tokens.weight", nullptr), src.get("model.embed_tokens.weight").dtype);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::vector<float> g_attn = norm(p + "input_layernorm.weight"), g_mlp = norm(p + "post_attention_layernorm.weight");
    for (const char* m : {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"})
      put(rotate_in(p + m, &g_attn), DType::F32);
    for (const char* m : {"mlp.gate_proj.weight", "mlp.up_proj.weight"}) put(rotate_in(p + m, &g_mlp), DType::F32);
    for (const char* m : {"self_attn.o_proj.weight", "mlp.down_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.bias"})
      if (src.contains(p + m)) put(rotate_out(p + m), DType::F32);
    add_float_tensor(*store, p + "input_layernorm.weight", {H}, ones, DType::F32);
    add_float_tensor(*store, p + "post_attention_layernorm.weight", {H}, ones, DType::F32);
  }
  const std::vector<float> g_final = norm("model.norm.weight");
  put(rotate_in("lm_head.weight", &g_final), DType::F32);
  add_float_tensor(*store, "model.norm.weight", {H}, ones, DType::F32);

  // Everything else (q/k/v biases, per-head norms, ...) does not touch the stream: shared.
  for (const auto& [name, t] : src.all())
    if (!store->contains(name)) {
      if (ends_with(name, "_layernorm.weight") || ends_with(name, "proj.weight"))
        fail("--rotate: does not know how to rotate {}", name);
      store->add(t);
    }
  store->keep_alive(std::shared_ptr<MappedFile>(in.weights, nullptr));
  in.weights = std::move(store);
  if (description) *description = kind + " " + std::to_string(H) + ", seed " + std::to_string(seed);
  return in;
}

}  // namespace anybit::quant
