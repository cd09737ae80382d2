// GPU sampling (kernels/sampling_cuda.cu) against a host reference of its semantics:
// the kept set (repetition penalty, top-k, min-p, top-p, ties at a cut kept) and the
// token where the kept mass in index order first exceeds u times the total. Greedy rows
// must equal the host Sampler. Fresh random logits and requests each run (seed printed on
// failure; ANYBIT_TEST_SEED replays). Skipped when no CUDA device is visible.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "test_cuda_util.h"

#ifdef ANYBIT_WITH_CUDA
#include "kernels/sampling_cuda.h"
#include "runtime/sampler.h"

namespace anybit {
namespace {

using test::DeviceArray;

// Kept flags of the host reference; `slack` widens (> 0) or narrows (< 0) the top-p target
// by that relative amount, to bracket the device's fixed-point sums.
std::vector<char> kept_set(const std::vector<float>& v, const cuda::SampleRow& r, double slack, std::vector<double>& e) {
  const int64_t V = int64_t(v.size());
  std::vector<float> sorted(v);
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  const double mx = sorted[0];
  float kth = -INFINITY;
  if (r.top_k > 0 && r.top_k < V) kth = sorted[size_t(r.top_k - 1)];
  e.assign(size_t(V), 0.0);
  double z = 0;
  for (int64_t i = 0; i < V; ++i) {
    e[size_t(i)] = std::exp((double(v[size_t(i)]) - mx) / double(r.temperature));
    if (v[size_t(i)] >= kth) z += e[size_t(i)];
  }
  float cut = kth;
  if (r.top_p < 1.0f) {
    const double target = double(r.top_p) * z * (1.0 + slack);
    double cum = 0;
    for (float s : sorted) {
      if (s < kth) break;
      cum += std::exp((double(s) - mx) / double(r.temperature));
      cut = std::max(cut, s);
      if (cum >= target) {
        cut = s;
        break;
      }
    }
  }
  std::vector<char> keep(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) keep[size_t(i)] = v[size_t(i)] >= cut && e[size_t(i)] >= double(r.min_p) * (1 - slack);
  return keep;
}

TEST(CudaSampling, MatchesHostReference) {
  ANYBIT_REQUIRE_CUDA();
  const uint64_t seed = test::cuda_test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int64_t V : {7, 1000, 32000, 128256}) {
    const int64_t n = 48, ldl = V + int64_t(rng() % 5);
    std::vector<float> logits(size_t(n * ldl));
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (auto& x : logits) x = nd(rng);
    std::vector<cuda::SampleRow> rows(static_cast<size_t>(n));
    std::vector<SamplingParams> params(static_cast<size_t>(n));
    std::vector<std::vector<int32_t>> history(static_cast<size_t>(n));
    std::vector<int32_t> pen;
    std::uniform_real_distribution<double> ud(0.0, 1.0);
    for (int64_t i = 0; i < n; ++i) {
      SamplingParams& p = params[size_t(i)];
      const float temps[] = {0.0f, 0.5f, 1.0f, 1.7f};
      p.temperature = temps[rng() % 4];
      const int32_t ks[] = {0, 1, 40, int32_t(V + 3)};
      p.top_k = ks[rng() % 4];
      const float ps[] = {1.0f, 0.9f, 0.5f};
      p.top_p = ps[rng() % 3];
      p.min_p = rng() % 3 == 0 ? 0.05f : 0.0f;
      p.repetition_penalty = rng() % 2 ? 1.3f : 1.0f;
      for (int j = 0; j < 30; ++j) history[size_t(i)].push_back(int32_t(rng() % uint64_t(V)));
      Sampler s(p);
      cuda::SampleRow& r = rows[size_t(i)];
      r.temperature = p.temperature, r.top_k = p.top_k, r.top_p = p.top_p, r.min_p = p.min_p;
      r.repetition_penalty = p.repetition_penalty, r.u = ud(rng);
      const auto ids = s.penalty_ids(history[size_t(i)], V);
      r.penalty_begin = int32_t(pen.size());
      pen.insert(pen.end(), ids.begin(), ids.end());
      r.penalty_end = int32_t(pen.size());
    }
    DeviceArray<float> dl(logits), work(size_t(n * cuda::sample_work_ld(V)));
    DeviceArray<int32_t> dpen(pen.empty() ? std::vector<int32_t>{0} : pen), dout(static_cast<size_t>(n));
    DeviceArray<uint8_t> drows(n * sizeof(cuda::SampleRow));
    drows.upload_bytes(rows.data(), rows.size() * sizeof(cuda::SampleRow));
    dout.poison();
    cuda::SampleArgs a;
    a.logits = dl.get(), a.ldl = ldl, a.vocab = V, a.n_rows = n;
    a.rows = reinterpret_cast<const cuda::SampleRow*>(drows.get()), a.penalty_ids = dpen.get();
    a.work = work.get(), a.out = dout.get();
    cuda::sample_rows(a, nullptr);
    const auto got = dout.download();

    for (int64_t i = 0; i < n; ++i) {
      const cuda::SampleRow& r = rows[size_t(i)];
      SCOPED_TRACE(fmt::format("V={} row {}: T={} top_k={} top_p={} min_p={} penalty={} u={}", V, i, r.temperature,
                               r.top_k, r.top_p, r.min_p, r.repetition_penalty, r.u));
      std::vector<float> v(logits.begin() + i * ldl, logits.begin() + i * ldl + V);
      for (int32_t j = r.penalty_begin; j < r.penalty_end; ++j) {
        float& l = v[size_t(pen[size_t(j)])];
        l = l > 0 ? l / r.repetition_penalty : l * r.repetition_penalty;
      }
      const int32_t id = got[size_t(i)];
      ASSERT_GE(id, 0);
      ASSERT_LT(id, V);
      if (r.temperature == 0.0f) {
        Sampler host(params[size_t(i)]);
        ASSERT_EQ(id, host.sample(logits.data() + i * ldl, V, history[size_t(i)])) << "greedy differs from the host";
        continue;
      }
      std::vector<double> e;
      const auto lo = kept_set(v, r, -1e-5, e), hi = kept_set(v, r, 1e-5, e), keep = kept_set(v, r, 0.0, e);
      ASSERT_TRUE(hi[size_t(id)]) << "token " << id << " is outside the kept set";
      if (r.top_k == 1) {
        ASSERT_EQ(id, int32_t(std::max_element(v.begin(), v.end()) - v.begin()));
        continue;
      }
      if (lo != hi) continue;  // a cut within the fixed-point error: either set is right
      double total = 0;
      for (int64_t t = 0; t < V; ++t)
        if (keep[size_t(t)]) total += e[size_t(t)];
      const double target = r.u * total;
      double cum = 0, gap = INFINITY;
      int32_t want = -1;
      for (int64_t t = 0; t < V; ++t) {
        if (!keep[size_t(t)]) continue;
        cum += e[size_t(t)];
        gap = std::min(gap, std::fabs(cum - target));
        if (want < 0 && cum > target) want = int32_t(t);
      }
      if (gap < 1e-6 * total) continue;  // u falls on a boundary between two tokens
      ASSERT_EQ(id, want) << "not the token at u of the kept mass in index order";
    }
  }
}

}  // namespace
}  // namespace anybit

#else
TEST(CudaSampling, SkippedWithoutCuda) { GTEST_SKIP() << "built without CUDA: GPU sampling tests skipped"; }
#endif
