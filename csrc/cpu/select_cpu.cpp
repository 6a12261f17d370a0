// Native CPU kernels of the selection ops: the fused "sb" pass (sbkernels::select_sb_cpu) and the row
// statistics of the batch-level policies (sbkernels::row_stats_cpu). The same semantics as the Triton
// kernels and the reference (SPEC section 2): float32 math whatever the input dtype, Philox uniforms bit for
// bit, order-preserving compaction, the history push and the counters. Rows run in parallel
// (at::parallel_for); everything else is a short sequential scan. int64 offsets: N * C may exceed 2**31.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../slots.h"
#include "checks_cpu.h"
#include "draw_cpu.h"
#include "isa_cpu.h"
#include "ops_cpu.h"
#include "philox_cpu.h"
#include "rows_cpu.h"
#include "scratch_cpu.h"

namespace sbkernels::cpu {
namespace {

// The percentile sorts the history snapshot once and binary-searches it when N > this * log2(n_hist) (the
// sort then costs less than the W-lane count over the whole snapshot for every row).
constexpr int64_t kSortedPathRowsPerLogHist = 128;

// One logits matrix and the per-row outputs of the row kernels.
template <typename T>
struct RowArgs {
  const T* logits;
  int64_t stride;  // elements between rows
  const int64_t* targets;
  int64_t target_stride;
  int64_t num_classes;
  int64_t ignore_index;
  float label_smoothing;
  float* loss;
  int8_t* flags;    // the row flags of slots.h
  float* score;     // kScore only
  float* residual;  // kResidual only: (N, C), unit stride
};

// What a row kernel writes besides loss and flags.
enum class RowOutput { kLoss, kScore, kResidual };

// Rows [begin, end): loss, flags and, per OUT, the importance score or the residuals softmax - onehot
// (gradmatch: rows with an ignored or bad target get loss 0 and zero residuals, as in the reference), on W
// lanes (run_for_isa).
template <RowOutput OUT>
struct RowBlock {
  template <int W, typename T>
  SBKERNELS_INLINE static void run(const RowArgs<T>* args, int64_t begin, int64_t end) {
    constexpr bool kScore = OUT == RowOutput::kScore, kResidual = OUT == RowOutput::kResidual;
    const RowArgs<T>& a = *args;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t target = a.targets[i * a.target_stride];
      const bool ignored = target == a.ignore_index, bad = !ignored && (target < 0 || target >= a.num_classes);
      if (ignored || bad) {
        a.loss[i] = bad && !kResidual ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
        a.flags[i] = static_cast<int8_t>(bad ? kRowBadTarget : kRowIgnored);
        if constexpr (kScore) a.score[i] = bad ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
        if constexpr (kResidual) std::fill_n(a.residual + i * a.num_classes, a.num_classes, 0.0f);
        continue;
      }
      const T* row = a.logits + i * a.stride;
      const T* next_row = i + 1 < end ? row + a.stride : row;
      const RowSums sums = row_sums<W, kScore>(row, a.num_classes, target, next_row);
      a.loss[i] = cross_entropy<W>(row, sums.lse, target, a.num_classes, a.label_smoothing);
      a.flags[i] = kRowValid;
      if constexpr (kScore) a.score[i] = std::sqrt(sums.other * sums.other + sums.other2);
      if constexpr (kResidual) {
        softmax_minus_onehot<W>(row, a.num_classes, target, sums.lse, a.residual + i * a.num_classes);
      }
    }
  }
};

template <RowOutput OUT, typename T>
void row_block_dispatch(Isa isa, const RowArgs<T>& a, int64_t begin, int64_t end) {
#ifdef SBKERNELS_HAS_X86_ISAS
  const FlushDenormals flush;
#endif
  run_for_isa<RowBlock<OUT>>(isa, &a, begin, end);
}

// Loss, flags and (per OUT) score or residuals of every row of the logits, rows in parallel.
template <RowOutput OUT>
void logits_rows(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index, float label_smoothing,
                 float* loss, int8_t* flags, float* score, float* residual = nullptr) {
  TORCH_CHECK(logits.dim() == 2 && logits.stride(1) == 1,
              "sbkernels CPU kernels take (N, C) logits with unit column stride, got sizes ", logits.sizes(),
              " and strides ", logits.strides(), "; pass logits.contiguous()");
  TORCH_CHECK(logits.size(1) < (int64_t{1} << 31), "sbkernels CPU kernels take fewer than 2**31 classes, got ",
              logits.size(1));
  const auto [target_data, target_stride] = targets_int64(targets);
  const Isa isa = active_isa();
  const int64_t n = logits.size(0), num_classes = logits.size(1);
  auto run = [&](auto* typed) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(typed)>>;
    const RowArgs<T> args{logits.const_data_ptr<T>(),
                          logits.stride(0),
                          target_data,
                          target_stride,
                          num_classes,
                          ignore_index,
                          label_smoothing,
                          loss,
                          flags,
                          score,
                          residual};
    at::parallel_for(0, n, row_grain(num_classes),
                     [&](int64_t begin, int64_t end) { row_block_dispatch<OUT>(isa, args, begin, end); });
  };
  visit_logits_dtype(logits.scalar_type(), run);
}

