// Native CPU body of the batch-level policies (sbkernels::sample_rows_cpu): "keep" (Composer), "uniform" with
// k and "importance". One call does what the reference does in ~40 small ops (sbkernels/policies/scored.py,
// sbkernels/sampling.py): the scoring pass, the rows a policy may draw, the state's counters and the draw.
//
// The result equals the reference's exactly. Integer logic, orders, comparisons, IEEE +, *, / and the
// Philox uniforms are written here; the few steps whose result depends on a library's rounding (pow and log
// elementwise, a float sum, a cumulative sum) call the same ATen kernels the reference calls, on tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "../slots.h"
#include "ops_cpu.h"

namespace sbkernels::cpu {
namespace {

struct ScoredRows {
  at::Tensor loss, score, u;
  std::vector<uint8_t> valid;  // not ignored, target in range, finite loss
  int64_t n_valid = 0;
};

// The scoring pass, then step + 1 and the error counts (sbkernels.policies.scored.score_rows).
ScoredRows score_rows(const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
                      const std::optional<at::Tensor>& losses, at::Tensor& meta, int64_t ignore_index,
                      int64_t row_offset) {
  ScoredRows rows;
  std::tie(rows.loss, rows.score, rows.u) = row_stats_cpu(logits, targets, losses, meta, ignore_index, 0.0, row_offset);
  const int64_t n = rows.loss.size(0);
  const float* loss = rows.loss.const_data_ptr<float>();
  rows.valid.assign(n, 0);
  const at::Tensor t64 = targets.has_value() ? targets->to(at::kLong) : at::Tensor();
  const int64_t* tp = t64.defined() ? t64.const_data_ptr<int64_t>() : nullptr;
  const int64_t t_stride = t64.defined() ? t64.stride(0) : 0;
  const int64_t num_classes = logits.has_value() ? logits->size(1) : 0;
  int64_t nonfinite = 0, bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    bool usable = true;
    if (tp != nullptr) {
      const int64_t t = tp[i * t_stride];
      const bool ignored = t == ignore_index, out_of_range = !ignored && (t < 0 || t >= num_classes);
      usable = !ignored && !out_of_range;
      bad += out_of_range;
    }
    const bool finite = std::isfinite(loss[i]);
    rows.valid[i] = usable && finite;
    nonfinite += usable && !finite;
    rows.n_valid += rows.valid[i];
  }
  int64_t* m = meta.data_ptr<int64_t>();
  m[kMetaStep] += 1;
  m[kMetaNonfinite] += nonfinite;
  m[kMetaBadTargets] += bad;
  return rows;
}

// Order-preserving compaction of `chosen` (sbkernels.rows.compact): indices, -1 after; a 0-d int32 count.
std::tuple<at::Tensor, at::Tensor> compact(const std::vector<uint8_t>& chosen, const at::TensorOptions& options) {
  const int64_t n = static_cast<int64_t>(chosen.size());
  at::Tensor indices = at::full({n}, -1, options.dtype(at::kLong));
  int64_t* out = indices.data_ptr<int64_t>();
  int32_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (chosen[i]) out[count++] = i;
  }
  return {indices, at::full({}, count, options.dtype(at::kInt))};
}

// k rows without replacement, proportional to `weight` (sbkernels.sampling.sample_without_replacement):
// the k largest keys log(u_i) / w_i; rows of weight 0 are never drawn.
std::tuple<at::Tensor, at::Tensor> sample_without_replacement(const at::Tensor& weight, const at::Tensor& u,
                                                              int64_t k) {
  const int64_t n = weight.size(0);
  const at::Tensor log_u = at::log(u);
  const float* w = weight.const_data_ptr<float>();
  const float* lu = log_u.const_data_ptr<float>();
  std::vector<float> keys(n);
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = w[i] > 0.0f ? lu[i] / std::max(w[i], 1e-30f) : -std::numeric_limits<float>::infinity();
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  const int64_t top = std::min(k, n);
  std::nth_element(order.begin(), order.begin() + top, order.end(),
                   [&](int64_t a, int64_t b) { return keys[a] > keys[b]; });
  std::vector<uint8_t> chosen(n, 0);
  for (int64_t j = 0; j < top; ++j) chosen[order[j]] = w[order[j]] > 0.0f;
  return compact(chosen, weight.options());
}

at::Tensor valid_mask(const ScoredRows& rows) {
  const int64_t n = static_cast<int64_t>(rows.valid.size());
  at::Tensor mask = at::empty({n}, rows.loss.options().dtype(at::kBool));
  std::copy(rows.valid.begin(), rows.valid.end(), mask.data_ptr<bool>());
  return mask;
}

