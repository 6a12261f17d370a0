// Native CPU ops that other native ops build on.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <utility>

namespace sbkernels::cpu {

// Per row: loss, importance score ||softmax - onehot||_2 and the Philox uniform tl.rand(seed, (step << 32) +
// row_offset + i), from logits + targets or from given losses (score 0), into loss, score and u (N floats
// each). Reads meta, does not advance it. (The body of sbkernels::row_stats_cpu.)
void row_stats_into(const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
                    const std::optional<at::Tensor>& losses, const at::Tensor& meta, int64_t ignore_index,
                    double label_smoothing, int64_t row_offset, float* loss, float* score, float* u);

// (N,) targets as int64 values and their stride in elements: int64 targets as they are, int32 ones widened
// into this thread's scratch (valid until the next call).
std::pair<const int64_t*, int64_t> targets_int64(const at::Tensor& targets);

}  // namespace sbkernels::cpu