// The loss per row from logits + targets, or from given losses (a float32 copy); `flags` points to the
// rows' flags (computed into scratch, or the given ones; all 0 when losses come without flags).
at::Tensor row_losses(const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
                      const std::optional<at::Tensor>& losses, const std::optional<at::Tensor>& flags,
                      int64_t ignore_index, double label_smoothing, const int8_t*& flags_out) {
  if (logits.has_value()) {
    const int64_t n = logits->size(0);
    at::Tensor loss = at::empty({n}, logits->options().dtype(at::kFloat));
    int8_t* row_flags = scratch<int8_t, Scratch::kFlags>(n);
    logits_rows<RowOutput::kLoss>(*logits, *targets, ignore_index, static_cast<float>(label_smoothing),
                                  loss.data_ptr<float>(), row_flags, nullptr);
    flags_out = row_flags;
    return loss;
  }
  const int64_t n = losses->size(0);
  if (flags.has_value()) {
    check_cpu(*flags, "select_sb_cpu", "flags");
    TORCH_CHECK(
        flags->scalar_type() == at::kChar && flags->dim() == 1 && flags->is_contiguous() && flags->numel() == n,
        "select_sb_cpu: flags must be a contiguous int8 tensor of one entry per loss (sbkernels.rows.row_flags), got ",
        flags->scalar_type(), " of shape ", flags->sizes());
    flags_out = flags->const_data_ptr<int8_t>();
  } else {
    int8_t* row_flags = scratch<int8_t, Scratch::kFlags>(n);
    std::fill_n(row_flags, n, static_cast<int8_t>(kRowValid));
    flags_out = row_flags;
  }
  return losses->to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
}

float probability(float pct, double beta, int64_t beta_int, float floor) {
  float p;
  if (beta_int > 0) {  // repeated multiplication: exact IEEE arithmetic, the same as the kernel's
    p = pct;
    for (int64_t k = 1; k < beta_int; ++k) p = p * pct;
  } else {
    p = std::exp2(static_cast<float>(beta) * std::log2(pct));
  }
  return std::max(p, floor);
}

// The scalars of the "sb" / "uniform" (rate) pass: a rate in [0, 1] (fixed_prob >= 0), or else the percentile
// rule's beta > 0 (beta_int: beta when it is a whole number in [1, 16], else 0), and floor, prime, smoothing.
void check_sb_scalars(double beta, double floor, int64_t prime, double label_smoothing, double fixed_prob,
                      int64_t beta_int) {
  constexpr const char* op = "select_sb_cpu";
  TORCH_CHECK(std::isfinite(fixed_prob) && fixed_prob <= 1.0, op,
              ": fixed_prob must be a rate in [0, 1] or negative (the percentile rule), got ", fixed_prob);
  if (fixed_prob < 0) {
    TORCH_CHECK(std::isfinite(beta) && beta > 0, op, ": beta must be a finite number > 0, got ", beta);
    TORCH_CHECK(
        beta_int == 0 || (beta_int >= 1 && beta_int <= kMaxIntegerBeta && beta == static_cast<double>(beta_int)), op,
        ": beta_int must be 0 or beta itself when beta is a whole number in [1, ", kMaxIntegerBeta,
        "], got beta_int = ", beta_int, " for beta = ", beta);
  }
  check_range(floor, 0.0, 1.0, /*high_open=*/false, op, "floor");
  TORCH_CHECK(prime >= 0, op, ": prime must be >= 0, got ", prime);
  check_range(label_smoothing, 0.0, 1.0, /*high_open=*/true, op, "label_smoothing");
}

