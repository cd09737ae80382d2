#include "quant/bpw_alloc.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace anybit::quant {

double width_bpw(int bits, int group, bool asym) { return double(bits) + (asym ? 32.0 : 16.0) / double(group); }

namespace {

// Exact size in bits of `numel` weights at a width.
int64_t item_bits(int64_t numel, int bits, int group, bool asym) {
  return numel * bits + (numel / group) * (asym ? 32 : 16);
}

}  // namespace

AllocResult allocate_bits(const std::vector<AllocItem>& items, int min_bits, int max_bits, int group, bool asym,
                          double target_bpw) {
  if (min_bits < 2 || max_bits > 8 || min_bits > max_bits)
    fail("bit allocation: widths must satisfy 2 <= min ({}) <= max ({}) <= 8", min_bits, max_bits);
  const int nw = max_bits - min_bits + 1;
  int64_t total_numel = 0;
  for (const auto& it : items) {
    if (int(it.cost.size()) != nw) fail("bit allocation: an item has {} costs for {} widths", it.cost.size(), nw);
    if (it.numel <= 0 || it.numel % group != 0) fail("bit allocation: item of {} weights with group {}", it.numel, group);
    total_numel += it.numel;
  }
  AllocResult res;
  if (items.empty()) return res;
  // The budget in bits, rounded down, so the result never exceeds the target.
  const int64_t budget = int64_t(std::floor(target_bpw * double(total_numel) + 1e-9));
  int64_t min_total = 0;
  for (const auto& it : items) min_total += item_bits(it.numel, min_bits, group, asym);
  if (min_total > budget)
    fail("--target-bpw {} is below the smallest size these widths allow ({:.4f} bits per weight)", target_bpw,
         double(min_total) / double(total_numel));

  // Work in units of the gcd of all sizes; coarsen (rounding sizes up) if that leaves
  // too many states. Rounding up only over-counts, so feasibility is kept.
  int64_t unit = 0;
  for (const auto& it : items)
    for (int b = min_bits; b <= max_bits; ++b) unit = std::gcd(unit, item_bits(it.numel, b, group, asym));
  const int64_t max_states = 200000;
  // Only the part of the budget above "everything at min_bits" is allocated.
  const int64_t slack = budget - min_total;
  if (slack / unit > max_states) unit = (slack + max_states - 1) / max_states;
  const int64_t S = slack / unit;
  const double inf = std::numeric_limits<double>::infinity();
  const size_t n = items.size();
  std::vector<std::vector<int64_t>> extra(n, std::vector<int64_t>(size_t(nw)));
  for (size_t i = 0; i < n; ++i)
    for (int b = 0; b < nw; ++b) {
      const int64_t e = item_bits(items[i].numel, min_bits + b, group, asym) - item_bits(items[i].numel, min_bits, group, asym);
      extra[i][size_t(b)] = (e + unit - 1) / unit;
    }
  std::vector<double> dp(size_t(S + 1), 0.0), next(size_t(S + 1));
  std::vector<uint8_t> choice(n * size_t(S + 1));
  for (size_t i = 0; i < n; ++i) {
    for (int64_t s = 0; s <= S; ++s) {
      double best = inf;
      uint8_t bc = 0;
      for (int b = 0; b < nw; ++b) {
        const int64_t e = extra[i][size_t(b)];
        if (e > s) continue;
        const double v = dp[size_t(s - e)] + items[i].cost[size_t(b)];
        if (v < best) best = v, bc = uint8_t(b);
      }
      next[size_t(s)] = best;
      choice[i * size_t(S + 1) + size_t(s)] = bc;
    }
    dp.swap(next);
  }
  res.bits.assign(n, min_bits);
  int64_t s = S;
  for (size_t i = n; i-- > 0;) {
    const int b = choice[i * size_t(S + 1) + size_t(s)];
    res.bits[i] = min_bits + b;
    s -= extra[i][size_t(b)];
  }
  int64_t used = 0;
  for (size_t i = 0; i < n; ++i) {
    used += item_bits(items[i].numel, res.bits[i], group, asym);
    res.cost += items[i].cost[size_t(res.bits[i] - min_bits)];
  }
  res.bpw = double(used) / double(total_numel);
  return res;
}

}  // namespace anybit::quant
