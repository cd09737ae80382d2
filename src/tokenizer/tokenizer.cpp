#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode_util.h"

namespace anybit {
namespace {

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty() || s.find(from) == std::string::npos) return;
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  out.append(s, pos, std::string::npos);
  s.swap(out);
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "<0xNN>" -> NN, else -1.
int byte_token_value(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  const int hi = hex_digit(t[3]), lo = hex_digit(t[4]);
  return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

// Whitespace test at a character boundary, for added-token lstrip/rstrip.
bool space_at(std::string_view s, size_t i, size_t* len) {
  const uint32_t cp = utf8::decode_at(s, i, len);
  return utf8::is_whitespace_cp(cp) && utf8::valid_seq_len(s, i) == *len;
}

size_t prev_char_start(std::string_view s, size_t i) {
  size_t j = i - 1;
  while (j > 0 && i - j < 4 && (static_cast<uint8_t>(s[j]) & 0xC0) == 0x80) --j;
  return j;
}

// Letters, digits and '_' (any non-ASCII non-space character counts as a letter
// here, which is what matters for single_word added tokens).
bool word_char_before(std::string_view s, size_t i) {
  if (i == 0) return false;
  const size_t j = prev_char_start(s, i);
  size_t len = 0;
  const uint32_t cp = utf8::decode_at(s, j, &len);
  if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) || cp == '_';
  return !utf8::is_whitespace_cp(cp);
}
bool word_char_at(std::string_view s, size_t i) {
  if (i >= s.size()) return false;
  size_t len = 0;
  const uint32_t cp = utf8::decode_at(s, i, &len);
  if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) || cp == '_';
  return !utf8::is_whitespace_cp(cp);
}

}  // namespace

void split_pieces(std::string_view text, const std::vector<std::pair<size_t, size_t>>& matches,
                  SplitBehavior behavior, bool invert, std::vector<std::string>& out) {
  struct Seg {
    size_t b, e;
    bool match;
  };
  std::vector<Seg> segs;
  segs.reserve(matches.size() * 2 + 1);
  size_t pos = 0;
  for (const auto& [b, e] : matches) {
    if (b > pos) segs.push_back({pos, b, invert});
    segs.push_back({b, e, !invert});
    pos = e;
  }
  if (pos < text.size()) segs.push_back({pos, text.size(), invert});

  std::vector<std::pair<size_t, size_t>> kept;
  kept.reserve(segs.size());
  bool prev_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Seg& s : segs)
        if (!s.match) kept.emplace_back(s.b, s.e);
      break;
    case SplitBehavior::kIsolated:
      for (const Seg& s : segs) kept.emplace_back(s.b, s.e);
      break;
    case SplitBehavior::kMergedWithPrevious:
      // A delimiter joins the piece before it unless that piece is a delimiter too.
      for (const Seg& s : segs) {
        if (s.match && !prev_match && !kept.empty()) {
          kept.back().second = s.e;
        } else {
          kept.emplace_back(s.b, s.e);
        }
        prev_match = s.match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (size_t k = segs.size(); k-- > 0;) {
        const Seg& s = segs[k];
        if (s.match && !prev_match && !kept.empty()) {
          kept.back().first = s.b;
        } else {
          kept.emplace_back(s.b, s.e);
        }
        prev_match = s.match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    case SplitBehavior::kContiguous:
      for (size_t k = 0; k < segs.size(); ++k) {
        const Seg& s = segs[k];
        if (k > 0 && s.match == prev_match) {
          kept.back().second = s.e;
        } else {
          kept.emplace_back(s.b, s.e);
        }
        prev_match = s.match;
      }
      break;
  }
  for (const auto& [b, e] : kept)
    if (e > b) out.emplace_back(text.substr(b, e - b));
}

void TokenizerImpl::finalize() {
  const size_t n = id_to_token.size();
  raw.assign(n, std::string());
  special.assign(n, 0);
  std::vector<int8_t> is_added(n, 0);
  for (const AddedToken& t : added) {
    raw[t.id] = t.content;  // added tokens decode to their text, not through the byte map
    special[t.id] = t.special ? 1 : 0;
    is_added[t.id] = 1;
  }
  for (size_t id = 0; id < n; ++id) {
    if (is_added[id]) continue;
    const std::string& tok = id_to_token[id];
    if (decode_byte_fallback) {
      const int b = byte_token_value(tok);
      if (b >= 0) {
        raw[id] = std::string(1, static_cast<char>(b));
        continue;
      }
    }
    std::string s = decode_bytelevel ? utf8::bytelevel_to_bytes(tok) : tok;
    for (const auto& [from, to] : decode_replace) replace_all(s, from, to);
    raw[id] = std::move(s);
  }
  for (auto& v : added_by_byte) v.clear();
  for (size_t k = 0; k < added.size(); ++k)
    if (!added[k].content.empty()) added_by_byte[static_cast<uint8_t>(added[k].content[0])].push_back(static_cast<int32_t>(k));
  for (auto& v : added_by_byte)
    std::stable_sort(v.begin(), v.end(), [&](int32_t a, int32_t b) { return added[a].content.size() > added[b].content.size(); });
}

