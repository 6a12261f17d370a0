// Native CPU body of the batch-level policies (sbkernels::sample_rows_cpu): "keep" (Composer), "uniform" with
// k and "importance". One call does what the reference does in ~40 small ops (sbkernels/policies/scored.py,
// sbkernels/sampling.py): the scoring pass, the rows a policy may draw, the state's counters and the draw.
//
// The result equals the reference's exactly. Integer logic, orders, comparisons, IEEE +, *, / and the
// Philox uniforms are written here; the few steps whose result depends on a library's rounding (pow and log
// elementwise, a float sum, a cumulative sum) call the same ATen kernels the reference calls (their out=
// forms). Intermediates live in per-thread scratch (scratch_cpu.h): a call allocates only its outputs.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>

#include "../slots.h"
#include "checks_cpu.h"
#include "ops_cpu.h"
#include "scratch_cpu.h"

namespace sbkernels::cpu {
namespace {

const at::TensorOptions kFloat32 = at::TensorOptions().dtype(at::kFloat);

at::Tensor float_view(float* data, int64_t n) { return at::from_blob(data, {n}, kFloat32); }

struct ScoredRows {
  at::Tensor loss;  // an output
  float* score;     // scratch (importance only, else nullptr)
  float* u;         // scratch
  uint8_t* valid;   // scratch: not ignored, target in range, finite loss
  int64_t n = 0, n_valid = 0;
};

// The scoring pass (the importance score only when with_score), then step + 1 and the error counts
// (sbkernels.policies.scored.score_rows).
ScoredRows score_rows(const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
                      const std::optional<at::Tensor>& losses, at::Tensor& meta, int64_t ignore_index,
                      int64_t row_offset, bool with_score) {
  const at::Tensor& source = logits.has_value() ? *logits : *losses;
  const int64_t n = source.size(0);
  ScoredRows rows{at::empty({n}, source.options().dtype(at::kFloat)),
                  with_score ? scratch<float, Scratch::kScore>(n) : nullptr,
                  scratch<float, Scratch::kUniform>(n),
                  nullptr,
                  n,
                  0};
  int8_t* flags = scratch<int8_t, Scratch::kFlags>(n);
  row_stats_into(logits, targets, losses, meta, ignore_index, 0.0, row_offset, rows.loss.data_ptr<float>(), rows.score,
                 rows.u, flags);
  const float* loss = rows.loss.const_data_ptr<float>();
  rows.valid = scratch<uint8_t, Scratch::kValid>(n);
  const RowTally tally = tally_rows(flags, loss, n, rows.valid);
  rows.n_valid = tally.valid;
  advance_counters(meta.data_ptr<int64_t>(), tally, /*pushed=*/0);  // these policies push nothing
  return rows;
}

// compact_rows into a new (N,) int64 tensor, and the count as a 0-d int32 tensor.
std::tuple<at::Tensor, at::Tensor> compact(const uint8_t* chosen, int64_t n, const at::TensorOptions& options) {
  at::Tensor indices = at::empty({n}, options.dtype(at::kLong));
  const int64_t count = compact_rows(chosen, n, indices.data_ptr<int64_t>());
  return {indices, at::full({}, static_cast<int32_t>(count), options.dtype(at::kInt))};
}

// ATen's float sum of n floats (the reference's rounding).
float aten_sum(const float* data, int64_t n) {
  at::Tensor total = at::from_blob(scratch<float, Scratch::kTotal>(1), {}, kFloat32);
  at::sum_out(total, float_view(const_cast<float*>(data), n), at::OptionalIntArrayRef(std::nullopt));
  return *total.const_data_ptr<float>();
}

// A float's order as an unsigned integer (-0 and +0 equal; the result's top 32 bits) packed above a row index:
// sorting these sorts by the float, equal floats by row, with plain integer compares. descending flips the
// float's order, not the row's.
uint64_t sort_key(float x, int64_t row, bool descending = false) {
  const uint32_t bits = __builtin_bit_cast(uint32_t, x + 0.0f);  // -0 + 0 = +0
  uint32_t ordered = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
  if (descending) ordered = ~ordered;
  return (uint64_t{ordered} << 32) | static_cast<uint32_t>(row);
}
uint32_t sort_key_row(uint64_t key) { return static_cast<uint32_t>(key); }

// k rows without replacement, proportional to `weight` (sbkernels.sampling.sample_without_replacement):
// the k largest keys log(u_i) / w_i; rows of weight 0 are never drawn.
std::tuple<at::Tensor, at::Tensor> sample_without_replacement(const float* w, const float* u, int64_t n, int64_t k,
                                                              const at::TensorOptions& options) {
  float* keys = scratch<float, Scratch::kKeys>(n);
  at::Tensor log_u = float_view(keys, n);
  at::log_out(log_u, float_view(const_cast<float*>(u), n));  // keys = log(u), then / w
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = w[i] > 0.0f ? keys[i] / std::max(w[i], 1e-30f) : -std::numeric_limits<float>::infinity();
  }
  uint64_t* order = scratch<uint64_t, Scratch::kOrder>(n);
  for (int64_t i = 0; i < n; ++i) order[i] = sort_key(keys[i], i, /*descending=*/true);
  const int64_t top = std::min(k, n);
  std::nth_element(order, order + top, order + n);  // the top keys first (ties: never among usable rows)
  uint8_t* chosen = scratch<uint8_t, Scratch::kChosen>(n);
  std::fill_n(chosen, n, uint8_t{0});
  for (int64_t j = 0; j < top; ++j) chosen[sort_key_row(order[j])] = w[sort_key_row(order[j])] > 0.0f;
  return compact(chosen, n, options);
}

// Composer's rank weights ((rank + 0.5) / n_valid) ** (1 / keep - 1) (sbkernels.sampling.keep_weights), into
// scratch.
const float* keep_weights(const ScoredRows& rows, double keep) {
  const int64_t n = rows.n;
  const float* loss = rows.loss.const_data_ptr<float>();
  uint64_t* order = scratch<uint64_t, Scratch::kOrder>(n);  // by loss, ties by row: the reference's stable argsort
  for (int64_t i = 0; i < n; ++i)
    order[i] = sort_key(rows.valid[i] ? loss[i] : std::numeric_limits<float>::infinity(), i);
  std::sort(order, order + n);
  // (rank + 0.5) / n_valid in float32, as the reference's elementwise add and division round it; pow by ATen.
  float* base = scratch<float, Scratch::kWork>(n);
  const float n_valid = static_cast<float>(std::max<int64_t>(rows.n_valid, 1));
  for (int64_t j = 0; j < n; ++j) base[sort_key_row(order[j])] = (static_cast<float>(j) + 0.5f) / n_valid;
  float* weight = scratch<float, Scratch::kWeight>(n);
  at::Tensor weight_view = float_view(weight, n);
  at::pow_out(weight_view, float_view(base, n), 1.0 / keep - 1.0);
  for (int64_t i = 0; i < n; ++i) weight[i] = rows.valid[i] ? weight[i] : 0.0f;
  return weight;
}

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Outputs keep_rows(const ScoredRows& rows, double keep) {
  const int64_t n = rows.n;
  const at::TensorOptions options = rows.loss.options();
  const float* weight = keep_weights(rows, keep);
  auto [indices, count] = sample_without_replacement(weight, rows.u, n, static_cast<int64_t>(keep * n), options);
  const float total = std::max(aten_sum(weight, n), 1e-30f);
  at::Tensor prob = at::empty({n}, options);
  float* p = prob.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) p[i] = weight[i] / total;
  return {indices, count, rows.loss, prob, at::zeros({n}, options)};
}

