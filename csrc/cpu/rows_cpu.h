// Per-row building blocks of the native CPU selection ops, the same definitions as the Triton kernels'
// (sbkernels/kernels/common.py) and the PyTorch reference (sbkernels/reference.py).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "lanes_cpu.h"

namespace sbkernels::cpu {

// exp(x) for x <= 0 in float32, per lane: 2**(x log2 e) split into 2**n (exponent bits) times 2**f,
// f in [-0.5, 0.5], by a degree-6 polynomial (relative error below 2e-7). x below -87 (and -inf) gives
// exactly 0, as exp does below float32's normal range, so a row that is -inf everywhere sums to 0 and its
// logsumexp is -inf.
template <int W>
SBKERNELS_INLINE typename Lanes<W>::f32 exp_nonpositive(typename Lanes<W>::f32 x) {
  using L = Lanes<W>;
  const typename L::i32 underflow = x < -87.0f;
  x = underflow ? splat<W>(-87.0f) : x;
  const typename L::f32 t = x * 1.44269504088896341f;
  const typename L::f32 n = (t + 12582912.0f) - 12582912.0f;  // round to nearest by the 1.5 * 2**23 trick
  const typename L::f32 f = t - n;
  typename L::f32 p = splat<W>(1.535336188319500e-4f);
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const typename L::i32 bits =
      __builtin_bit_cast(typename L::i32, p) + (__builtin_convertvector(n, typename L::i32) << 23);
  return underflow ? splat<W>(0.0f) : __builtin_bit_cast(typename L::f32, bits);
}

#if defined(__x86_64__) && defined(__GNUC__)
// AVX-512 scales by 2**n in one instruction (vscalefps, which also underflows to 0 by itself, flushed by
// the row loops' FTZ mode), replacing the exponent-bit arithmetic and the underflow select: 13 instructions
// per 16 lanes instead of 17. Rounding stays the add-and-subtract trick, fused into the first multiply
// (cheaper than vrndscaleps). The clamp keeps -inf from becoming NaN (-inf - -inf) and puts every x below
// it at exactly 0 (2**-158 rounds to 0); max(-110, NaN) is NaN, so a NaN logit still gives a NaN loss.
template <>
__attribute__((target("avx512f"))) SBKERNELS_INLINE Lanes<16>::f32 exp_nonpositive<16>(Lanes<16>::f32 x) {
  const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
  const __m512 v = _mm512_max_ps(_mm512_set1_ps(-110.0f), __builtin_bit_cast(__m512, x));
  const __m512 magic = _mm512_set1_ps(12582912.0f);  // 1.5 * 2**23: rounds to nearest in the add
  const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(v, log2e, magic), magic);
  const __m512 f = _mm512_fmsub_ps(v, log2e, n);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return __builtin_bit_cast(Lanes<16>::f32, _mm512_scalef_ps(p, n));
}
#endif

struct RowSums {
  float lse;     // logsumexp_c x_c (-inf for a row that is -inf everywhere)
  float other;   // sum_{c != t} exp(x_c - m) / s: 1 - p_t without cancellation (importance score)
  float other2;  // sum_{c != t} exp(x_c - m)^2 / s^2
};

// 2W consecutive logits as two W-lane float32 vectors, with each lane's column offset from the block start.
// bfloat16 pairs come in one 32-bit load per two logits: the low half shifted up is the even column, the
// word with its low half cleared is the odd one (an exact widening in one instruction per W logits; the
// order of the lanes does not matter to a max or a sum).
template <int W, typename T>
SBKERNELS_INLINE void load_block(const T* p, typename Lanes<W>::f32& a, typename Lanes<W>::f32& b) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    typename Lanes<W>::u32 words;
    std::memcpy(&words, p, sizeof(words));
    a = __builtin_bit_cast(typename Lanes<W>::f32, words << 16);
    b = __builtin_bit_cast(typename Lanes<W>::f32, words & 0xffff0000u);
  } else {
    a = load<W>(p);
    b = load<W>(p + W);
  }
}
template <int W, typename T>
SBKERNELS_INLINE void block_columns(typename Lanes<W>::i32& a, typename Lanes<W>::i32& b) {
  const typename Lanes<W>::i32 lanes = lane_index<W>();
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    a = lanes * 2;
    b = lanes * 2 + 1;
  } else {
    a = lanes;
    b = lanes + W;
  }
}