void TokenizerImpl::normalize(std::string& s) const {
  for (const NormStep& st : normalizers) {
    switch (st.kind) {
      case NormStep::kPrepend:
        if (!s.empty()) s.insert(0, st.a);
        break;
      case NormStep::kReplace:
        if (st.re) {
          std::vector<std::pair<size_t, size_t>> m;
          st.re->find_all(s, m);
          if (m.empty()) break;
          std::string out;
          size_t pos = 0;
          for (const auto& [b, e] : m) {
            out.append(s, pos, b - pos);
            out.append(st.b);
            pos = e;
          }
          out.append(s, pos, std::string::npos);
          s.swap(out);
        } else {
          replace_all(s, st.a, st.b);
        }
        break;
      case NormStep::kStrip: {
        size_t b = 0, e = s.size(), len = 0;
        if (st.left)
          while (b < e && space_at(s, b, &len)) b += len;
        if (st.right)
          while (e > b) {
            const size_t j = prev_char_start(s, e);
            if (!space_at(s, j, &len)) break;
            e = j;
          }
        s = s.substr(b, e - b);
        break;
      }
      case NormStep::kLowercase:
        // ASCII only: enough for the BPE vocabularies this engine targets, which
        // do not lowercase (full Unicode case mapping would need ICU tables).
        for (char& c : s)
          if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        break;
    }
  }
}

void TokenizerImpl::pre_tokenize(std::string text, bool at_start, std::vector<std::string>& pieces) const {
  pieces.clear();
  pieces.push_back(std::move(text));
  std::vector<std::string> next;
  std::vector<std::pair<size_t, size_t>> m;
  for (const PreStep& st : pre) {
    next.clear();
    for (size_t k = 0; k < pieces.size(); ++k) {
      std::string& p = pieces[k];
      switch (st.kind) {
        case PreStep::kByteLevel: {
          if (st.add_prefix_space && (p.empty() || p[0] != ' ')) p.insert(0, 1, ' ');
          const size_t first = next.size();
          if (st.use_regex) {
            m.clear();
            st.re->find_all(p, m);
            split_pieces(p, m, SplitBehavior::kIsolated, false, next);
          } else if (!p.empty()) {
            next.push_back(std::move(p));
          }
          for (size_t j = first; j < next.size(); ++j) next[j] = utf8::bytes_to_bytelevel(next[j]);
          break;
        }
        case PreStep::kSplit: {
          m.clear();
          if (st.re) {
            st.re->find_all(p, m);
          } else if (!st.literal.empty()) {
            for (size_t pos = 0; (pos = p.find(st.literal, pos)) != std::string::npos; pos += st.literal.size())
              m.emplace_back(pos, pos + st.literal.size());
          }
          split_pieces(p, m, st.behavior, st.invert, next);
          break;
        }
        case PreStep::kMetaspace: {
          replace_all(p, " ", st.replacement);
          const bool want = st.prepend == PreStep::kAlways || (st.prepend == PreStep::kFirst && at_start && k == 0);
          if (want && p.compare(0, st.replacement.size(), st.replacement) != 0) p.insert(0, st.replacement);
          if (st.split) {
            m.clear();
            for (size_t pos = 0; (pos = p.find(st.replacement, pos)) != std::string::npos; pos += st.replacement.size())
              m.emplace_back(pos, pos + st.replacement.size());
            split_pieces(p, m, SplitBehavior::kMergedWithNext, false, next);
          } else if (!p.empty()) {
            next.push_back(std::move(p));
          }
          break;
        }
      }
    }
    pieces.swap(next);
  }
}

void TokenizerImpl::encode_segment(std::string_view text, bool at_start, bool after_added,
                                   std::vector<int32_t>& out) const {
  if (use_spm) {
    std::string s;
    if (spm_add_space_prefix && (at_start || after_added)) s = kMetaspace;
    s.append(text);
    replace_all(s, " ", kMetaspace);
    spm.tokenize(s, out);
    return;
  }
  std::string s(text);
  normalize(s);
  if (s.empty()) return;
  thread_local std::vector<std::string> pieces;
  pre_tokenize(std::move(s), at_start, pieces);
  for (const std::string& p : pieces) bpe.tokenize(p, out);
}

