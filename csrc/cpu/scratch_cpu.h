// Per-thread scratch buffers of the native CPU ops, reused from call to call: once they have grown to the
// largest batch seen, a call allocates nothing but its outputs. Each use site names its own slot, so two
// buffers of one type can be live at once.
#pragma once

#include <cstdint>
#include <vector>

namespace sbkernels::cpu {

enum class Scratch {
  kFlags,
  kTargets,
  kValid,
  kScore,
  kUniform,
  kKeys,
  kOrder,
  kChosen,
  kWork,
  kWeight,
  kCdf,
  kTotal,
  kSorted
};

// n elements of T for this thread's slot S (contents unspecified; valid until the slot's next use).
template <typename T, Scratch S>
T* scratch(int64_t n) {
  thread_local std::vector<T> buffer;
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

}  // namespace sbkernels::cpu
