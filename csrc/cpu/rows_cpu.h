// Per-row building blocks of the native CPU selection ops, the same definitions as the Triton kernels'
// (sbkernels/kernels/common.py) and the PyTorch reference (sbkernels/reference.py).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// The hot loops are inlined into functions compiled for several instruction sets (select_cpu.cpp).
#define SBKERNELS_INLINE inline __attribute__((always_inline))

namespace sbkernels::cpu {

// tl.rand(seed, offset) of Triton, bit for bit: Philox4x32-10 on the counter (offset low 32 bits, offset
// high 32 bits, 0, 0) keyed by the seed's two halves; the first output word, as int32 x, maps to
// (x >= 0 ? x : -x - 1) * 4.6566127342e-10f (the largest float32 s with (2**31 - 1) * s < 1).
inline float philox_uniform(int64_t seed, int64_t step, int64_t row) {
  const uint64_t offset = (static_cast<uint64_t>(step) << 32) + static_cast<uint64_t>(row);
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(static_cast<uint64_t>(seed));
  uint32_t k1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t b = uint64_t{0xCD9E8D57} * c2;
    const uint64_t a = uint64_t{0xD2511F53} * c0;
    const uint32_t n0 = static_cast<uint32_t>(b >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(a >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(b);
    c3 = static_cast<uint32_t>(a);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const int64_t x = static_cast<int32_t>(c0);
  const int64_t folded = x < 0 ? -x - 1 : x;
  return static_cast<float>(folded) * 4.6566127342e-10f;
}

// exp(x) for x <= 0 in float32, branch-free so the compiler vectorizes the loops that call it: 2**(x log2 e)
// split into 2**n (exponent bits) times 2**f, f in [-0.5, 0.5], by a degree-6 polynomial (relative error
// below 2e-7). x below -87 (and -inf) gives exactly 0, as exp does below float32's normal range, so a row
// that is -inf everywhere sums to 0 and its logsumexp is -inf.
SBKERNELS_INLINE float exp_nonpositive(float x) {
  const bool underflow = x < -87.0f;
  x = underflow ? -87.0f : x;
  const float t = x * 1.44269504088896341f;
  // Round to nearest by the 1.5 * 2**23 trick (an add and a subtract): vectorizes, unlike nearbyint.
  const float n = (t + 12582912.0f) - 12582912.0f;
  const float f = t - n;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += static_cast<int32_t>(n) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return underflow ? 0.0f : out;
}

SBKERNELS_INLINE float to_float(float x) { return x; }
SBKERNELS_INLINE float to_float(c10::BFloat16 x) { return static_cast<float>(x); }
SBKERNELS_INLINE float to_float(c10::Half x) { return static_cast<float>(x); }

// Adds sum exp(x_c - shift) and sum exp(x_c - shift)^2 over columns [from, to) to o and o2.
template <typename T>
SBKERNELS_INLINE void non_target_sums(const T* row, int64_t from, int64_t to, float shift, float& o, float& o2) {
  constexpr int kLanes = 16;
  float sums[kLanes], squares[kLanes];
  for (int j = 0; j < kLanes; ++j) sums[j] = 0.0f, squares[j] = 0.0f;
  int64_t c = from;
  for (; c + kLanes <= to; c += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const float e = exp_nonpositive(to_float(row[c + j]) - shift);
      sums[j] += e;
      squares[j] += e * e;
    }
  }
  for (int j = 0; j < kLanes; ++j) o += sums[j], o2 += squares[j];
  for (; c < to; ++c) {
    const float e = exp_nonpositive(to_float(row[c]) - shift);
    o += e;
    o2 += e * e;
  }
}

struct RowSums {
  float lse;     // logsumexp_c x_c (-inf for a row that is -inf everywhere)
  float x_sum;   // sum_c x_c (for label smoothing)
  float other;   // sum_{c != t} exp(x_c - m) / s: 1 - p_t without cancellation (importance score)
  float other2;  // sum_{c != t} exp(x_c - m)^2 / s^2
};

// One row's softmax statistics in float32 math, two passes over the row (max, then sums). The shift is
// 0 while the max is -inf, so -inf entries add exactly nothing (SPEC section 2). With SCORE, also the sums
// over the non-target classes that give ||softmax - onehot||_2.
template <bool SCORE, typename T>
SBKERNELS_INLINE RowSums row_sums(const T* row, int64_t num_classes, int64_t target) {
  constexpr int kLanes = 16;
  float maxima[kLanes], sums[kLanes];
  for (int j = 0; j < kLanes; ++j) maxima[j] = -std::numeric_limits<float>::infinity(), sums[j] = 0.0f;
  const int64_t whole = num_classes - num_classes % kLanes;
  for (int64_t c = 0; c < whole; c += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const float x = to_float(row[c + j]);
      maxima[j] = x > maxima[j] ? x : maxima[j];
      sums[j] += x;
    }
  }
  float m = -std::numeric_limits<float>::infinity(), x_sum = 0.0f;
  for (int j = 0; j < kLanes; ++j) m = maxima[j] > m ? maxima[j] : m, x_sum += sums[j];
  for (int64_t c = whole; c < num_classes; ++c) {
    const float x = to_float(row[c]);
    m = x > m ? x : m;
    x_sum += x;
  }
  const float shift = std::isinf(m) && m < 0 ? 0.0f : m;
  float exps[kLanes];
  for (int j = 0; j < kLanes; ++j) exps[j] = 0.0f;
  for (int64_t c = 0; c < whole; c += kLanes) {
    for (int j = 0; j < kLanes; ++j) exps[j] += exp_nonpositive(to_float(row[c + j]) - shift);
  }
  float s = 0.0f;
  for (int j = 0; j < kLanes; ++j) s += exps[j];
  for (int64_t c = whole; c < num_classes; ++c) s += exp_nonpositive(to_float(row[c]) - shift);
  RowSums out{shift + std::log(s), x_sum, 0.0f, 0.0f};
  if constexpr (SCORE) {
    // The non-target sums by a third pass, over the columns before and after the target: two loops with
    // no condition inside, so they vectorize, and no cancellation (1 - p_t is never formed as s - e_t).
    float o = 0.0f, o2 = 0.0f;
    non_target_sums(row, 0, target, shift, o, o2);
    non_target_sums(row, target + 1, num_classes, shift, o, o2);
    out.other = o / s;
    out.other2 = o2 / (s * s);
  }
  return out;
}

// The loss of SPEC section 2 from the row's statistics; the smoothing term is not formed at eps = 0.
SBKERNELS_INLINE float cross_entropy(const RowSums& r, float x_target, int64_t num_classes, float label_smoothing) {
  const float loss = r.lse - x_target;
  if (label_smoothing == 0.0f) return loss;
  return (1.0f - label_smoothing) * loss + label_smoothing * (r.lse - r.x_sum / static_cast<float>(num_classes));
}

}  // namespace sbkernels::cpu