// Sorts a copy of the history snapshot for the binary-search percentile. NaN (which no run pushes, but a
// caller may write) sorts last and never counts as below a loss, as in the W-lane count; the comparator
// stays a strict weak order, which std::sort needs to stay inside the buffer.
void sort_snapshot(const float* history, int64_t n_hist, float* sorted) {
  std::copy_n(history, n_hist, sorted);
  std::sort(sorted, sorted + n_hist, [](float a, float b) { return a < b || (std::isnan(b) && !std::isnan(a)); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_sb_cpu(
    const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
    const std::optional<at::Tensor>& losses, const std::optional<at::Tensor>& flags, at::Tensor history,
    at::Tensor meta, double beta, double floor, int64_t prime, int64_t ignore_index, double label_smoothing,
    double fixed_prob, int64_t beta_int) {
  check_source(logits, targets, losses, "select_sb_cpu");
  TORCH_CHECK(!flags.has_value() || losses.has_value(), "select_sb_cpu: flags go with losses, not with logits");
  check_history(history, "select_sb_cpu");
  check_meta(meta, "select_sb_cpu");
  check_sb_scalars(beta, floor, prime, label_smoothing, fixed_prob, beta_int);
  const int8_t* f = nullptr;
  const at::Tensor loss = row_losses(logits, targets, losses, flags, ignore_index, label_smoothing, f);
  const int64_t n = loss.size(0), size = history.size(0);
  at::Tensor indices = at::empty({n}, loss.options().dtype(at::kLong));
  at::Tensor count = at::empty({}, loss.options().dtype(at::kInt));
  at::Tensor prob = at::empty({n}, loss.options());

  int64_t* m = meta.data_ptr<int64_t>();
  float* h = history.data_ptr<float>();
  const float* l = loss.const_data_ptr<float>();
  float* p = prob.data_ptr<float>();
  int64_t* idx = indices.data_ptr<int64_t>();
  const int64_t pushed = m[kMetaPushed], seed = m[kMetaSeed], step = m[kMetaStep];
  const int64_t n_hist = std::min(pushed, size);

  // #{h < loss} per row, into idx (scratch until the compaction): a W-lane count over the snapshot, or, for
  // batches large enough to pay for it, a sort of the snapshot (reused from call to call) and a binary search
  // per row. Either way the tasks hold ~2**20 comparisons, so small calls stay on the calling thread.
  const Isa isa = active_isa();
  const bool percentile = fixed_prob < 0 && pushed >= prime && n_hist > 0;
  if (percentile) {
    const int64_t log_hist = 64 - __builtin_clzll(static_cast<uint64_t>(n_hist));
    // The sorted copy lives in the calling thread's scratch and is read through a pointer: the workers of
    // at::parallel_for have scratch of their own, which they must not see here.
    const bool sorted_path = n > kSortedPathRowsPerLogHist * log_hist;
    const float* sorted = nullptr;
    if (sorted_path) {
      float* buffer = scratch<float, Scratch::kSorted>(n_hist);
      sort_snapshot(h, n_hist, buffer);
      sorted = buffer;
    }
    const int64_t work_per_row = sorted_path ? log_hist : n_hist;
    at::parallel_for(0, n, std::max<int64_t>(1, (int64_t{1} << 20) / work_per_row), [&](int64_t begin, int64_t end) {
      if (sorted_path) {
        for (int64_t i = begin; i < end; ++i) idx[i] = std::lower_bound(sorted, sorted + n_hist, l[i]) - sorted;
      } else {
        count_below_dispatch(isa, h, n_hist, l, idx, begin, end);
      }
    });
  }
  uint8_t* valid = scratch<uint8_t, Scratch::kValid>(n);
  const RowTally tally = tally_rows(f, l, n, valid);
  const bool priming = pushed < prime;
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float prob_i;
      if (fixed_prob >= 0) {
        prob_i = static_cast<float>(fixed_prob);
      } else if (priming || n_hist == 0) {
        prob_i = 1.0f;
      } else {  // IEEE division, as everywhere
        const float pct = static_cast<float>(idx[i]) / static_cast<float>(n_hist);
        prob_i = probability(pct, beta, beta_int, static_cast<float>(floor));
      }
      p[i] = valid[i] ? prob_i : 0.0f;
    }
    // The draw; idx becomes scratch: 1 = selected, 0 = not, compacted below. u >= 0, so p = 0 is never drawn.
    float u[256];
    for (int64_t first = begin; first < end; first += 256) {
      const int64_t count = std::min<int64_t>(256, end - first);
      uniforms_dispatch(isa, seed, step, first, count, u);
      for (int64_t j = 0; j < count; ++j) idx[first + j] = u[j] < p[first + j] ? 1 : 0;
    }
  });

  // History push in row order (of more than R valid losses only the last R land), compaction, counters.
  const int64_t first_push = tally.valid - size;
  int64_t rank = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (valid[i]) {
      if (rank >= first_push) h[(pushed + rank) % size] = l[i];
      ++rank;
    }
  }
  count.fill_(static_cast<int32_t>(compact_rows(idx, n, idx)));
  advance_counters(m, tally, tally.valid);
  return {indices, count, loss, prob};
}

}  // namespace

