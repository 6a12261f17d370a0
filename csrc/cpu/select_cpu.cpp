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
#include <vector>

#include "../slots.h"
#include "rows_cpu.h"

namespace sbkernels::cpu {
namespace {

constexpr int8_t kRowIgnored = 1;  // sbkernels.rows.ROW_IGNORED
constexpr int8_t kRowBadTarget = 2;  // sbkernels.rows.ROW_BAD_TARGET
constexpr int64_t kElementsPerTask = 1 << 15;  // below this much work a loop runs on the calling thread

// Rows per parallel task: enough logits per task that small batches stay on one thread.
int64_t row_grain(int64_t num_classes) { return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(num_classes, 1)); }

// A block of rows [begin, end): loss, flags (0 valid, 1 ignored, 2 bad target) and, with SCORE, the
// importance score. Inlined into the per-dtype functions below.
template <bool SCORE, typename T>
SBKERNELS_INLINE void row_block(const T* base, int64_t stride, const int64_t* t, int64_t t_stride, int64_t num_classes,
                               int64_t ignore_index, float label_smoothing, float* loss, int8_t* flags, float* score,
                               int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const int64_t target = t[i * t_stride];
    if (target == ignore_index) {
      loss[i] = 0.0f, flags[i] = kRowIgnored;
      if constexpr (SCORE) score[i] = 0.0f;
    } else if (target < 0 || target >= num_classes) {
      loss[i] = std::numeric_limits<float>::quiet_NaN(), flags[i] = kRowBadTarget;
      if constexpr (SCORE) score[i] = std::numeric_limits<float>::quiet_NaN();
    } else {
      const T* row = base + i * stride;
      const RowSums sums = row_sums<SCORE>(row, num_classes, target);
      loss[i] = cross_entropy(sums, to_float(row[target]), num_classes, label_smoothing);
      flags[i] = 0;
      if constexpr (SCORE) score[i] = std::sqrt(sums.other * sums.other + sums.other2);
    }
  }
}

// The row loop compiled for AVX2 + FMA and for baseline x86-64, the CPU's features picking one at load time
// (GCC target_clones): 8-wide exps where the machine has them, and still a build that runs everywhere.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SBKERNELS_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define SBKERNELS_CLONES
#endif
#define SBKERNELS_ROW_BLOCKS(NAME, SCORE, T)                                                                     \
  SBKERNELS_CLONES void NAME(const T* base, int64_t stride, const int64_t* t, int64_t t_stride,                  \
                             int64_t num_classes, int64_t ignore_index, float eps, float* loss, int8_t* flags,   \
                             float* score, int64_t begin, int64_t end) {                                         \
    row_block<SCORE, T>(base, stride, t, t_stride, num_classes, ignore_index, eps, loss, flags, score, begin, end); \
  }
SBKERNELS_ROW_BLOCKS(losses_f32, false, float)
SBKERNELS_ROW_BLOCKS(losses_bf16, false, c10::BFloat16)
SBKERNELS_ROW_BLOCKS(losses_f16, false, c10::Half)
SBKERNELS_ROW_BLOCKS(stats_f32, true, float)
SBKERNELS_ROW_BLOCKS(stats_bf16, true, c10::BFloat16)
SBKERNELS_ROW_BLOCKS(stats_f16, true, c10::Half)

