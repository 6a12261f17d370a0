// The CUDA gather kernel's own source (csrc/cuda/gather_rows_device.cuh) and its binding's parameter code
// (gather_rows_params.h), run on the host so that CI, which has no GPU, tests them against index_select.
//
// Each block runs its threads one after another, thread 0 last; blocks run one after another. That is one
// legal schedule of the kernel: every thread's copies and its read of cursor[0] come before thread 0 takes
// the block's ticket, as __syncthreads guarantees on the GPU, and the last block to run takes the last
// ticket. What this cannot show: other schedules' memory ordering, misaligned-access faults, speed.
#include <cuda_runtime_api.h>  // before the stand-ins: dim3/uint3, and empty __device__/__global__ for g++
#include <torch/library.h>

#include <algorithm>

// Host stand-ins for the CUDA built-ins the kernel uses.
#define __launch_bounds__(...)
namespace {
uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;
}  // namespace
inline void __syncthreads() {}
inline void __threadfence() {}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  *address = old + value;
  return old;
}
using std::max;
using std::min;

#include "../../../csrc/cuda/gather_rows_device.cuh"
#include "../../../csrc/cuda/gather_rows_params.h"

namespace sbkernels {
namespace {

constexpr int kEmulatedSms = 132;  // an H100's multiprocessors, for the default grid

void launch_on_host(const GatherParams& p, int grid_x) {
  gridDim = dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(p.num_tensors), 1);
  blockDim = dim3(kGatherThreads, 1, 1);
  for (unsigned y = 0; y < gridDim.y; ++y) {
    for (unsigned x = 0; x < gridDim.x; ++x) {
      blockIdx.x = x;
      blockIdx.y = y;
      blockIdx.z = 0;
      for (int thread = kGatherThreads - 1; thread >= 0; --thread) {
        threadIdx.x = static_cast<unsigned>(thread);
        gather_rows_kernel(p);
      }
    }
  }
}

// sbkernels::gather_rows as the CUDA binding runs it, on CPU tensors. grid <= 0: the binding's grid size.
void gather_rows_emulated(at::TensorList sources, const at::Tensor& indices, const at::Tensor& count,
                          at::TensorList outputs, const at::Tensor& cursor, int64_t grid) {
  const int64_t capacity = check_gather_args(sources, indices, count, outputs, cursor, c10::kCPU);
  for (const GatherParams& p : gather_launches(sources, indices, count, outputs, cursor, capacity)) {
    const int blocks = grid > 0 ? static_cast<int>(grid) : gather_grid_blocks(p, indices.numel(), kEmulatedSms);
    launch_on_host(p, blocks);
  }
}

// [vec_bytes, contiguous_rows, row units, chunks per row] the binding chooses for gathering src into out.
std::vector<int64_t> copy_plan(const at::Tensor& src, const at::Tensor& out) {
  const GatherTensor t = describe_gather_tensor(src, out);
  const int64_t units = gather_row_units(t);
  return {t.vec_bytes, t.contiguous_rows, units, (units + kGatherChunkUnits - 1) / kGatherChunkUnits};
}

}  // namespace

TORCH_LIBRARY(sbkernels_emulated, m) {
  m.def(
      "gather_rows(Tensor[] sources, Tensor indices, Tensor count, Tensor(a!)[] outputs, Tensor(b!) cursor, "
      "int grid=0) -> ()");
  m.def("copy_plan(Tensor src, Tensor out) -> int[]");
  m.impl("gather_rows", c10::DispatchKey::CPU, &gather_rows_emulated);
  m.impl("copy_plan", c10::DispatchKey::CPU, &copy_plan);
}

}  // namespace sbkernels