void row_stats_into(const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
                    const std::optional<at::Tensor>& losses, const at::Tensor& meta, int64_t ignore_index,
                    double label_smoothing, int64_t row_offset, float* loss, float* score, float* u, int8_t* flags) {
  TORCH_CHECK(logits.has_value() != losses.has_value(), "row_stats_cpu: pass logits (with targets) or losses");
  const int64_t n = logits.has_value() ? logits->size(0) : losses->size(0);
  if (logits.has_value() && score != nullptr) {
    logits_rows<RowOutput::kScore>(*logits, *targets, ignore_index, static_cast<float>(label_smoothing), loss, flags,
                                   score);
  } else if (logits.has_value()) {  // the score's extra sums cost ~40% more per logit: skip them
    logits_rows<RowOutput::kLoss>(*logits, *targets, ignore_index, static_cast<float>(label_smoothing), loss, flags,
                                  nullptr);
  } else {
    at::from_blob(loss, {n}, at::TensorOptions().dtype(at::kFloat)).copy_(*losses);  // any float dtype
    if (score != nullptr) std::fill_n(score, n, 0.0f);
    std::fill_n(flags, n, static_cast<int8_t>(kRowValid));
  }
  const int64_t* m = meta.const_data_ptr<int64_t>();
  const int64_t seed = m[kMetaSeed], step = m[kMetaStep];
  const Isa isa = active_isa();
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    uniforms_dispatch(isa, seed, step, row_offset + begin, end - begin, u + begin);
  });
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_stats_cpu(const std::optional<at::Tensor>& logits,
                                                             const std::optional<at::Tensor>& targets,
                                                             const std::optional<at::Tensor>& losses,
                                                             const at::Tensor& meta, int64_t ignore_index,
                                                             double label_smoothing, int64_t row_offset) {
  const int64_t n = check_source(logits, targets, losses, "row_stats_cpu");
  check_meta(meta, "row_stats_cpu");
  check_range(label_smoothing, 0.0, 1.0, /*high_open=*/true, "row_stats_cpu", "label_smoothing");
  check_row_offset(row_offset, n, "row_stats_cpu");
  const at::Tensor& source = logits.has_value() ? *logits : *losses;
  const at::TensorOptions options = source.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({source.size(0)}, options), score = at::empty_like(loss), u = at::empty_like(loss);
  row_stats_into(logits, targets, losses, meta, ignore_index, label_smoothing, row_offset, loss.data_ptr<float>(),
                 score.data_ptr<float>(), u.data_ptr<float>(), scratch<int8_t, Scratch::kFlags>(source.size(0)));
  return {loss, score, u};
}

