// Torch-facing CUDA binding of sbkernels::gather_rows: launches the kernel of gather_rows_kernel.cu on the
// current stream, once per kGatherMaxTensors tensors. Built only when torch has CUDA. It includes only c10's
// CUDA headers (which need no CUDA library headers beyond the runtime's), so CI syntax-checks it with a
// CPU-only torch (make cuda-binding-check).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../gather_rows.h"
#include "gather_rows_kernel.h"
#include "gather_rows_params.h"

namespace sbkernels {
namespace {

void gather_rows_cuda(at::TensorList sources, const at::Tensor& indices, const at::Tensor& count,
                      at::TensorList outputs, const at::Tensor& cursor) {
  const int64_t capacity = check_gather_args(sources, indices, count, outputs, cursor, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(indices.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (const GatherParams& p : gather_launches(sources, indices, count, outputs, cursor, capacity)) {
    C10_CUDA_CHECK(launch_gather_rows(p, gather_rows_grid(p, indices.numel()), stream));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(sbkernels, CUDA, m) { m.impl("gather_rows", &gather_rows_cuda); }

}  // namespace sbkernels