Outputs uniform_rows(const ScoredRows& rows, int64_t k) {
  const int64_t n = rows.n;
  const at::TensorOptions options = rows.loss.options();
  float* weight = scratch<float, Scratch::kWeight>(n);
  for (int64_t i = 0; i < n; ++i) weight[i] = rows.valid[i] ? 1.0f : 0.0f;
  auto [indices, count] = sample_without_replacement(weight, rows.u, n, k, options);
  const int64_t n_valid = std::max<int64_t>(rows.n_valid, 1);
  const float inclusion = static_cast<float>(std::min(n_valid, k)) / static_cast<float>(n_valid);
  at::Tensor prob = at::empty({n}, options);
  float* p = prob.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) p[i] = rows.valid[i] ? inclusion : 0.0f;
  return {indices, count, rows.loss, prob, at::zeros({n}, options)};
}

// torch.nan_to_num(x, 0.0): NaN to 0, infinities to the largest finite floats.
float nan_to_zero(float x) {
  if (std::isnan(x)) return 0.0f;
  if (std::isinf(x)) return x > 0 ? std::numeric_limits<float>::max() : std::numeric_limits<float>::lowest();
  return x;
}

// k draws with replacement, proportional to the score (sbkernels.sampling.proportional_distribution and
// sample_proportional): inverse CDF, indices ascending; weight 1 / (n_valid q).
Outputs importance_rows(const ScoredRows& rows, int64_t k) {
  const int64_t n = rows.n;
  const at::TensorOptions options = rows.loss.options();
  float* s = scratch<float, Scratch::kWork>(n);
  for (int64_t i = 0; i < n; ++i) s[i] = rows.valid[i] ? nan_to_zero(rows.score[i]) : 0.0f;
  const float total = aten_sum(s, n);
  const float uniform = 1.0f / static_cast<float>(std::max<int64_t>(rows.n_valid, 1));
  at::Tensor q = at::empty({n}, options);
  float* qp = q.data_ptr<float>();
  const float total_clamped = std::max(total, 1e-30f);
  for (int64_t i = 0; i < n; ++i) qp[i] = total > 0.0f ? s[i] / total_clamped : (rows.valid[i] ? uniform : 0.0f);

  k = std::min(k, n);
  float* cdf = scratch<float, Scratch::kCdf>(n);
  at::Tensor cdf_view = float_view(cdf, n);
  at::cumsum_out(cdf_view, q, 0);
  int64_t last = 0;
  bool has_rows = false;
  for (int64_t i = 0; i < n; ++i) {
    if (qp[i] > 0.0f) last = i, has_rows = true;
  }
  at::Tensor indices = at::empty({n}, options.dtype(at::kLong));
  int64_t* idx = indices.data_ptr<int64_t>();
  std::fill_n(idx, n, int64_t{-1});
  if (has_rows) {
    for (int64_t j = 0; j < k; ++j) {
      const float value = rows.u[j] * cdf[n - 1];  // u * total can round up to the total: clamp to the last row
      idx[j] = std::min<int64_t>(std::upper_bound(cdf, cdf + n, value) - cdf, last);
    }
    std::sort(idx, idx + k);
  }
  const at::Tensor count = at::full({}, has_rows ? static_cast<int32_t>(k) : 0, options.dtype(at::kInt));
  at::Tensor weight = at::empty({n}, options);
  float* wp = weight.data_ptr<float>();
  const float n_valid = static_cast<float>(std::max<int64_t>(rows.n_valid, 1));
  for (int64_t i = 0; i < n; ++i) wp[i] = qp[i] > 0.0f ? 1.0f / (n_valid * std::max(qp[i], 1e-30f)) : 0.0f;
  return {indices, count, rows.loss, q, weight};
}

