// UTF-8 helpers shared by the tokenizers: character iteration, the GPT-2
// byte<->character table and lossy/streaming validation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace anybit::utf8 {

// Length of the well-formed UTF-8 sequence starting at s[i], or 0 when the bytes
// there are not a complete, well-formed character (truncated or invalid).
size_t valid_seq_len(std::string_view s, size_t i);

// Length of the character starting at s[i] for iteration purposes: the length of
// a well-formed sequence, else 1 (an invalid byte is treated as one "character").
inline size_t char_len(std::string_view s, size_t i) {
  size_t n = valid_seq_len(s, i);
  return n ? n : 1;
}

// Decodes the character at s[i] (U+FFFD for an invalid byte); *len gets its length.
uint32_t decode_at(std::string_view s, size_t i, size_t* len);
void append(std::string& out, uint32_t cp);

bool is_valid(std::string_view s);
// Replaces every invalid byte sequence with U+FFFD (one per maximal invalid subpart).
std::string to_valid_lossy(std::string_view s);

// How many bytes at the end of `s` are the start of a character that could still be
// completed by more bytes (0..3). Everything before that point may be emitted.
size_t incomplete_tail(std::string_view s);

// GPT-2's reversible byte -> printable character map used by ByteLevel BPE.
uint32_t byte_to_cp(uint8_t b);
// -1 when cp is not one of the 256 byte characters.
int cp_to_byte(uint32_t cp);
// Maps each byte of `bytes` to its byte-level character (UTF-8 encoded).
std::string bytes_to_bytelevel(std::string_view bytes);
// Inverse; characters outside the table are kept as their UTF-8 bytes.
std::string bytelevel_to_bytes(std::string_view text);

bool is_ascii_space(char c);
// Unicode White_Space (the set HF's Oniguruma \s uses).
bool is_whitespace_cp(uint32_t cp);

}  // namespace anybit::utf8
