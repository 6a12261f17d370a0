// Plain-C++ interface of the CUDA gather kernel: no torch headers, so nvcc compiles it without torch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sbkernels {

constexpr int kGatherMaxTensors = 8;   // tensors per launch; the binding splits longer lists
constexpr int kGatherMaxInnerDims = 6;  // trailing dims of a non-contiguous source row

struct GatherTensor {
  const char* src;
  char* dst;                  // row 0 of the output
  int64_t src_row_stride;     // bytes between source rows
  int64_t row_bytes;          // bytes of one output row (contiguous)
  int32_t elem_bytes;
  int32_t vec_bytes;          // 16, 8, 4, 2 or 1: widest copy unit every row start and size allows
  int32_t contiguous_rows;    // 1: a source row is one contiguous run of row_bytes
  int32_t inner_dims;         // otherwise: the row's trailing dims, innermost last
  int64_t inner_sizes[kGatherMaxInnerDims];
  int64_t inner_strides[kGatherMaxInnerDims];  // in elements
};

struct GatherParams {
  GatherTensor tensors[kGatherMaxTensors];
  int32_t num_tensors;
  int32_t count_is_int64;
  const void* count;          // 0-d int32/int64 on the device: rows requested
  const void* indices;        // (num_indices,) int64 or int32
  int32_t indices_are_int64;
  int64_t num_indices;
  int64_t source_rows;        // N: indices outside [0, N) are zero-filled and counted
  int64_t capacity;           // M: output rows
  int64_t* cursor;            // [offset, overflow, invalid, ticket]
  int64_t chunk_units;        // copy units per work item: gather_chunk_units()
  int32_t advance_cursor;     // 0 for all but the last launch when the tensors span several launches
};

// Launches the gather on `stream`; returns the launch error, if any.
cudaError_t launch_gather_rows(const GatherParams& params, int grid_x, cudaStream_t stream);

// Blocks worth launching for up to `max_rows` rows of the given tensors on the current device.
int gather_rows_grid(const GatherParams& params, int64_t max_rows);

// Copy units (vec_bytes each, or elements for strided rows) one work item covers.
int64_t gather_chunk_units();

}  // namespace sbkernels
