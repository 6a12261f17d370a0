// Argument checks of the native CPU ops (SPEC section 11). Every registered op runs them before it touches
// memory: presence, dtype, device, shape and contiguity where a kernel assumes it, the lengths of the state
// tensors, the ranges of the scalars, and every value a kernel uses as a loop bound or an index. A failed
// check raises a Python exception (c10::Error -> RuntimeError) that names the op, the argument, what it got
// and what it needs. The Python wrappers check first with their own messages; these guard direct calls of
// torch.ops.sbkernels.*.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "../slots.h"

namespace sbkernels::cpu {

// Philox counters: row offsets live in the low 32 bits of the offset (step << 32) + row.
constexpr int64_t kMaxRowOffset = int64_t{1} << 32;

inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got one on ", t.device(),
              "; the CUDA path is the Triton backend");
}

// (N, C) logits with unit column stride, float32 / bfloat16 / float16, and (N,) int64 / int32 targets.
// Returns N.
inline int64_t check_logits_targets(const at::Tensor& logits, const std::optional<at::Tensor>& targets,
                                    const char* op) {
  check_cpu(logits, op, "logits");
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be 2-D (N, C), got shape ", logits.sizes());
  TORCH_CHECK(logits.size(1) >= 1 && logits.size(1) < (int64_t{1} << 31), op,
              ": logits need 1 <= C < 2**31 classes, got C = ", logits.size(1));
  TORCH_CHECK(logits.stride(1) == 1 || logits.size(0) == 0, op, ": logits need unit stride along C, got strides ",
              logits.strides(), "; pass logits.contiguous()");
  TORCH_CHECK(logits.stride(0) >= 0, op, ": logits need a non-negative row stride, got ", logits.stride(0));
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": logits must be float32, bfloat16 or float16, got ", dtype, "; cast with .float()");
  TORCH_CHECK(targets.has_value(), op, ": logits need targets (N,), got None");
  check_cpu(*targets, op, "targets");
  TORCH_CHECK(targets->dim() == 1 && targets->size(0) == logits.size(0), op, ": targets must have shape (",
              logits.size(0), ",) to match logits, got ", targets->sizes());
  TORCH_CHECK(targets->scalar_type() == at::kLong || targets->scalar_type() == at::kInt, op,
              ": targets must be int64 or int32, got ", targets->scalar_type());
  TORCH_CHECK(targets->stride(0) >= 0, op, ": targets need a non-negative stride, got ", targets->stride(0));
  return logits.size(0);
}

// (N,) losses of a floating dtype. Returns N.
inline int64_t check_losses(const at::Tensor& losses, const char* op) {
  check_cpu(losses, op, "losses");
  TORCH_CHECK(losses.dim() == 1, op, ": losses must be 1-D (N,), got shape ", losses.sizes());
  TORCH_CHECK(at::isFloatingType(losses.scalar_type()), op, ": losses must be a floating tensor, got ",
              losses.scalar_type());
  return losses.size(0);
}

// Exactly one of logits (with targets) and losses (without). Returns N.
inline int64_t check_source(const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
                            const std::optional<at::Tensor>& losses, const char* op) {
  TORCH_CHECK(logits.has_value() != losses.has_value(), op, ": pass logits (with targets) or losses, not ",
              logits.has_value() ? "both" : "neither");
  if (logits.has_value()) return check_logits_targets(*logits, targets, op);
  TORCH_CHECK(!targets.has_value(), op, ": targets go with logits; losses take none");
  return check_losses(*losses, op);
}

// SelectorState.meta: a contiguous int64 (META_SIZE,) CPU tensor whose counters a run could have produced.
inline void check_meta(const at::Tensor& meta, const char* op) {
  check_cpu(meta, op, "meta");
  TORCH_CHECK(meta.scalar_type() == at::kLong && meta.dim() == 1 && meta.size(0) == kMetaSize && meta.is_contiguous(),
              op, ": meta must be a contiguous int64 tensor of shape (", kMetaSize, ",) (SelectorState.meta), got ",
              meta.scalar_type(), " of shape ", meta.sizes());
  const int64_t* m = meta.const_data_ptr<int64_t>();
  for (const int64_t slot : {kMetaPushed, kMetaStep, kMetaNonfinite, kMetaBadTargets}) {
    TORCH_CHECK(m[slot] >= 0 && m[slot] <= kMaxCounter, op, ": meta[", slot, "] = ", m[slot],
                " is no counter a run could reach (need 0 <= value <= 2**62); reload a valid state_dict");
  }
}

// SelectorState.history: a contiguous float32 (R,) CPU tensor, R >= 1.
inline void check_history(const at::Tensor& history, const char* op) {
  check_cpu(history, op, "history");
  TORCH_CHECK(
      history.scalar_type() == at::kFloat && history.dim() == 1 && history.size(0) >= 1 && history.is_contiguous(), op,
      ": history must be a contiguous float32 tensor of shape (R,) with R >= 1 (SelectorState.history), "
      "got ",
      history.scalar_type(), " of shape ", history.sizes());
}

inline void check_range(double value, double low, double high, bool high_open, const char* op, const char* name) {
  const bool ok = std::isfinite(value) && value >= low && (high_open ? value < high : value <= high);
  TORCH_CHECK(ok, op, ": ", name, " must be in [", low, ", ", high, high_open ? ")" : "]", ", got ", value);
}

// The first Philox row counter of a call: row_offset + N must stay below 2**32.
inline void check_row_offset(int64_t row_offset, int64_t n, const char* op) {
  TORCH_CHECK(row_offset >= 0 && row_offset <= kMaxRowOffset - n, op, ": row_offset must be in [0, 2**32 - N] (N = ", n,
              "), got ", row_offset);
}

}  // namespace sbkernels::cpu
