#include "tokenizer/unicode_util.h"

#include <array>

namespace anybit::utf8 {
namespace {

// Expected sequence length for a lead byte, 0 for bytes that can never start one.
int lead_len(uint8_t b) {
  if (b < 0x80) return 1;
  if (b < 0xC2) return 0;
  if (b < 0xE0) return 2;
  if (b < 0xF0) return 3;
  if (b < 0xF5) return 4;
  return 0;
}

// Range allowed for the second byte (Unicode table 3-7: excludes overlongs,
// surrogates and code points above U+10FFFF).
bool second_ok(uint8_t lead, uint8_t b) {
  switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: return b >= 0x80 && b <= 0xBF;
  }
}

// Number of bytes from s[i] that are a valid prefix of a well-formed sequence
// (at most the needed length); *need gets the full length (0 for a bad lead).
size_t valid_prefix(std::string_view s, size_t i, int* need) {
  const uint8_t lead = static_cast<uint8_t>(s[i]);
  const int n = lead_len(lead);
  *need = n;
  if (n == 0) return 0;
  size_t k = 1;
  while (k < static_cast<size_t>(n) && i + k < s.size()) {
    const uint8_t b = static_cast<uint8_t>(s[i + k]);
    const bool ok = (k == 1) ? second_ok(lead, b) : (b >= 0x80 && b <= 0xBF);
    if (!ok) break;
    ++k;
  }
  return k;
}

struct ByteTable {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> from_cp{};  // byte-level characters all lie below U+0144
  ByteTable() {
    from_cp.fill(-1);
    // Printable Latin-1 bytes stand for themselves; the rest are shifted past
    // U+00FF in byte order, so every byte has a visible, non-space character.
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = keep ? static_cast<uint32_t>(b) : next++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteTable& table() {
  static const ByteTable t;
  return t;
}

}  // namespace

size_t valid_seq_len(std::string_view s, size_t i) {
  int need = 0;
  const size_t k = valid_prefix(s, i, &need);
  return (need > 0 && k == static_cast<size_t>(need)) ? k : 0;
}

uint32_t decode_at(std::string_view s, size_t i, size_t* len) {
  const size_t n = valid_seq_len(s, i);
  if (n == 0) {
    *len = 1;
    return 0xFFFD;
  }
  *len = n;
  const auto* p = reinterpret_cast<const uint8_t*>(s.data() + i);
  switch (n) {
    case 1: return p[0];
    case 2: return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    case 3: return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    default:
      return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
  }
}

void append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_valid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = valid_seq_len(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string to_valid_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    int need = 0;
    const size_t k = valid_prefix(s, i, &need);
    if (need > 0 && k == static_cast<size_t>(need)) {
      out.append(s.substr(i, k));
      i += k;
    } else {
      append(out, 0xFFFD);
      i += k ? k : 1;
    }
  }
  return out;
}

size_t incomplete_tail(std::string_view s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const size_t i = n - back;
    const uint8_t b = static_cast<uint8_t>(s[i]);
    if (b >= 0x80 && b <= 0xBF) continue;  // continuation byte: keep looking for the lead
    int need = 0;
    const size_t k = valid_prefix(s, i, &need);
    return (need > 0 && k == back && back < static_cast<size_t>(need)) ? back : 0;
  }
  return 0;
}

uint32_t byte_to_cp(uint8_t b) { return table().to_cp[b]; }

int cp_to_byte(uint32_t cp) {
  if (cp >= table().from_cp.size()) return -1;
  return table().from_cp[cp];
}

std::string bytes_to_bytelevel(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) append(out, byte_to_cp(static_cast<uint8_t>(c)));
  return out;
}

std::string bytelevel_to_bytes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    size_t len = 0;
    const uint32_t cp = decode_at(text, i, &len);
    const int b = (len == valid_seq_len(text, i)) ? cp_to_byte(cp) : -1;
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {
      out.append(text.substr(i, len));
    }
    i += len;
  }
  return out;
}

bool is_ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool is_whitespace_cp(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

}  // namespace anybit::utf8
