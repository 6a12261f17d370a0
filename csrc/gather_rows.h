// Argument checks shared by the CPU and CUDA implementations of sbkernels::gather_rows.
#pragma once

#include <ATen/ATen.h>

#include "slots.h"

namespace sbkernels {

// True when each row (all dims after the first) is one contiguous run of memory.
inline bool rows_are_contiguous(const at::Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// Elements of one row (all dims after the first); defined for a tensor with zero rows too.
inline int64_t row_numel(const at::Tensor& t) { return c10::multiply_integers(t.sizes().slice(1)); }

// Checks shapes, dtypes and devices (metadata only, no sync). Returns the outputs' common capacity.
inline int64_t check_gather_args(at::TensorList sources, const at::Tensor& indices, const at::Tensor& count,
                                 at::TensorList outputs, const at::Tensor& cursor, c10::DeviceType device) {
  TORCH_CHECK(!sources.empty(), "gather_rows: sources must hold at least one tensor");
  TORCH_CHECK(sources.size() == outputs.size(), "gather_rows: got ", sources.size(), " sources but ", outputs.size(),
              " outputs");
  TORCH_CHECK(indices.dim() == 1, "gather_rows: indices must be 1-D, got ", indices.dim(), " dims");
  TORCH_CHECK(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt,
              "gather_rows: indices must be int64 or int32, got ", indices.scalar_type());
  TORCH_CHECK(count.dim() == 0 && (count.scalar_type() == at::kInt || count.scalar_type() == at::kLong),
              "gather_rows: count must be a 0-d int32 or int64 tensor");
  TORCH_CHECK(
      cursor.dim() == 1 && cursor.size(0) == kCursorSize && cursor.scalar_type() == at::kLong && cursor.is_contiguous(),
      "gather_rows: cursor must be a contiguous int64 tensor of shape (4,)");
  for (const auto* t : {&indices, &count, &cursor}) {
    TORCH_CHECK(t->device() == indices.device() && t->device().type() == device,
                "gather_rows: indices, count and cursor must be on one ", c10::DeviceTypeName(device), " device");
  }
  const int64_t capacity = outputs[0].dim() > 0 ? outputs[0].size(0) : -1;
  const int64_t rows = sources[0].dim() > 0 ? sources[0].size(0) : -1;
  for (size_t i = 0; i < sources.size(); ++i) {
    const auto& src = sources[i];
    const auto& out = outputs[i];
    TORCH_CHECK(src.dim() >= 1 && out.dim() == src.dim(), "gather_rows: sources[", i, "] and outputs[", i,
                "] need a leading row dim and the same number of dims");
    TORCH_CHECK(src.size(0) == rows, "gather_rows: every source needs the same leading dim (", rows, "), sources[", i,
                "] has ", src.size(0));
    TORCH_CHECK(out.size(0) == capacity, "gather_rows: every output needs the same leading dim (", capacity,
                "), outputs[", i, "] has ", out.size(0));
    TORCH_CHECK(src.sizes().slice(1) == out.sizes().slice(1), "gather_rows: sources[", i, "] rows have shape ",
                src.sizes().slice(1), " but outputs[", i, "] rows have shape ", out.sizes().slice(1));
    TORCH_CHECK(src.scalar_type() == out.scalar_type(), "gather_rows: sources[", i, "] is ", src.scalar_type(),
                " but outputs[", i, "] is ", out.scalar_type());
    TORCH_CHECK(out.is_contiguous(), "gather_rows: outputs[", i, "] must be contiguous");
    TORCH_CHECK(src.device().type() == device && out.device() == src.device(), "gather_rows: sources[", i,
                "] and outputs[", i, "] must be on ", c10::DeviceTypeName(device));
    TORCH_CHECK(src.device() == indices.device(), "gather_rows: sources[", i, "] is on ", src.device(),
                " but indices are on ", indices.device(), "; put every tensor on one device");
  }
  return capacity;
}

}  // namespace sbkernels