// Composer's rank weights ((rank + 0.5) / n_valid) ** (1 / keep - 1) (sbkernels.sampling.keep_weights).
at::Tensor keep_weights(const ScoredRows& rows, double keep) {
  const int64_t n = rows.loss.size(0);
  const float* loss = rows.loss.const_data_ptr<float>();
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  auto key = [&](int64_t i) { return rows.valid[i] ? loss[i] : std::numeric_limits<float>::infinity(); };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key(a) < key(b); });
  // (rank + 0.5) / n_valid in float32, as the reference's elementwise add and division round it; pow by ATen.
  at::Tensor base = at::empty({n}, rows.loss.options());
  float* b = base.data_ptr<float>();
  const float n_valid = static_cast<float>(std::max<int64_t>(rows.n_valid, 1));
  for (int64_t j = 0; j < n; ++j) b[order[j]] = (static_cast<float>(j) + 0.5f) / n_valid;
  at::Tensor weight = at::pow(base, 1.0 / keep - 1.0);
  float* w = weight.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) w[i] = rows.valid[i] ? w[i] : 0.0f;
  return weight;
}

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Outputs keep_rows(const ScoredRows& rows, double keep) {
  const at::Tensor weight = keep_weights(rows, keep);
  auto [indices, count] = sample_without_replacement(weight, rows.u, static_cast<int64_t>(keep * rows.loss.size(0)));
  const float total = std::max(weight.sum().item<float>(), 1e-30f);  // ATen's sum: the reference's rounding
  at::Tensor prob = at::empty_like(weight);
  const float* w = weight.const_data_ptr<float>();
  float* p = prob.data_ptr<float>();
  for (int64_t i = 0; i < weight.size(0); ++i) p[i] = w[i] / total;
  return {indices, count, rows.loss, prob, at::zeros_like(rows.loss)};
}

Outputs uniform_rows(const ScoredRows& rows, int64_t k) {
  const at::Tensor valid = valid_mask(rows);
  auto [indices, count] = sample_without_replacement(valid.to(at::kFloat), rows.u, k);
  const int64_t n_valid = std::max<int64_t>(rows.n_valid, 1);
  const float inclusion = static_cast<float>(std::min(n_valid, k)) / static_cast<float>(n_valid);
  return {indices, count, rows.loss, at::where(valid, inclusion, 0.0f), at::zeros_like(rows.loss)};
}

// k draws with replacement, proportional to the score (sbkernels.sampling.proportional_distribution and
// sample_proportional): inverse CDF, indices ascending; weight 1 / (n_valid q).
Outputs importance_rows(const ScoredRows& rows, int64_t k) {
  const int64_t n = rows.loss.size(0);
  const at::Tensor valid = valid_mask(rows);
  const at::Tensor s = at::where(valid, rows.score.nan_to_num(0.0), 0.0f);
  const float total = s.sum().item<float>();
  const float uniform = 1.0f / static_cast<float>(std::max<int64_t>(rows.n_valid, 1));
  at::Tensor q = at::empty({n}, rows.loss.options());
  float* qp = q.data_ptr<float>();
  const float* sp = s.const_data_ptr<float>();
  const float total_clamped = std::max(total, 1e-30f);
  for (int64_t i = 0; i < n; ++i) qp[i] = total > 0.0f ? sp[i] / total_clamped : (rows.valid[i] ? uniform : 0.0f);

  k = std::min(k, n);
  const at::Tensor cdf_t = at::cumsum(q, 0);
  const float* cdf = cdf_t.const_data_ptr<float>();
  int64_t last = 0;
  bool has_rows = false;
  for (int64_t i = 0; i < n; ++i) {
    if (qp[i] > 0.0f) last = i, has_rows = true;
  }
  at::Tensor indices = at::full({n}, -1, rows.loss.options().dtype(at::kLong));
  int64_t* idx = indices.data_ptr<int64_t>();
  const float* u = rows.u.const_data_ptr<float>();
  if (has_rows) {
    for (int64_t j = 0; j < k; ++j) {
      const float value = u[j] * cdf[n - 1];  // u * total can round up to the total: clamp to the last row
      idx[j] = std::min<int64_t>(std::upper_bound(cdf, cdf + n, value) - cdf, last);
    }
    std::sort(idx, idx + k);
  }
  const at::Tensor count = at::full({}, has_rows ? static_cast<int32_t>(k) : 0, rows.loss.options().dtype(at::kInt));
  at::Tensor weight = at::empty({n}, rows.loss.options());
  float* wp = weight.data_ptr<float>();
  const float n_valid = static_cast<float>(std::max<int64_t>(rows.n_valid, 1));
  for (int64_t i = 0; i < n; ++i) wp[i] = qp[i] > 0.0f ? 1.0f / (n_valid * std::max(qp[i], 1e-30f)) : 0.0f;
  return {indices, count, rows.loss, q, weight};
}

Outputs sample_rows_cpu(const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& targets,
                        const std::optional<at::Tensor>& losses, at::Tensor meta, const std::string& policy,
                        double param, int64_t k, int64_t ignore_index, int64_t row_offset) {
  TORCH_CHECK(policy == "keep" || policy == "uniform" || policy == "importance",
              "sample_rows_cpu: policy must be \"keep\", \"uniform\" or \"importance\", got \"", policy, "\"");
  const ScoredRows rows = score_rows(logits, targets, losses, meta, ignore_index, row_offset);
  if (policy == "keep") return keep_rows(rows, param);
  if (policy == "uniform") return uniform_rows(rows, k);
  return importance_rows(rows, k);
}

}  // namespace

TORCH_LIBRARY_IMPL(sbkernels, CPU, m) { m.impl("sample_rows_cpu", &sample_rows_cpu); }

}  // namespace sbkernels::cpu
