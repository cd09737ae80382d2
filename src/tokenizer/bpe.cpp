#include "tokenizer/bpe.h"

#include <algorithm>
#include <queue>

#include <fmt/format.h>

#include "core/error.h"
#include "tokenizer/unicode_util.h"

namespace anybit {
namespace {

// Words longer than this are tokenized without caching: they are rare and would
// only bloat the cache (e.g. whole un-pre-tokenized SentencePiece segments).
constexpr size_t kMaxCachedWord = 256;
constexpr size_t kMaxCacheEntries = 1 << 18;

struct Sym {
  int32_t id;
  int32_t prev;
  int32_t next;
};

// One candidate merge of the symbol at `pos` with its right neighbour. Stale
// entries are detected on pop by re-checking both ids.
struct Cand {
  int32_t rank;
  int32_t pos;
  int32_t left;
  int32_t right;
  int32_t merged;
};
struct CandAfter {
  bool operator()(const Cand& a, const Cand& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  }
};

std::array<int32_t, 256> find_byte_tokens(const StrIdMap& vocab, bool* all) {
  std::array<int32_t, 256> ids{};
  *all = true;
  for (int b = 0; b < 256; ++b) {
    auto it = vocab.find(fmt::format("<0x{:02X}>", b));
    ids[b] = it == vocab.end() ? -1 : it->second;
    if (ids[b] < 0) *all = false;
  }
  return ids;
}

}  // namespace

void BpeModel::build(const StrIdMap& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                     const BpeOptions& opt, const std::string& origin) {
  vocab_ = vocab;
  opt_ = opt;
  merge_list_ = merges;
  for (const auto& [text, id] : vocab_) {
    size_t len = 0;
    const uint32_t cp = utf8::decode_at(text, 0, &len);
    if (!text.empty() && len == text.size() && utf8::valid_seq_len(text, 0) == len) char_ids_[cp] = id;
  }
  byte_ids_ = find_byte_tokens(vocab_, &have_all_bytes_);
  merges_.reserve(merges.size() * 2);
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab_.find(a);
    auto ib = vocab_.find(b);
    if (ia == vocab_.end() || ib == vocab_.end())
      fail("{}: merge #{} '{} {}' names a token absent from the vocab", origin, rank, a, b);
    joined.assign(a).append(b);
    auto im = vocab_.find(joined);
    if (im == vocab_.end())
      fail("{}: merge #{} '{} {}' produces '{}', which is absent from the vocab", origin, rank, a, b, joined);
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) |
                         static_cast<uint32_t>(ib->second);
    // A repeated pair keeps its first (best) rank, as HF's map construction does.
    merges_.try_emplace(key, static_cast<int32_t>(rank), im->second);
  }
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  const bool cacheable = word.size() <= kMaxCachedWord;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  tokenize_uncached(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.try_emplace(std::string(word), out.begin() + static_cast<std::ptrdiff_t>(start), out.end());
  }
}