// One row's softmax statistics in float32 math: a pass for the max, then a pass for the exps, from cache
// (next_row: the row to prefetch meanwhile, any readable row when there is none). Both passes go by blocks
// of 2W logits (two independent accumulators), then at most one whole W-vector and one partial one. The
// shift is 0 while the max is -inf, so -inf entries add exactly nothing (SPEC section 2). With SCORE the
// second pass also sums over the non-target classes, masked by column (no cancellation: 1 - p_t is never
// formed as s - e_t), for ||softmax - onehot||_2.
template <int W, bool SCORE, typename T>
SBKERNELS_INLINE RowSums row_sums(const T* row, int64_t num_classes, int64_t target, const T* next_row) {
  using f32 = typename Lanes<W>::f32;
  using i32 = typename Lanes<W>::i32;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int64_t blocks_end = num_classes - num_classes % (2 * W);
  const int64_t rest = num_classes - blocks_end, single = rest >= W ? W : 0, tail = rest - single;
  f32 max_a = splat<W>(-kInf), max_b = splat<W>(-kInf);
  for (int64_t c = 0; c < blocks_end; c += 2 * W) {
    f32 a, b;
    load_block<W>(row + c, a, b);
    max_a = a > max_a ? a : max_a;
    max_b = b > max_b ? b : max_b;
  }
  if (single) {
    const f32 a = load<W>(row + blocks_end);
    max_a = a > max_a ? a : max_a;
  }
  if (tail) {
    const f32 b = load_tail<W>(row + blocks_end + single, tail, -kInf);
    max_b = b > max_b ? b : max_b;
  }
  const float m = lane_max<W>(max_a > max_b ? max_a : max_b);
  const f32 shift = splat<W>(m == -kInf ? 0.0f : m);
  const i32 lanes = lane_index<W>();
  i32 columns_a, columns_b;
  block_columns<W, T>(columns_a, columns_b);
  const int32_t t = static_cast<int32_t>(target);
  f32 s = splat<W>(0.0f), o = splat<W>(0.0f), o2 = splat<W>(0.0f);
  auto add = [&](f32 x, i32 columns) {
    const f32 e = exp_nonpositive<W>(x - shift);
    s += e;
    if constexpr (SCORE) {
      const f32 e_other = columns == t ? splat<W>(0.0f) : e;
      o += e_other;
      o2 += e_other * e_other;
    }
  };
  for (int64_t c = 0; c < blocks_end; c += 2 * W) {
    // The exps run from cache while the next row streams in: prefetched at the pace of this pass, so
    // memory and arithmetic overlap instead of taking turns.
    __builtin_prefetch(next_row + c);
    __builtin_prefetch(next_row + c + W);
    f32 a, b;
    load_block<W>(row + c, a, b);
    const int32_t c32 = static_cast<int32_t>(c);
    add(a, columns_a + c32);
    add(b, columns_b + c32);
  }
  if (single) add(load<W>(row + blocks_end), lanes + static_cast<int32_t>(blocks_end));
  if (tail)
    add(load_tail<W>(row + blocks_end + single, tail, -kInf), lanes + static_cast<int32_t>(blocks_end + single));
  const float total = lane_sum<W>(s);
  RowSums out{shift[0] + std::log(total), 0.0f, 0.0f};
  if constexpr (SCORE) {
    out.other = lane_sum<W>(o) / total;
    out.other2 = lane_sum<W>(o2) / (total * total);
  }
  return out;
}

// sum_c x_c, for label smoothing only (a third pass, from cache).
template <int W, typename T>
SBKERNELS_INLINE float row_sum(const T* row, int64_t num_classes) {
  const int64_t whole = num_classes - num_classes % W;
  typename Lanes<W>::f32 sum = splat<W>(0.0f);
  for (int64_t c = 0; c < whole; c += W) sum += load<W>(row + c);
  if (whole < num_classes) sum += load_tail<W>(row + whole, num_classes - whole, 0.0f);
  return lane_sum<W>(sum);
}

// softmax(x) - onehot(target) of one row into out: exp(x_c - lse), W lanes at a time (x_c <= lse), then
// 1 off the target.
template <int W, typename T>
SBKERNELS_INLINE void softmax_minus_onehot(const T* row, int64_t num_classes, int64_t target, float lse, float* out) {
  const typename Lanes<W>::f32 shift = splat<W>(lse);
  const int64_t whole = num_classes - num_classes % W;
  for (int64_t c = 0; c < whole; c += W) {
    const typename Lanes<W>::f32 e = exp_nonpositive<W>(load<W>(row + c) - shift);
    std::memcpy(out + c, &e, sizeof(e));
  }
  if (whole < num_classes) {
    const typename Lanes<W>::f32 e = exp_nonpositive<W>(load_tail<W>(row + whole, num_classes - whole, 0.0f) - shift);
    for (int64_t c = whole; c < num_classes; ++c) out[c] = e[c - whole];
  }
  out[target] -= 1.0f;
}

// The loss of SPEC section 2 from the row's logsumexp; the smoothing term is not formed at eps = 0.
template <int W, typename T>
SBKERNELS_INLINE float cross_entropy(const T* row, float lse, int64_t target, int64_t num_classes,
                                     float label_smoothing) {
  const float loss = lse - to_float(row[target]);
  if (label_smoothing == 0.0f) return loss;
  const float x_mean = row_sum<W>(row, num_classes) / static_cast<float>(num_classes);
  // mean_c (lse - x_c) >= 0: -inf only when the sum of the logits overflowed to +inf, where
  // F.cross_entropy's terms overflow to +inf.
  const float smooth = lse - x_mean;
  const float smooth_term = smooth == -std::numeric_limits<float>::infinity() ? -smooth : smooth;
  return (1.0f - label_smoothing) * loss + label_smoothing * smooth_term;
}

}  // namespace sbkernels::cpu
