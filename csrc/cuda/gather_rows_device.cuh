// Device code of sbkernels::gather_rows. Included by gather_rows_kernel.cu and, with a host stand-in for the
// CUDA built-ins, by tests/cuda_emulation, which runs this very source on the CPU in CI.
//
// Work item = (row r, chunk c) of one tensor (blockIdx.y); a block copies chunk c of output row
// offset + r from source row indices[r] in units of vec_bytes (16-byte vectors where alignment allows).
// Every block reads count and the cursor's offset first; the block that takes the last ticket advances
// the cursor after all others are done, so the launch needs no host sync and replays in a CUDA graph.
#pragma once

#include "gather_rows_kernel.h"

namespace sbkernels {
namespace {

template <int VEC>
struct alignas(VEC) Unit {
  unsigned char bytes[VEC];
};

template <int VEC>
__device__ void copy_units(const char* src, char* dst, int64_t begin, int64_t end) {
  const auto* s = reinterpret_cast<const Unit<VEC>*>(src);
  auto* d = reinterpret_cast<Unit<VEC>*>(dst);
  for (int64_t u = begin + threadIdx.x; u < end; u += blockDim.x) d[u] = s[u];
}

template <int VEC>
__device__ void zero_units(char* dst, int64_t begin, int64_t end) {
  auto* d = reinterpret_cast<Unit<VEC>*>(dst);
  Unit<VEC> zero{};
  for (int64_t u = begin + threadIdx.x; u < end; u += blockDim.x) d[u] = zero;
}

__device__ void copy_run(const GatherTensor& t, const char* src, char* dst, int64_t begin, int64_t end) {
  switch (t.vec_bytes) {
    case 16: copy_units<16>(src, dst, begin, end); break;
    case 8: copy_units<8>(src, dst, begin, end); break;
    case 4: copy_units<4>(src, dst, begin, end); break;
    case 2: copy_units<2>(src, dst, begin, end); break;
    default: copy_units<1>(src, dst, begin, end); break;
  }
}

__device__ void zero_run(const GatherTensor& t, char* dst, int64_t begin, int64_t end) {
  switch (t.vec_bytes) {
    case 16: zero_units<16>(dst, begin, end); break;
    case 8: zero_units<8>(dst, begin, end); break;
    case 4: zero_units<4>(dst, begin, end); break;
    case 2: zero_units<2>(dst, begin, end); break;
    default: zero_units<1>(dst, begin, end); break;
  }
}

// Element-wise copy of a row whose trailing dims are strided; elements [begin, end) of the row.
__device__ void copy_strided(const GatherTensor& t, const char* src_row, char* dst_row, int64_t begin, int64_t end) {
  for (int64_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
    int64_t rest = e;
    int64_t src_elem = 0;
    for (int d = t.inner_dims - 1; d >= 0; --d) {
      src_elem += (rest % t.inner_sizes[d]) * t.inner_strides[d];
      rest /= t.inner_sizes[d];
    }
    const char* s = src_row + src_elem * t.elem_bytes;
    char* o = dst_row + e * t.elem_bytes;
    for (int b = 0; b < t.elem_bytes; ++b) o[b] = s[b];
  }
}

__device__ int64_t load_index(const GatherParams& p, int64_t r) {
  return p.indices_are_int64 ? static_cast<const int64_t*>(p.indices)[r]
                             : static_cast<int64_t>(static_cast<const int32_t*>(p.indices)[r]);
}

__global__ void __launch_bounds__(kGatherThreads) gather_rows_kernel(const __grid_constant__ GatherParams p) {
  const GatherTensor& t = p.tensors[blockIdx.y];
  const int64_t requested_raw = p.count_is_int64 ? *static_cast<const int64_t*>(p.count)
                                                 : static_cast<int64_t>(*static_cast<const int32_t*>(p.count));
  const int64_t requested = min(max(requested_raw, int64_t{0}), p.num_indices);
  const int64_t offset = p.cursor[kCursorOffset];
  // An offset outside [0, capacity] (a cursor the caller wrote) writes nothing: every row counts as
  // overflow, which the pool's check() reports. The CPU op raises instead; here that would need a sync.
  const bool offset_in_range = offset >= 0 && offset <= p.capacity;
  const int64_t rows = offset_in_range ? min(p.capacity - offset, requested) : int64_t{0};

  const int64_t row_units = gather_row_units(t);
  const int64_t chunks = (row_units + p.chunk_units - 1) / p.chunk_units;
  // One tensor of one launch counts invalid indices, so a list split over launches counts each once.
  const bool counts_invalid = p.last_launch && blockIdx.y == 0;
  int64_t invalid = 0;
  for (int64_t w = blockIdx.x; w < rows * chunks; w += gridDim.x) {
    const int64_t r = w / chunks;
    const int64_t begin = (w - r * chunks) * p.chunk_units;
    const int64_t end = min(begin + p.chunk_units, row_units);
    const int64_t row = load_index(p, r);
    char* dst_row = t.dst + (offset + r) * t.row_bytes;
    if (row < 0 || row >= p.source_rows) {
      // Strided rows count elements; the binding picks vec_bytes dividing elem_bytes for them.
      const int64_t units_per_step = t.contiguous_rows ? 1 : t.elem_bytes / t.vec_bytes;
      zero_run(t, dst_row, begin * units_per_step, end * units_per_step);
      invalid += (counts_invalid && begin == 0) ? 1 : 0;
      continue;
    }
    const char* src_row = t.src + row * t.src_row_stride;
    if (t.contiguous_rows) {
      copy_run(t, src_row, dst_row, begin, end);
    } else {
      copy_strided(t, src_row, dst_row, begin, end);
    }
  }

  // Last block out advances the cursor. __syncthreads + fence order this block's writes (and its read
  // of the offset) before the ticket; the last ticket holder then sees every other block finished.
  __syncthreads();
  if (threadIdx.x == 0) {
    if (invalid > 0) atomicAdd(reinterpret_cast<unsigned long long*>(p.cursor + kCursorInvalid), invalid);
    __threadfence();
    const unsigned long long blocks = static_cast<unsigned long long>(gridDim.x) * gridDim.y;
    const unsigned long long ticket = atomicAdd(reinterpret_cast<unsigned long long*>(p.cursor + kCursorTicket), 1ULL);
    if (ticket == blocks - 1 && p.last_launch) {
      __threadfence();
      p.cursor[kCursorOffset] = offset + rows;
      p.cursor[kCursorOverflow] += requested - rows;
    }
    if (ticket == blocks - 1) p.cursor[kCursorTicket] = 0;
  }
}

}  // namespace
}  // namespace sbkernels
