// Torch-facing CUDA binding of sbkernels::gather_rows: turns tensors into GatherParams and launches the
// kernel of gather_rows_kernel.cu on the current stream. Built only when torch has CUDA. It includes only
// c10's CUDA headers (which need no CUDA library headers beyond the runtime's), so CI syntax-checks it with
// a CPU-only torch (make cuda-binding-check).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../gather_rows.h"
#include "gather_rows_kernel.h"

namespace sbkernels {
namespace {

int widest_unit(std::initializer_list<int64_t> quantities) {
  for (int v : {16, 8, 4, 2}) {
    if (std::all_of(quantities.begin(), quantities.end(), [v](int64_t q) { return q % v == 0; })) return v;
  }
  return 1;
}

GatherTensor describe(const at::Tensor& src, const at::Tensor& out) {
  GatherTensor t{};
  t.src = static_cast<const char*>(src.const_data_ptr());
  t.dst = static_cast<char*>(out.data_ptr());
  t.elem_bytes = static_cast<int32_t>(src.element_size());
  t.row_bytes = (src.dim() > 1 ? src[0].numel() : 1) * t.elem_bytes;
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

void gather_rows_cuda(at::TensorList sources, const at::Tensor& indices, const at::Tensor& count,
                      at::TensorList outputs, const at::Tensor& cursor) {
  const int64_t capacity = check_gather_args(sources, indices, count, outputs, cursor, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(indices.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto num = static_cast<int64_t>(sources.size());
  for (int64_t first = 0; first < num; first += kGatherMaxTensors) {
    GatherParams p{};
    p.num_tensors = static_cast<int32_t>(std::min<int64_t>(kGatherMaxTensors, num - first));
    for (int32_t i = 0; i < p.num_tensors; ++i) p.tensors[i] = describe(sources[first + i], outputs[first + i]);
    p.count = count.const_data_ptr();
    p.count_is_int64 = count.scalar_type() == at::kLong;
    p.indices = indices.const_data_ptr();
    p.indices_are_int64 = indices.scalar_type() == at::kLong;
    p.num_indices = indices.numel();
    p.source_rows = sources[0].size(0);
    p.capacity = capacity;
    p.cursor = cursor.data_ptr<int64_t>();
    p.chunk_units = gather_chunk_units();
    p.advance_cursor = first + kGatherMaxTensors >= num;
    C10_CUDA_CHECK(launch_gather_rows(p, gather_rows_grid(p, indices.numel()), stream));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(sbkernels, CUDA, m) { m.impl("gather_rows", &gather_rows_cuda); }

}  // namespace sbkernels
