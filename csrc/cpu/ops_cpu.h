// What the native CPU ops share: the row statistics pass, and the per-row bookkeeping every op ends with
// (validity and error counts, the state's counters, order-preserving compaction).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <utility>

#include "../slots.h"
#include "scratch_cpu.h"

namespace sbkernels::cpu {

constexpr int64_t kElementsPerTask = 1 << 15;  // below this much work a loop runs on the calling thread

// Rows per parallel task: enough logits per task that small batches stay on one thread.
inline int64_t row_grain(int64_t num_classes) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(num_classes, 1));
}

// (N,) targets as int64 values and their stride in elements: int64 targets as they are, int32 ones widened
// into this thread's scratch.
inline std::pair<const int64_t*, int64_t> targets_int64(const at::Tensor& targets) {
  if (targets.scalar_type() == at::kLong) return {targets.const_data_ptr<int64_t>(), targets.stride(0)};
  TORCH_CHECK(targets.scalar_type() == at::kInt, "sbkernels CPU kernels take int64 or int32 targets, got ",
              targets.scalar_type());
  const int64_t n = targets.size(0), stride = targets.stride(0);
  const int32_t* given = targets.const_data_ptr<int32_t>();
  int64_t* wide = scratch<int64_t, Scratch::kTargets>(n);
  for (int64_t i = 0; i < n; ++i) wide[i] = given[i * stride];
  return {wide, 1};
}

// run(static_cast<const T*>(nullptr)) with T the element type of logits of this dtype: float, BFloat16 or
// Half (the ops check the dtype first; anything else raises here too).
template <typename Run>
void visit_logits_dtype(at::ScalarType dtype, Run&& run) {
  switch (dtype) {
    case at::kFloat: return run(static_cast<const float*>(nullptr));
    case at::kBFloat16: return run(static_cast<const c10::BFloat16*>(nullptr));
    case at::kHalf: return run(static_cast<const c10::Half*>(nullptr));
    default:
      TORCH_CHECK(false, "sbkernels CPU kernels take float32, bfloat16 or float16 logits, got ", dtype,
                  "; cast the logits with .float()");
  }
}

// Per row: loss, importance score ||softmax - onehot||_2 and the Philox uniform tl.rand(seed, (step << 32) +
// row_offset + i), from logits + targets or from given losses (score 0), into loss, score and u (N floats
// each; score may be nullptr: not computed), and the row flags of slots.h into flags (all valid for
// losses). Reads meta, does not advance it.
// (The body of sbkernels::row_stats_cpu.)
void row_stats_into(const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
                    const std::optional<at::Tensor>& losses, const at::Tensor& meta, int64_t ignore_index,
                    double label_smoothing, int64_t row_offset, float* loss, float* score, float* u, int8_t* flags);

// Rows that may be selected (a kRowValid flag and a finite loss) and the rows the state counts as errors.
struct RowTally {
  int64_t valid = 0, nonfinite = 0, bad_targets = 0;
};
// The tally of n rows; valid[i] (1 or 0) for each row.
inline RowTally tally_rows(const int8_t* flags, const float* loss, int64_t n, uint8_t* valid) {
  RowTally tally;
  for (int64_t i = 0; i < n; ++i) {
    const bool usable = flags[i] == kRowValid, finite = std::isfinite(loss[i]);
    valid[i] = usable && finite;
    tally.valid += valid[i];
    tally.nonfinite += usable && !finite;
    tally.bad_targets += flags[i] == kRowBadTarget;
  }
  return tally;
}

// One call's update of SelectorState.meta (sbkernels.rows.advance_counters): step + 1, the error counts,
// and the losses pushed into the history.
inline void advance_counters(int64_t* meta, const RowTally& tally, int64_t pushed) {
  meta[kMetaPushed] += pushed;
  meta[kMetaStep] += 1;
  meta[kMetaNonfinite] += tally.nonfinite;
  meta[kMetaBadTargets] += tally.bad_targets;
}

// Order-preserving compaction (sbkernels.rows.compact): out[0, count) = the rows i with chosen[i] != 0 in
// ascending order, -1 after; returns count. out may be chosen itself: row i lands at a slot <= i.
template <typename Chosen>
int64_t compact_rows(const Chosen* chosen, int64_t n, int64_t* out) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (chosen[i]) out[count++] = i;
  }
  std::fill(out + count, out + n, int64_t{-1});
  return count;
}

}  // namespace sbkernels::cpu
