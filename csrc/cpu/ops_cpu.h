// Native CPU ops that other native ops build on.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace sbkernels::cpu {

// Per row: loss, importance score ||softmax - onehot||_2 and the Philox uniform tl.rand(seed, (step << 32) +
// row_offset + i), from logits + targets or from given losses (score 0). Reads meta, does not advance it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> row_stats_cpu(const std::optional<at::Tensor>& logits,
                                                             const std::optional<at::Tensor>& targets,
                                                             const std::optional<at::Tensor>& losses,
                                                             const at::Tensor& meta, int64_t ignore_index,
                                                             double label_smoothing, int64_t row_offset);

}  // namespace sbkernels::cpu
