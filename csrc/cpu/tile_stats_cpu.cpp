// The softmax statistics of one tile of logits (sbkernels::tile_stats_cpu): the native body of the linear
// form of sequence_losses, which forms the (tokens, V) logits one (rows, columns) tile at a time with a
// matrix product and never holds more than a tile (sbkernels/ops/_sequence.py). Per row of the tile:
//   [0] logsumexp over the tile's columns (-inf for a row that is -inf everywhere),
//   [1] the logit of the row's label when it falls in [column_offset, column_offset + C), else 0,
//   [2] the sum of the tile's logits (label smoothing only; 0 unless logit_sums).
// Tiles combine exactly: logsumexps by logaddexp, the other two by sums (every label lies in one tile). The
// same definition as sbkernels.reference.softmax_stats; the loss from the statistics is
// sbkernels.reference.loss_from_stats.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "checks_cpu.h"
#include "isa_cpu.h"
#include "ops_cpu.h"
#include "rows_cpu.h"

namespace sbkernels::cpu {
namespace {

template <typename T>
struct TileArgs {
  const T* logits;
  int64_t stride;  // elements between rows
  const int64_t* labels;
  int64_t label_stride;
  int64_t columns;
  int64_t column_offset;
  bool logit_sums;
  float* lse;
  float* label_logit;
  float* logit_sum;
};

struct TileRows {
  template <int W, typename T>
  SBKERNELS_INLINE static void run(const TileArgs<T>* args, int64_t begin, int64_t end) {
    const TileArgs<T>& a = *args;
    for (int64_t i = begin; i < end; ++i) {
      const T* row = a.logits + i * a.stride;
      const T* next_row = i + 1 < end ? row + a.stride : row;
      a.lse[i] = row_sums<W, false>(row, a.columns, -1, next_row).lse;
      // Unsigned arithmetic: a label below the offset (or an ignored, negative one) wraps above the width,
      // and no label (INT64_MIN included) overflows.
      const uint64_t column =
          static_cast<uint64_t>(a.labels[i * a.label_stride]) - static_cast<uint64_t>(a.column_offset);
      a.label_logit[i] = column < static_cast<uint64_t>(a.columns) ? to_float(row[column]) : 0.0f;
      a.logit_sum[i] = a.logit_sums ? row_sum<W>(row, a.columns) : 0.0f;
    }
  }
};

template <typename T>
void tile_rows_dispatch(Isa isa, const TileArgs<T>& a, int64_t begin, int64_t end) {
#ifdef SBKERNELS_HAS_X86_ISAS
  const FlushDenormals flush;
#endif
  run_for_isa<TileRows>(isa, &a, begin, end);
}

// (3, N) float32 statistics of the (N, C) tile `logits` whose first column is column column_offset of the
// full logits, against labels (N,) int64 / int32 in the full logits' columns.
at::Tensor tile_stats_cpu(const at::Tensor& logits, const at::Tensor& labels, int64_t column_offset, bool logit_sums) {
  const char* op = "tile_stats_cpu";
  const int64_t n = check_logits_targets(logits, labels, op);  // (N, C >= 1), unit column stride, the dtypes
  TORCH_CHECK(column_offset >= 0 && column_offset <= (int64_t{1} << 40), op,
              ": column_offset must be in [0, 2**40], got ", column_offset);
  const auto [label_data, label_stride] = targets_int64(labels);
  at::Tensor stats = at::empty({3, n}, logits.options().dtype(at::kFloat));
  float* out = stats.data_ptr<float>();
  const Isa isa = active_isa();
  const int64_t columns = logits.size(1);
  auto run = [&](auto* typed) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(typed)>>;
    const TileArgs<T> args{logits.const_data_ptr<T>(),
                           logits.stride(0),
                           label_data,
                           label_stride,
                           columns,
                           column_offset,
                           logit_sums,
                           out,
                           out + n,
                           out + 2 * n};
    at::parallel_for(0, n, row_grain(columns),
                     [&](int64_t begin, int64_t end) { tile_rows_dispatch(isa, args, begin, end); });
  };
  visit_logits_dtype(logits.scalar_type(), run);
  return stats;
}

}  // namespace

TORCH_LIBRARY_IMPL(sbkernels, CPU, m) { m.impl("tile_stats_cpu", &tile_stats_cpu); }

}  // namespace sbkernels::cpu