// Loss, flags and (with SCORE) score of every row of the logits, rows in parallel.
template <bool SCORE>
void logits_rows(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index, float label_smoothing,
                 float* loss, int8_t* flags, float* score) {
  const int64_t n = logits.size(0), num_classes = logits.size(1), stride = logits.stride(0);
  const auto t64 = targets.to(at::kLong);
  const int64_t* t = t64.const_data_ptr<int64_t>();
  const int64_t t_stride = t64.stride(0);
  at::parallel_for(0, n, row_grain(num_classes), [&](int64_t begin, int64_t end) {
    // Direct calls, not through a function pointer: the call must go through the clones' resolver.
    const float eps = label_smoothing;
    switch (logits.scalar_type()) {
      case at::kFloat: {
        const float* x = logits.const_data_ptr<float>();
        if constexpr (SCORE) {
          stats_f32(x, stride, t, t_stride, num_classes, ignore_index, eps, loss, flags, score, begin, end);
        } else {
          losses_f32(x, stride, t, t_stride, num_classes, ignore_index, eps, loss, flags, score, begin, end);
        }
        break;
      }
      case at::kBFloat16: {
        const c10::BFloat16* x = logits.const_data_ptr<c10::BFloat16>();
        if constexpr (SCORE) {
          stats_bf16(x, stride, t, t_stride, num_classes, ignore_index, eps, loss, flags, score, begin, end);
        } else {
          losses_bf16(x, stride, t, t_stride, num_classes, ignore_index, eps, loss, flags, score, begin, end);
        }
        break;
      }
      case at::kHalf: {
        const c10::Half* x = logits.const_data_ptr<c10::Half>();
        if constexpr (SCORE) {
          stats_f16(x, stride, t, t_stride, num_classes, ignore_index, eps, loss, flags, score, begin, end);
        } else {
          losses_f16(x, stride, t, t_stride, num_classes, ignore_index, eps, loss, flags, score, begin, end);
        }
        break;
      }
      default:
        TORCH_CHECK(false, "sbkernels CPU kernels take float32, bfloat16 or float16 logits, got ",
                    logits.scalar_type());
    }
  });
}