Outputs sample_rows_cpu(const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
                        const std::optional<at::Tensor>& losses, at::Tensor meta, const std::string& policy,
                        double param, int64_t k, int64_t ignore_index, int64_t row_offset) {
  constexpr const char* op = "sample_rows_cpu";
  TORCH_CHECK(policy == "keep" || policy == "uniform" || policy == "importance", op,
              ": policy must be \"keep\", \"uniform\" or \"importance\", got \"", policy, "\"");
  const int64_t n = check_source(logits, targets, losses, op);
  check_meta(meta, op);
  check_row_offset(row_offset, n, op);
  if (policy == "keep") {
    TORCH_CHECK(std::isfinite(param) && param > 0.0 && param <= 1.0, op, ": keep (param) must be in (0, 1], got ",
                param);
  } else {
    TORCH_CHECK(k >= 0 && k <= n, op, ": k must be in [0, N = ", n, "] for policy \"", policy, "\", got ", k);
  }
  const ScoredRows rows = score_rows(logits, targets, losses, meta, ignore_index, row_offset, policy == "importance");
  if (policy == "keep") return keep_rows(rows, param);
  if (policy == "uniform") return uniform_rows(rows, k);
  return importance_rows(rows, k);
}

}  // namespace

TORCH_LIBRARY_IMPL(sbkernels, CPU, m) { m.impl("sample_rows_cpu", &sample_rows_cpu); }

}  // namespace sbkernels::cpu