void TokenizerImpl::encode(std::string_view text, bool add_special, std::vector<int32_t>& out) const {
  if (add_special) out.insert(out.end(), prefix.begin(), prefix.end());
  // Added tokens are cut out first (leftmost, longest match); the text between
  // them goes through the normalizer, pre-tokenizer and model.
  size_t seg_start = 0;
  bool after_added = false;
  size_t pos = 0;
  while (pos < text.size()) {
    const auto& cands = added_by_byte[static_cast<uint8_t>(text[pos])];
    const AddedToken* hit = nullptr;
    for (int32_t idx : cands) {
      const AddedToken& t = added[idx];
      if (text.size() - pos < t.content.size() || text.compare(pos, t.content.size(), t.content) != 0) continue;
      if (t.single_word && (word_char_before(text, pos) || word_char_at(text, pos + t.content.size()))) continue;
      hit = &t;
      break;
    }
    if (!hit) {
      ++pos;
      continue;
    }
    size_t b = pos, e = pos + hit->content.size(), len = 0;
    if (hit->lstrip)
      while (b > seg_start) {
        const size_t j = prev_char_start(text, b);
        if (!space_at(text, j, &len)) break;
        b = j;
      }
    if (hit->rstrip)
      while (e < text.size() && space_at(text, e, &len)) e += len;
    if (b > seg_start) encode_segment(text.substr(seg_start, b - seg_start), seg_start == 0, after_added, out);
    out.push_back(hit->id);
    after_added = true;
    pos = seg_start = e;
  }
  if (seg_start < text.size()) encode_segment(text.substr(seg_start), seg_start == 0, after_added, out);
  if (add_special) out.insert(out.end(), suffix.begin(), suffix.end());
}

// --- Tokenizer ------------------------------------------------------------------

Tokenizer::Tokenizer() : impl_(std::make_unique<TokenizerImpl>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int32_t> out;
  if (!impl_) return out;
  out.reserve(text.size() / 3 + 4);
  impl_->encode(text, add_special, out);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string s;
  if (!impl_) return s;
  const auto n = static_cast<int32_t>(impl_->raw.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= n || (skip_special && impl_->special[id])) continue;
    s += impl_->raw[id];
  }
  for (size_t k = 0; k < impl_->strip_leading_spaces && !s.empty() && s[0] == ' '; ++k) s.erase(0, 1);
  return utf8::to_valid_lossy(s);
}

std::string Tokenizer::token_bytes(int32_t id, bool skip_special) const {
  if (!impl_ || id < 0 || id >= static_cast<int32_t>(impl_->raw.size())) return {};
  if (skip_special && impl_->special[id]) return {};
  return impl_->raw[id];
}

int32_t Tokenizer::vocab_size() const { return impl_ ? static_cast<int32_t>(impl_->id_to_token.size()) : 0; }
int32_t Tokenizer::bos_id() const { return impl_ ? impl_->bos : -1; }

const std::vector<int32_t>& Tokenizer::eos_ids() const {
  static const std::vector<int32_t> none;
  return impl_ ? impl_->eos : none;
}

bool Tokenizer::is_special(int32_t id) const {
  return impl_ && id >= 0 && id < static_cast<int32_t>(impl_->special.size()) && impl_->special[id];
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
  if (!impl_) return -1;
  auto it = impl_->token_to_id.find(token);
  return it == impl_->token_to_id.end() ? -1 : it->second;
}

const std::string& Tokenizer::chat_template() const {
  static const std::string empty;
  return impl_ ? impl_->chat_template : empty;
}
const std::string& Tokenizer::bos_token() const {
  static const std::string empty;
  return impl_ ? impl_->bos_token : empty;
}
const std::string& Tokenizer::eos_token() const {
  static const std::string empty;
  return impl_ ? impl_->eos_token : empty;
}

// --- StreamDecoder ----------------------------------------------------------------

std::string StreamDecoder::push(int32_t id) {
  pending_ += tok_.token_bytes(id, true);
  const size_t tail = utf8::incomplete_tail(pending_);
  std::string out = utf8::to_valid_lossy(std::string_view(pending_).substr(0, pending_.size() - tail));
  pending_.erase(0, pending_.size() - tail);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = utf8::to_valid_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace anybit