void BpeModel::tokenize_uncached(std::string_view word, std::vector<int32_t>& out) const {
  if (opt_.ignore_merges) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  thread_local std::vector<Sym> syms;
  syms.clear();
  bool prev_unk = false;
  for (size_t i = 0; i < word.size();) {
    size_t len = 0;
    const uint32_t cp = utf8::decode_at(word, i, &len);
    const bool valid = utf8::valid_seq_len(word, i) == len;
    auto it = valid ? char_ids_.find(cp) : char_ids_.end();
    if (it != char_ids_.end()) {
      syms.push_back({it->second, 0, 0});
      prev_unk = false;
    } else if (opt_.byte_fallback && (have_all_bytes_ || [&] {
                 for (size_t k = 0; k < len; ++k)
                   if (byte_ids_[static_cast<uint8_t>(word[i + k])] < 0) return false;
                 return true;
               }())) {
      for (size_t k = 0; k < len; ++k) syms.push_back({byte_ids_[static_cast<uint8_t>(word[i + k])], 0, 0});
      prev_unk = false;
    } else if (opt_.unk_id >= 0) {
      if (!(opt_.fuse_unk && prev_unk)) syms.push_back({opt_.unk_id, 0, 0});
      prev_unk = true;
    }
    i += len;
  }
  const int32_t n = static_cast<int32_t>(syms.size());
  for (int32_t i = 0; i < n; ++i) {
    syms[i].prev = i - 1;
    syms[i].next = i + 1 < n ? i + 1 : -1;
  }
  thread_local std::vector<Cand> heap;  // a binary heap via push_heap/pop_heap, reused across calls
  heap.clear();
  auto consider = [&](int32_t pos) {
    const int32_t nx = syms[pos].next;
    if (nx < 0) return;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(syms[pos].id)) << 32) |
                         static_cast<uint32_t>(syms[nx].id);
    auto it = merges_.find(key);
    if (it == merges_.end()) return;
    heap.push_back({it->second.first, pos, syms[pos].id, syms[nx].id, it->second.second});
    std::push_heap(heap.begin(), heap.end(), CandAfter{});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), CandAfter{});
    const Cand c = heap.back();
    heap.pop_back();
    Sym& left = syms[c.pos];
    if (left.id != c.left || left.next < 0) continue;
    Sym& right = syms[left.next];
    if (right.id != c.right) continue;
    left.id = c.merged;
    const int32_t after = right.next;
    right.id = -1;  // dead
    left.next = after;
    if (after >= 0) syms[after].prev = c.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(c.pos);
  }
  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

void SpmModel::build(const StrIdMap& vocab, const std::vector<float>& scores, int32_t unk_id) {
  vocab_ = vocab;
  scores_ = scores;
  unk_id_ = unk_id;
  bool all = false;
  byte_ids_ = find_byte_tokens(vocab_, &all);
}

namespace {
struct SpmSym {
  size_t start;
  size_t len;
  int32_t prev;
  int32_t next;
};
struct SpmCand {
  float score;
  int32_t left;
  int32_t right;
  size_t size;
};
struct SpmCandAfter {
  bool operator()(const SpmCand& a, const SpmCand& b) const {
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  }
};
}  // namespace

void SpmModel::tokenize(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<SpmSym> syms;
  for (size_t i = 0; i < text.size();) {
    const size_t len = utf8::char_len(text, i);
    const int32_t idx = static_cast<int32_t>(syms.size());
    syms.push_back({i, len, idx - 1, -1});
    if (idx > 0) syms[idx - 1].next = idx;
    i += len;
  }
  std::priority_queue<SpmCand, std::vector<SpmCand>, SpmCandAfter> heap;
  auto consider = [&](int32_t l) {
    if (l < 0) return;
    const int32_t r = syms[l].next;
    if (r < 0) return;
    const std::string_view joined = text.substr(syms[l].start, syms[l].len + syms[r].len);
    auto it = vocab_.find(joined);
    if (it == vocab_.end()) return;
    const size_t id = static_cast<size_t>(it->second);
    const float score = id < scores_.size() ? scores_[id] : 0.0f;
    heap.push({score, l, r, joined.size()});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) consider(i);
  while (!heap.empty()) {
    const SpmCand c = heap.top();
    heap.pop();
    SpmSym& l = syms[c.left];
    SpmSym& r = syms[c.right];
    if (l.len == 0 || r.len == 0 || l.next != c.right || l.len + r.len != c.size) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = c.left;
    consider(l.prev);
    consider(c.left);
  }
  for (int32_t i = syms.empty() ? -1 : 0; i >= 0; i = syms[i].next) {
    const std::string_view piece = text.substr(syms[i].start, syms[i].len);
    auto it = vocab_.find(piece);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      continue;
    }
    // Left unmerged, so a single character: its bytes, or one unk as SentencePiece does.
    const bool bytes_ok = std::all_of(piece.begin(), piece.end(),
                                      [&](char ch) { return byte_ids_[static_cast<uint8_t>(ch)] >= 0; });
    if (bytes_ok) {
      for (char ch : piece) out.push_back(byte_ids_[static_cast<uint8_t>(ch)]);
    } else if (unk_id_ >= 0) {
      out.push_back(unk_id_);
    }
  }
}

}  // namespace anybit
