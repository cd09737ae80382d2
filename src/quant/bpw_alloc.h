// Mixed-precision format allocation (the FlexQ idea): given, for every matrix, the
// estimated loss increase under each candidate format, choose one format per matrix that
// minimises the total increase subject to an average bits-per-weight budget. Solved
// exactly as a multiple-choice knapsack (dynamic programming over the bit budget).
// A format is a width with a group size and symmetric or asymmetric groups, so the
// allocation can trade code bits against finer or zero-pointed groups.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace anybit::quant {

// Bits per weight of a width as stored: codes + f16 scale (+ f16 zero) per group
// (QuantizedWeight::bits_per_weight).
double width_bpw(int bits, int group, bool asym);

struct AllocOption {
  int bits = 4;
  int group = 128;
  bool asym = false;
};

struct AllocItem {
  int64_t numel = 0;
  std::vector<double> cost;  // cost[i] under options[i] (allocate_bits: cost[b - min_bits])
  // allowed[i] != 0: options[i] can store this item (e.g. its group divides the item's rows).
  // Empty: every option can.
  std::vector<uint8_t> allowed;
};

struct AllocResult {
  std::vector<int> choice;  // chosen option index per item
  std::vector<int> bits;    // its width
  double bpw = 0.0;         // achieved average bits per weight (<= target)
  double cost = 0.0;
};

// Throws anybit::Error when even the smallest allowed options exceed the target, when an item
// allows no option, or when an item's size is not a multiple of an allowed option's group.
AllocResult allocate_formats(const std::vector<AllocItem>& items, const std::vector<AllocOption>& options,
                             double target_bpw);

// The options min_bits..max_bits at one group size and symmetry.
AllocResult allocate_bits(const std::vector<AllocItem>& items, int min_bits, int max_bits, int group, bool asym,
                          double target_bpw);

}  // namespace anybit::quant
