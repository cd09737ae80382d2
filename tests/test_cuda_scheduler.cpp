// The continuous-batching scheduler over the CUDA model with the device sampler
// (Scheduler::set_device_sampler -> LlamaCudaModel::sample_last): greedy requests must give
// exactly the tokens of host sampling on the same logits, sampled requests must replay exactly,
// and requests with a client seed must stay on the host sampler. Skipped when no CUDA device is visible.
#include <gtest/gtest.h>

#include "test_cuda_util.h"

#ifdef ANYBIT_WITH_CUDA
#include <random>

#include "formats/model_loader.h"
#include "model/llama_cuda.h"
#include "runtime/scheduler.h"

namespace anybit {
namespace {

std::vector<std::vector<int32_t>> run_requests(LlamaCudaModel& gpu, const ModelFiles& f, bool device_sampler,
                                               const std::vector<RequestParams>& reqs) {
  KVCache kv(f.config, 256, 16);
  SchedulerOptions o;
  o.max_batch = 4;
  Scheduler s([&gpu](const std::vector<BatchEntry>& b, KVCache& k, ForwardOutput& out) { gpu.forward(b, k, out); },
              f.config, kv, f.tokenizer, f.config.eos_ids, o);
  if (device_sampler)
    s.set_device_sampler(
        [&gpu](const std::vector<SampleRequest>& r, std::vector<int32_t>& ids) { return gpu.sample_last(r, ids); });
  std::vector<std::shared_ptr<Request>> qs;
  for (const auto& p : reqs) {
    auto r = s.submit(p);
    EXPECT_EQ(r.status, SubmitStatus::Ok) << r.error;
    qs.push_back(r.request);
  }
  std::vector<std::vector<int32_t>> ids(reqs.size());
  std::vector<bool> done(reqs.size(), false);
  for (size_t left = reqs.size(), steps = 0; left > 0 && steps < 10000; ++steps) {
    s.step();
    for (size_t i = 0; i < qs.size(); ++i) {
      RequestUpdate u;
      while (!done[i] && qs[i]->wait(u, std::chrono::milliseconds(0))) {
        for (const auto& t : u.tokens) ids[i].push_back(t.id);
        if (u.finished) done[i] = true, --left;
      }
    }
  }
  EXPECT_EQ(kv.free_blocks(), kv.n_blocks());
  return ids;
}

TEST(CudaScheduler, DeviceSamplerAgreesWithHostAndReplays) {
  ANYBIT_REQUIRE_CUDA();
  const ModelFiles f = load_model_files(std::string(ANYBIT_SOURCE_DIR) + "/models/tiny-llama");
  LlamaCudaModel gpu(f.config, f.weights);
  std::mt19937 rng(std::random_device{}());
  std::vector<RequestParams> reqs(4);
  for (size_t i = 0; i < reqs.size(); ++i) {
    RequestParams& p = reqs[i];
    p.prompt = {f.config.bos_id};
    for (int j = 0; j < 6 + int(i) * 5; ++j) p.prompt.push_back(int32_t(300 + rng() % 3000));
    p.max_tokens = 20;
    p.ignore_eos = true;
  }
  const auto host = run_requests(gpu, f, false, reqs), device = run_requests(gpu, f, true, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(host[i].size(), 20u) << i;
    EXPECT_EQ(device[i], host[i]) << "greedy request " << i << ": device sampler differs from the host's";
  }

  for (size_t i = 0; i < reqs.size(); ++i) {
    SamplingParams& s = reqs[i].sampling;
    s.temperature = 0.9f, s.top_k = i % 2 ? 40 : 0, s.top_p = 0.9f, s.min_p = i == 3 ? 0.05f : 0.0f;
    s.repetition_penalty = i == 2 ? 1.3f : 1.0f;
    s.seed = 100 + i;
  }
  const auto a = run_requests(gpu, f, true, reqs), b = run_requests(gpu, f, true, reqs);
  int differs_from_greedy = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(a[i].size(), 20u) << i;
    EXPECT_EQ(a[i], b[i]) << "seeded request " << i << " did not replay";
    for (int32_t id : a[i]) ASSERT_TRUE(id >= 0 && id < f.config.vocab);
    differs_from_greedy += a[i] != host[i];
  }
  EXPECT_GT(differs_from_greedy, 0) << "temperature 0.9 gave the greedy tokens for every request";
  // A client-given seed keeps a request on the host sampler: its tokens must not depend on
  // whether the device sampler is there (nor, therefore, on the batch).
  for (auto& r : reqs) r.sampling.seeded = true;
  EXPECT_EQ(run_requests(gpu, f, true, reqs), run_requests(gpu, f, false, reqs));
}

}  // namespace
}  // namespace anybit

#else
TEST(CudaScheduler, SkippedWithoutCuda) { GTEST_SKIP() << "built without CUDA: GPU scheduler test skipped"; }
#endif
