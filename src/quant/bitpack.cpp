#include "quant/bitpack.h"

#include <cstring>

namespace anybit::quant {

void pack_codes(const uint8_t* codes, int64_t n, int bits, uint8_t* out) {
  const size_t nb = packed_bytes(n, bits);
  std::memset(out, 0, nb);
  const uint32_t mask = (1u << bits) - 1u;
  // A code spans at most two bytes (bits <= 8), so a 16-bit window suffices.
  for (int64_t i = 0; i < n; ++i) {
    const int64_t bit = i * bits;
    const uint32_t v = (uint32_t(codes[i]) & mask) << (bit & 7);
    const size_t byte = size_t(bit >> 3);
    out[byte] |= uint8_t(v);
    if (v >> 8) out[byte + 1] |= uint8_t(v >> 8);
  }
}

void unpack_codes(const uint8_t* packed, int64_t n, int bits, uint8_t* codes) {
  const uint32_t mask = (1u << bits) - 1u;
  const size_t nb = packed_bytes(n, bits);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t bit = i * bits;
    const size_t byte = size_t(bit >> 3);
    uint32_t w = packed[byte];
    if (byte + 1 < nb) w |= uint32_t(packed[byte + 1]) << 8;
    codes[i] = uint8_t((w >> (bit & 7)) & mask);
  }
}

}  // namespace anybit::quant
