// Definitions of weight_cache.h: a small least-recently-used list of packed weights, checked byte for byte.
#include "weight_cache.h"

#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <vector>

namespace fused_s2s::cpu {
namespace {

// The weights' copies plus their packed forms stay under this many bytes (a 2-layer bidirectional H1024 fp32
// LSTM's forward and backward packings: 4 × 2 × 16 MB × 2 = 256 MB would not fit; its H512 twin does).
constexpr int64_t kBudgetBytes = int64_t{128} << 20;

struct Entry {
  const void* data;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
  Packing tag;
  int64_t rows;
  at::Tensor copy;    // the weight's bytes when packed
  at::Tensor packed;
  int64_t bytes() const { return copy.nbytes() + packed.nbytes(); }
};

bool enabled() {
  static const bool on = [] {
    const char* env = std::getenv("FUSED_S2S_WEIGHT_CACHE");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return on;
}

std::mutex mutex;
std::list<Entry> entries;  // most recently used first

bool same_key(const Entry& e, const at::Tensor& w, Packing tag, int64_t rows) {
  return e.data == w.data_ptr() && e.tag == tag && e.rows == rows && e.dtype == w.scalar_type() &&
         w.sizes().vec() == e.sizes && w.strides().vec() == e.strides;
}

}  // namespace

at::Tensor cached_packing(const at::Tensor& w, Packing tag, int64_t rows, const std::function<at::Tensor()>& pack) {
  // A dense tensor's elements are the nbytes bytes from its data pointer (whatever the order of its strides).
  if (!enabled() || !w.is_non_overlapping_and_dense() || w.numel() == 0 || w.nbytes() > kBudgetBytes / 4 ||
      !w.device().is_cpu()) {
    return pack();
  }
  const size_t nbytes = w.nbytes();
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = entries.begin(); it != entries.end(); ++it) {
      if (!same_key(*it, w, tag, rows)) continue;
      if (std::memcmp(it->copy.data_ptr(), w.data_ptr(), nbytes) == 0) {
        entries.splice(entries.begin(), entries, it);
        return it->packed;
      }
      entries.erase(it);  // the weight changed since: repack below
      break;
    }
  }
  at::Tensor packed = pack();
  // Nothing was packed (pack() handed back w or a view of it, e.g. where oneDNN is missing): nothing to keep.
  // A oneDNN tensor has no storage to compare.
  if (packed.is_same(w) || (packed.has_storage() && packed.storage().is_alias_of(w.storage()))) return packed;
  at::Tensor copy = at::empty({static_cast<int64_t>(nbytes)}, w.options().dtype(at::kByte));
  std::memcpy(copy.data_ptr(), w.data_ptr(), nbytes);
  Entry e{w.data_ptr(), w.sizes().vec(), w.strides().vec(), w.scalar_type(), tag, rows, copy, packed};
  std::lock_guard<std::mutex> lock(mutex);
  entries.push_front(std::move(e));
  int64_t total = 0;
  for (auto it = entries.begin(); it != entries.end();) {
    total += it->bytes();
    it = total > kBudgetBytes ? entries.erase(it) : std::next(it);
  }
  return packed;
}

}  // namespace fused_s2s::cpu