// (loss, flags) per row from logits + targets, or from given losses (+ optional flags); flags are
// written into `flags_out`.
at::Tensor row_losses(const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
                      const std::optional<at::Tensor>& losses, const std::optional<at::Tensor>& flags,
                      int64_t ignore_index, double label_smoothing, at::Tensor& flags_out) {
  if (logits.has_value()) {
    const int64_t n = logits->size(0);
    at::Tensor loss = at::empty({n}, logits->options().dtype(at::kFloat));
    flags_out = at::empty({n}, logits->options().dtype(at::kChar));
    logits_rows<false>(*logits, *targets, ignore_index, static_cast<float>(label_smoothing), loss.data_ptr<float>(),
                       flags_out.data_ptr<int8_t>(), nullptr);
    return loss;
  }
  flags_out = flags.has_value() ? flags->to(at::kChar).contiguous() : at::zeros(losses->sizes(), losses->options().dtype(at::kChar));
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_sb_cpu(
    const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
    const std::optional<at::Tensor>& losses, const std::optional<at::Tensor>& flags, at::Tensor history,
    at::Tensor meta, double beta, double floor, int64_t prime, int64_t ignore_index, double label_smoothing,
    double fixed_prob, int64_t beta_int) {
  TORCH_CHECK(logits.has_value() != losses.has_value(), "select_sb_cpu: pass logits (with targets) or losses");
  TORCH_CHECK(history.is_contiguous() && meta.is_contiguous(), "select_sb_cpu: history and meta must be contiguous");
  at::Tensor row_flags;
  const at::Tensor loss = row_losses(logits, targets, losses, flags, ignore_index, label_smoothing, row_flags);
  const int64_t n = loss.size(0), size = history.size(0);
  at::Tensor indices = at::empty({n}, loss.options().dtype(at::kLong));
  at::Tensor count = at::empty({}, loss.options().dtype(at::kInt));
  at::Tensor prob = at::empty({n}, loss.options());

  int64_t* m = meta.data_ptr<int64_t>();
  float* h = history.data_ptr<float>();
  const float* l = loss.const_data_ptr<float>();
  const int8_t* f = row_flags.const_data_ptr<int8_t>();
  float* p = prob.data_ptr<float>();
  int64_t* idx = indices.data_ptr<int64_t>();
  const int64_t pushed = m[kMetaPushed], seed = m[kMetaSeed], step = m[kMetaStep];
  const int64_t n_hist = std::min(pushed, size);

  // #{h < loss}: a vectorizable count over the snapshot for small batches; for larger ones the snapshot is
  // sorted once and each row binary-searches it. The buffer is reused from call to call.
  const bool sort_snapshot = n * n_hist > 8192 && fixed_prob < 0;
  thread_local std::vector<float> sorted;
  if (sort_snapshot) {
    sorted.assign(h, h + n_hist);
    std::sort(sorted.begin(), sorted.end());
  }
  auto count_below = [&](float loss_i) -> int64_t {
    if (sort_snapshot) return std::lower_bound(sorted.begin(), sorted.end(), loss_i) - sorted.begin();
    int32_t below = 0;  // int32 and a float compare: the loop vectorizes
    for (int64_t k = 0; k < n_hist; ++k) below += h[k] < loss_i ? 1 : 0;
    return below;
  };
  const bool priming = pushed < prime;
  at::parallel_for(0, n, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(n_hist, 64)), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const bool valid = f[i] == 0 && std::isfinite(l[i]);
      float prob_i;
      if (fixed_prob >= 0) {
        prob_i = static_cast<float>(fixed_prob);
      } else if (priming) {
        prob_i = 1.0f;
      } else {
        float pct = 1.0f;
        if (n_hist > 0) {  // IEEE division, as everywhere
          pct = static_cast<float>(count_below(l[i])) / static_cast<float>(n_hist);
        }
        prob_i = probability(pct, beta, beta_int, static_cast<float>(floor));
      }
      p[i] = valid ? prob_i : 0.0f;
      // Scratch: 1 = selected, 0 = not; compacted below.
      idx[i] = valid && philox_uniform(seed, step, i) < p[i] ? 1 : 0;
    }
  });

  // Compaction, history push and counters: one sequential scan in row order.
  int64_t selected = 0, total_valid = 0, nonfinite = 0, bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool usable = f[i] == 0, finite = std::isfinite(l[i]);
    total_valid += usable && finite;
    nonfinite += usable && !finite;
    bad += f[i] == kRowBadTarget;
  }
  const int64_t first_push = total_valid - size;  // of more than R valid losses only the last R land
  int64_t rank = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i]) idx[selected++] = i;  // selected <= i: in place, order kept
    if (f[i] == 0 && std::isfinite(l[i])) {
      if (rank >= first_push) h[(pushed + rank) % size] = l[i];
      ++rank;
    }
  }
  std::fill(idx + selected, idx + n, int64_t{-1});
  count.fill_(static_cast<int32_t>(selected));
  m[kMetaPushed] += total_valid;
  m[kMetaStep] += 1;
  m[kMetaNonfinite] += nonfinite;
  m[kMetaBadTargets] += bad;
  return {indices, count, loss, prob};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> row_stats_cpu(
    const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
    const std::optional<at::Tensor>& losses, const at::Tensor& meta, int64_t ignore_index, double label_smoothing,
    int64_t row_offset) {
  TORCH_CHECK(logits.has_value() != losses.has_value(), "row_stats_cpu: pass logits (with targets) or losses");
  at::Tensor loss, score;
  if (logits.has_value()) {
    const int64_t n = logits->size(0);
    loss = at::empty({n}, logits->options().dtype(at::kFloat));
    score = at::empty({n}, logits->options().dtype(at::kFloat));
    at::Tensor flags = at::empty({n}, logits->options().dtype(at::kChar));
    logits_rows<true>(*logits, *targets, ignore_index, static_cast<float>(label_smoothing), loss.data_ptr<float>(),
                      flags.data_ptr<int8_t>(), score.data_ptr<float>());
  } else {
    loss = losses->to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
    score = at::zeros_like(loss);
  }
  const int64_t n = loss.size(0);
  at::Tensor u = at::empty({n}, loss.options());
  const int64_t* m = meta.const_data_ptr<int64_t>();
  const int64_t seed = m[kMetaSeed], step = m[kMetaStep];
  float* out = u.data_ptr<float>();
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = philox_uniform(seed, step, row_offset + i);
  });
  return {loss, score, u};
}

}  // namespace

TORCH_LIBRARY_IMPL(sbkernels, CPU, m) {
  m.impl("select_sb_cpu", &select_sb_cpu);
  m.impl("row_stats_cpu", &row_stats_cpu);
}

}  // namespace sbkernels::cpu