// gradmatch's residuals softmax(x_i) - onehot(t_i) (N, C) float32 and the losses (both 0 for ignored rows
// and bad targets), in one pass over the logits and one write of the residuals.
std::tuple<at::Tensor, at::Tensor> residuals_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                                 int64_t ignore_index) {
  const int64_t n = check_logits_targets(logits, targets, "residuals_cpu");
  at::Tensor residual = at::empty({n, logits.size(1)}, logits.options().dtype(at::kFloat));
  at::Tensor loss = at::empty({n}, logits.options().dtype(at::kFloat));
  logits_rows<RowOutput::kResidual>(logits, targets, ignore_index, 0.0f, loss.data_ptr<float>(),
                                    scratch<int8_t, Scratch::kFlags>(n), nullptr, residual.data_ptr<float>());
  return {residual, loss};
}

// Per-token losses of language-model logits (B, T, V) against labels (B, T), as (B, T') float32 with
// T' = T - 1 under the causal shift (position t scored against label t + 1) and T' = T without it. Ignored
// tokens give 0 and out-of-range labels NaN, as every row loss. One 2-D pass per sequence, so any strides
// along B and T work without a copy; each pass runs its tokens in parallel.
at::Tensor token_losses_cpu(const at::Tensor& logits, const at::Tensor& labels, bool shift, int64_t ignore_index,
                            double label_smoothing) {
  const char* op = "token_losses_cpu";
  check_cpu(logits, op, "logits");
  check_cpu(labels, op, "labels");
  TORCH_CHECK(logits.dim() == 3, op, ": logits must be 3-D (B, T, V), got shape ", logits.sizes());
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == logits.size(0) && labels.size(1) == logits.size(1), op,
              ": labels must have shape (B, T) = (", logits.size(0), ", ", logits.size(1), "), got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt, op,
              ": labels must be int64 or int32, got ", labels.scalar_type());
  TORCH_CHECK(logits.stride(0) >= 0 && logits.stride(1) >= 0 && labels.stride(0) >= 0 && labels.stride(1) >= 0, op,
              ": logits and labels need non-negative strides, got ", logits.strides(), " and ", labels.strides());
  check_range(label_smoothing, 0.0, 1.0, /*high_open=*/true, op, "label_smoothing");
  const int64_t batch = logits.size(0), length = logits.size(1), offset = shift ? 1 : 0;
  const int64_t scored = std::max<int64_t>(length - offset, 0);
  at::Tensor loss = at::zeros({batch, scored}, logits.options().dtype(at::kFloat));
  if (scored == 0) return loss;
  for (int64_t b = 0; b < batch; ++b) {
    const at::Tensor rows = logits.select(0, b).narrow(0, 0, scored);
    const at::Tensor targets = labels.select(0, b).narrow(0, offset, scored);
    check_logits_targets(rows, targets, op);
    logits_rows<RowOutput::kLoss>(rows, targets, ignore_index, static_cast<float>(label_smoothing),
                                  loss.data_ptr<float>() + b * scored, scratch<int8_t, Scratch::kFlags>(scored),
                                  nullptr);
  }
  return loss;
}

}  // namespace

TORCH_LIBRARY_IMPL(sbkernels, CPU, m) {
  m.impl("select_sb_cpu", &select_sb_cpu);
  m.impl("row_stats_cpu", &row_stats_cpu);
  m.impl("residuals_cpu", &residuals_cpu);
  m.impl("token_losses_cpu", &token_losses_cpu);
}

}  // namespace sbkernels::cpu
