// The packed code stream of quantized_weight.h: `n` unsigned codes of `bits`
// bits, code i at bit offset i*bits, little-endian within and across bytes.
#pragma once
#include <cstddef>
#include <cstdint>

namespace anybit::quant {

inline size_t packed_bytes(int64_t n, int bits) { return size_t((n * bits + 7) / 8); }

// `out` receives packed_bytes(n, bits) bytes (fully overwritten, padding bits zero).
// Codes must fit in `bits` bits (higher bits are masked off).
void pack_codes(const uint8_t* codes, int64_t n, int bits, uint8_t* out);
void unpack_codes(const uint8_t* packed, int64_t n, int bits, uint8_t* codes);

}  // namespace anybit::quant
