#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "runtime/generate.h"
#include "runtime/sampler.h"

using namespace anybit;

TEST(Sampler, GreedyAndFilters) {
  std::vector<float> logits = {1.0f, 3.0f, 2.9f, -1.0f, 0.5f};
  SamplingParams p;
  Sampler greedy(p);
  EXPECT_EQ(greedy.sample(logits.data(), 5, {}), 1);
  // Repetition penalty pushes the repeated argmax below the runner-up.
  p.repetition_penalty = 1.5f;
  EXPECT_EQ(Sampler(p).sample(logits.data(), 5, {1}), 2);

  // top-k 2: only ids 1 and 2 can appear; both do.
  SamplingParams t;
  t.temperature = 1.0f;
  t.top_k = 2;
  t.seed = 42;
  Sampler s(t);
  std::map<int32_t, int> seen;
  for (int i = 0; i < 2000; ++i) ++seen[s.sample(logits.data(), 5, {})];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[1], seen[2]);
  // top-p tiny: only the argmax survives.
  t.top_k = 0;
  t.top_p = 0.01f;
  Sampler s2(t);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s2.sample(logits.data(), 5, {}), 1);
  // min-p 0.5: ids with p < 0.5 p_max (0, 3, 4) never appear.
  t.top_p = 1.0f;
  t.min_p = 0.5f;
  Sampler s3(t);
  for (int i = 0; i < 500; ++i) {
    const int32_t id = s3.sample(logits.data(), 5, {});
    EXPECT_TRUE(id == 1 || id == 2) << id;
  }
}

TEST(Sampler, SeedsReproduceAndTemperatureMatchesSoftmax) {
  std::vector<float> logits = {0.0f, 1.0f, 2.0f};
  SamplingParams t;
  t.temperature = 1.0f;
  t.seed = 7;
  Sampler a(t), b(t);
  std::vector<int> counts(3);
  for (int i = 0; i < 20000; ++i) {
    const int32_t x = a.sample(logits.data(), 3, {});
    ASSERT_EQ(x, b.sample(logits.data(), 3, {}));
    ++counts[size_t(x)];
  }
  const double z = 1 + std::exp(1.0) + std::exp(2.0);
  EXPECT_NEAR(counts[2] / 20000.0, std::exp(2.0) / z, 0.02);
  EXPECT_NEAR(counts[0] / 20000.0, 1.0 / z, 0.02);
}

TEST(Sampler, RejectsBadParameters) {
  SamplingParams p;
  p.top_p = 0.0f;
  EXPECT_THROW(Sampler{p}, Error);
  p = {};
  p.temperature = -1.0f;
  EXPECT_THROW(Sampler{p}, Error);
}

TEST(Sampler, TopLogprobsAreNormalised) {
  std::vector<float> logits = {0.0f, 1.0f, 2.0f, 3.0f};
  auto top = Sampler::top_logprobs(logits.data(), 4, 4);
  ASSERT_EQ(top.size(), 4u);
  EXPECT_EQ(top[0].id, 3);
  double s = 0;
  for (auto& t : top) s += std::exp(double(t.logprob));
  EXPECT_NEAR(s, 1.0, 1e-6);
}

TEST(StopMatcher, HoldsBackPartialMatchesAndCutsAtTheStop) {
  StopMatcher m({"END", "\n\n"});
  std::string out;
  out += m.push("hello E");
  EXPECT_EQ(out, "hello ");  // "E" could start "END"
  out += m.push("NX and ");
  EXPECT_EQ(out, "hello ENX and ");
  out += m.push("more\n");
  out += m.push("\ntail");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(out, "hello ENX and more");
  EXPECT_EQ(m.push("x"), "");
  StopMatcher none({});
  EXPECT_EQ(none.push("abc"), "abc");
  StopMatcher end({"xyz"});
  EXPECT_EQ(end.push("ax"), "a");
  EXPECT_EQ(end.flush(), "x");
}
