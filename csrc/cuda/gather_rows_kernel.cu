// Host side of the CUDA gather kernel (the kernel itself is in gather_rows_device.cuh). Needs only CUDA
// headers, so CI compiles it without a GPU.
#include <cuda_runtime.h>

#include "gather_rows_device.cuh"
#include "gather_rows_kernel.h"

namespace sbkernels {

int gather_rows_grid(const GatherParams& params, int64_t max_rows) {
  int device = 0;
  int sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) {
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  return gather_grid_blocks(params, max_rows, sms);
}

cudaError_t launch_gather_rows(const GatherParams& params, int grid_x, cudaStream_t stream) {
  if (params.num_tensors < 1 || params.num_tensors > kGatherMaxTensors) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(params.num_tensors));
  gather_rows_kernel<<<grid, kGatherThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace sbkernels
