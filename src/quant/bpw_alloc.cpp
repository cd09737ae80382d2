#include "quant/bpw_alloc.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace anybit::quant {

double width_bpw(int bits, int group, bool asym) { return double(bits) + (asym ? 32.0 : 16.0) / double(group); }

namespace {

// Exact size in bits of `numel` weights in a format.
int64_t item_bits(int64_t numel, const AllocOption& f) {
  return numel * f.bits + (numel / f.group) * (f.asym ? 32 : 16);
}

}  // namespace

AllocResult allocate_formats(const std::vector<AllocItem>& items, const std::vector<AllocOption>& options,
                             double target_bpw) {
  const int nw = int(options.size());
  if (nw == 0 || nw > 255) fail("bit allocation: {} format options (1..255)", nw);
  for (const auto& f : options)
    if (f.bits < 2 || f.bits > 8 || f.group <= 0) fail("bit allocation: format of {} bits, group {}", f.bits, f.group);
  auto allowed = [&](size_t i, int b) { return items[i].allowed.empty() || items[i].allowed[size_t(b)] != 0; };
  int64_t total_numel = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const AllocItem& it = items[i];
    if (int(it.cost.size()) != nw) fail("bit allocation: an item has {} costs for {} formats", it.cost.size(), nw);
    if (!it.allowed.empty() && int(it.allowed.size()) != nw)
      fail("bit allocation: an item has {} allowed flags for {} formats", it.allowed.size(), nw);
    int n_allowed = 0;
    for (int b = 0; b < nw; ++b) {
      if (!allowed(i, b)) continue;
      ++n_allowed;
      if (it.numel <= 0 || it.numel % options[size_t(b)].group != 0)
        fail("bit allocation: item of {} weights with group {}", it.numel, options[size_t(b)].group);
    }
    if (n_allowed == 0) fail("bit allocation: item {} allows none of the {} formats", i, nw);
    total_numel += it.numel;
  }
  AllocResult res;
  if (items.empty()) return res;
  const size_t n = items.size();
  // The budget in bits, rounded down, so the result never exceeds the target.
  const int64_t budget = int64_t(std::floor(target_bpw * double(total_numel) + 1e-9));
  // Each item's smallest format is the floor everything is allocated above.
  std::vector<int64_t> base(n);
  int64_t min_total = 0;
  for (size_t i = 0; i < n; ++i) {
    base[i] = std::numeric_limits<int64_t>::max();
    for (int b = 0; b < nw; ++b)
      if (allowed(i, b)) base[i] = std::min(base[i], item_bits(items[i].numel, options[size_t(b)]));
    min_total += base[i];
  }
  if (min_total > budget)
    fail("--target-bpw {} is below the smallest size these formats allow ({:.4f} bits per weight)", target_bpw,
         double(min_total) / double(total_numel));

  // Work in units of the gcd of all sizes; coarsen (rounding sizes up) if that leaves
  // too many states. Rounding up only over-counts, so feasibility is kept.
  int64_t unit = 0;
  for (size_t i = 0; i < n; ++i)
    for (int b = 0; b < nw; ++b)
      if (allowed(i, b)) unit = std::gcd(unit, item_bits(items[i].numel, options[size_t(b)]) - base[i]);
  if (unit == 0) unit = 1;
  const int64_t max_states = 200000;
  // Only the part of the budget above the smallest sizes is allocated.
  const int64_t slack = budget - min_total;
  if (slack / unit > max_states) unit = (slack + max_states - 1) / max_states;
  const int64_t S = slack / unit;
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<int64_t>> extra(n, std::vector<int64_t>(size_t(nw)));
  for (size_t i = 0; i < n; ++i)
    for (int b = 0; b < nw; ++b) {
      // A format the item cannot take costs more than the whole slack: never chosen.
      const int64_t e = item_bits(items[i].numel, options[size_t(b)]) - base[i];
      extra[i][size_t(b)] = allowed(i, b) ? (e + unit - 1) / unit : S + 1;
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
  res.choice.assign(n, 0);
  res.bits.assign(n, 0);
  int64_t s = S;
  for (size_t i = n; i-- > 0;) {
    const int b = choice[i * size_t(S + 1) + size_t(s)];
    res.choice[i] = b;
    res.bits[i] = options[size_t(b)].bits;
    s -= extra[i][size_t(b)];
  }
  int64_t used = 0;
  for (size_t i = 0; i < n; ++i) {
    used += item_bits(items[i].numel, options[size_t(res.choice[i])]);
    res.cost += items[i].cost[size_t(res.choice[i])];
  }
  res.bpw = double(used) / double(total_numel);
  return res;
}

AllocResult allocate_bits(const std::vector<AllocItem>& items, int min_bits, int max_bits, int group, bool asym,
                          double target_bpw) {
  if (min_bits < 2 || max_bits > 8 || min_bits > max_bits)
    fail("bit allocation: widths must satisfy 2 <= min ({}) <= max ({}) <= 8", min_bits, max_bits);
  std::vector<AllocOption> options;
  for (int b = min_bits; b <= max_bits; ++b) options.push_back({b, group, asym});
  return allocate_formats(items, options, target_bpw);
}

}  // namespace anybit::quant
