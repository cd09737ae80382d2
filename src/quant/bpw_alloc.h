// Mixed-precision width allocation (the FlexQ idea): given, for every matrix, the
// estimated loss increase at each candidate width, choose one width per matrix that
// minimises the total increase subject to an average bits-per-weight budget. Solved
// exactly as a multiple-choice knapsack (dynamic programming over the bit budget).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace anybit::quant {

// Bits per weight of a width as stored: codes + f16 scale (+ f16 zero) per group
// (QuantizedWeight::bits_per_weight).
double width_bpw(int bits, int group, bool asym);

struct AllocItem {
  int64_t numel = 0;
  std::vector<double> cost;  // cost[b - min_bits] for b in min_bits..max_bits
};

struct AllocResult {
  std::vector<int> bits;  // chosen width per item
  double bpw = 0.0;       // achieved average bits per weight (<= target)
  double cost = 0.0;
};

// Throws anybit::Error when even min_bits everywhere exceeds the target.
AllocResult allocate_bits(const std::vector<AllocItem>& items, int min_bits, int max_bits, int group, bool asym,
                          double target_bpw);

}  // namespace anybit::quant
