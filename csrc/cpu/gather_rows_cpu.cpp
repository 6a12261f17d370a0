// CPU implementation of sbkernels::gather_rows: memcpy of whole rows in parallel when a source row is
// contiguous, index_select into the output slice otherwise.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

#include "../gather_rows.h"

namespace sbkernels {
namespace {

void gather_rows_cpu(at::TensorList sources, const at::Tensor& indices, const at::Tensor& count, at::TensorList outputs,
                     const at::Tensor& cursor) {
  const int64_t capacity = check_gather_args(sources, indices, count, outputs, cursor, c10::kCPU);
  const int64_t rows = sources[0].size(0);
  const int64_t requested = std::clamp<int64_t>(count.item<int64_t>(), 0, indices.numel());
  int64_t* cur = cursor.data_ptr<int64_t>();
  const int64_t offset = cur[kCursorOffset];
  TORCH_CHECK(offset >= 0 && offset <= capacity, "gather_rows: cursor[", kCursorOffset, "] (the row offset) = ", offset,
              " lies outside the outputs' [0, ", capacity,
              "] rows; use a cursor from sbkernels.new_cursor (or zero it)");
  const int64_t n = std::clamp<int64_t>(capacity - offset, 0, requested);

  const auto idx = indices.narrow(0, 0, n).to(at::kLong).contiguous();
  const int64_t* idx_ptr = idx.const_data_ptr<int64_t>();
  int64_t invalid = 0;  // a plain loop: small gathers should not pay for several tensor ops
  for (int64_t r = 0; r < n; ++r) invalid += idx_ptr[r] < 0 || idx_ptr[r] >= rows;

  for (size_t i = 0; i < sources.size() && n > 0; ++i) {
    const auto& src = sources[i];
    const auto& out = outputs[i];
    if (rows_are_contiguous(src)) {
      const int64_t row_bytes = row_numel(src) * src.element_size();
      const int64_t src_stride_bytes = src.stride(0) * src.element_size();
      const char* src_base = static_cast<const char*>(src.const_data_ptr());
      char* dst_base = static_cast<char*>(out.data_ptr()) + offset * row_bytes;
      const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(row_bytes, 1));
      at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t row = idx_ptr[r];
          if (row >= 0 && row < rows) {
            std::memcpy(dst_base + r * row_bytes, src_base + row * src_stride_bytes, row_bytes);
          } else {
            std::memset(dst_base + r * row_bytes, 0, row_bytes);
          }
        }
      });
    } else {
      auto slice = out.narrow(0, offset, n);
      at::index_select_out(slice, src, 0, idx.clamp(0, std::max<int64_t>(rows - 1, 0)));
      if (invalid > 0) slice.index_fill_(0, at::logical_or(idx.lt(0), idx.ge(rows)).nonzero().flatten(), 0);
    }
  }
  cur[kCursorOffset] = offset + n;
  cur[kCursorOverflow] += requested - n;
  cur[kCursorInvalid] += invalid;
}

}  // namespace

TORCH_LIBRARY_IMPL(sbkernels, CPU, m) { m.impl("gather_rows", &gather_rows_cpu); }

}  // namespace sbkernels
