// Native CPU ops that other native ops build on.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace sbkernels::cpu {

// Per row: loss, importance score ||softmax - onehot||_2 and the Philox uniform tl.rand(seed, (step << 32) +
// row_offset + i), from logits + targets or from given losses (score 0), into loss, score and u (N floats
// each; score may be nullptr: not computed), and the row flags of slots.h into flags (all valid for
// losses). Reads meta, does not advance it.
// (The body of sbkernels::row_stats_cpu.)
void row_stats_into(const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
                    const std::optional<at::Tensor>& losses, const at::Tensor& meta, int64_t ignore_index,
                    double label_smoothing, int64_t row_offset, float* loss, float* score, float* u, int8_t* flags);

}  // namespace sbkernels::cpu
