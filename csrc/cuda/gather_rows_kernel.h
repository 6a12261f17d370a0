// Plain-C++ interface of the CUDA gather kernel: no torch headers, so nvcc compiles it without torch.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "../slots.h"

namespace sbkernels {

constexpr int kGatherMaxTensors = 8;    // tensors per launch; the binding splits longer lists
constexpr int kGatherMaxInnerDims = 6;  // trailing dims of a non-contiguous source row
constexpr int kGatherThreads = 256;     // threads per block
constexpr int64_t kGatherChunkUnits = int64_t{kGatherThreads} * 4;  // copy units per work item

struct GatherTensor {
  const char* src;
  char* dst;               // row 0 of the output
  int64_t src_row_stride;  // bytes between source rows
  int64_t row_bytes;       // bytes of one output row (contiguous)
  int32_t elem_bytes;
  int32_t vec_bytes;        // 16, 8, 4, 2 or 1: widest copy unit every row start and size allows
  int32_t contiguous_rows;  // 1: a source row is one contiguous run of row_bytes
  int32_t inner_dims;       // otherwise: the row's trailing dims, innermost last
  int64_t inner_sizes[kGatherMaxInnerDims];
  int64_t inner_strides[kGatherMaxInnerDims];  // in elements
};

struct GatherParams {
  GatherTensor tensors[kGatherMaxTensors];
  int32_t num_tensors;
  int32_t count_is_int64;
  const void* count;    // 0-d int32/int64 on the device: rows requested
  const void* indices;  // (num_indices,) int64 or int32
  int32_t indices_are_int64;
  int64_t num_indices;
  int64_t source_rows;  // N: indices outside [0, N) are zero-filled and counted
  int64_t capacity;     // M: output rows
  int64_t* cursor;      // kCursor* slots (slots.h)
  int64_t chunk_units;  // copy units per work item (kGatherChunkUnits)
  int32_t last_launch;  // 1 for the launch that advances the cursor and counts invalid indices; the
                        // others (tensors beyond the first kGatherMaxTensors) only copy
};

// Copy units of one row of `t`: vec_bytes each when its rows are contiguous, elements otherwise.
__host__ __device__ inline int64_t gather_row_units(const GatherTensor& t) {
  return t.contiguous_rows ? t.row_bytes / t.vec_bytes : t.row_bytes / t.elem_bytes;
}

// Blocks worth launching for up to `max_rows` rows on a GPU with `sms` multiprocessors: one per work item
// (row, chunk) of the widest tensor, at most 8 per multiprocessor (the kernel strides over the rest).
inline int gather_grid_blocks(const GatherParams& params, int64_t max_rows, int sms) {
  int64_t max_chunks = 1;
  for (int i = 0; i < params.num_tensors; ++i) {
    const int64_t units = gather_row_units(params.tensors[i]);
    max_chunks = std::max(max_chunks, (units + params.chunk_units - 1) / params.chunk_units);
  }
  const int64_t work = std::max<int64_t>(1, max_rows * max_chunks);
  return static_cast<int>(std::min<int64_t>(work, int64_t{sms} * 8));
}

// gather_grid_blocks for the current device.
int gather_rows_grid(const GatherParams& params, int64_t max_rows);

// Launches the gather on `stream`; returns the launch error, if any.
cudaError_t launch_gather_rows(const GatherParams& params, int grid_x, cudaStream_t stream);

}  // namespace sbkernels
