// Tensors -> GatherParams for the CUDA gather kernel: pointers, strides and the widest copy unit each
// tensor's alignment allows. Shared by the CUDA binding and the host emulation in tests/cuda_emulation.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <initializer_list>
#include <vector>

#include "../gather_rows.h"
#include "gather_rows_kernel.h"

namespace sbkernels {

// 16, 8, 4 or 2 when every quantity (sizes, strides, addresses in bytes) is a multiple of it, else 1.
inline int widest_unit(std::initializer_list<int64_t> quantities) {
  for (int v : {16, 8, 4, 2}) {
    if (std::all_of(quantities.begin(), quantities.end(), [v](int64_t q) { return q % v == 0; })) return v;
  }
  return 1;
}

inline GatherTensor describe_gather_tensor(const at::Tensor& src, const at::Tensor& out) {
  GatherTensor t{};
  t.src = static_cast<const char*>(src.const_data_ptr());
  t.dst = static_cast<char*>(out.data_ptr());
  t.elem_bytes = static_cast<int32_t>(src.element_size());
  t.row_bytes = row_numel(src) * t.elem_bytes;  // src[0] would throw for a source with 0 rows
  t.src_row_stride = src.stride(0) * t.elem_bytes;
  t.contiguous_rows = rows_are_contiguous(src) ? 1 : 0;
  const auto src_addr = reinterpret_cast<int64_t>(t.src);
  const auto dst_addr = reinterpret_cast<int64_t>(t.dst);
  if (t.contiguous_rows) {
    t.vec_bytes = widest_unit({t.row_bytes, t.src_row_stride, src_addr, dst_addr});
  } else {
    TORCH_CHECK(src.dim() - 1 <= kGatherMaxInnerDims, "gather_rows: a non-contiguous source may have at most ",
                kGatherMaxInnerDims, " dims after the first, got ", src.dim() - 1);
    t.vec_bytes = widest_unit({t.elem_bytes, dst_addr});  // only used to zero-fill invalid rows
    t.inner_dims = static_cast<int32_t>(src.dim() - 1);
    for (int64_t d = 1; d < src.dim(); ++d) {
      t.inner_sizes[d - 1] = src.size(d);
      t.inner_strides[d - 1] = src.stride(d);
    }
  }
  return t;
}

// One GatherParams per launch, kGatherMaxTensors tensors at most each; arguments already checked.
inline std::vector<GatherParams> gather_launches(at::TensorList sources, const at::Tensor& indices,
                                                 const at::Tensor& count, at::TensorList outputs,
                                                 const at::Tensor& cursor, int64_t capacity) {
  std::vector<GatherParams> launches;
  const auto num = static_cast<int64_t>(sources.size());
  for (int64_t first = 0; first < num; first += kGatherMaxTensors) {
    GatherParams p{};
    p.num_tensors = static_cast<int32_t>(std::min<int64_t>(kGatherMaxTensors, num - first));
    for (int32_t i = 0; i < p.num_tensors; ++i) {
      p.tensors[i] = describe_gather_tensor(sources[first + i], outputs[first + i]);
    }
    p.count = count.const_data_ptr();
    p.count_is_int64 = count.scalar_type() == at::kLong;
    p.indices = indices.const_data_ptr();
    p.indices_are_int64 = indices.scalar_type() == at::kLong;
    p.num_indices = indices.numel();
    p.source_rows = sources[0].size(0);
    p.capacity = capacity;
    p.cursor = cursor.data_ptr<int64_t>();
    p.chunk_units = kGatherChunkUnits;
    p.last_launch = first + kGatherMaxTensors >= num;
    launches.push_back(p);
  }
  return launches;
}

}  // namespace sbkernels
