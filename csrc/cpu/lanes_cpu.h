// W float32 (or int32) lanes in GCC's vector types, and the loads and reductions the native CPU kernels
// build on (rows_cpu.h, philox_cpu.h).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// The hot loops are inlined into functions compiled for several instruction sets (run_for_isa, isa_cpu.h),
// which are "flatten"ed: everything they call is inlined there, so it is compiled for that instruction set.
// (Not always_inline: GCC would inline the AVX-512 exp into its default-target callers first, and fail.)
#define SBKERNELS_INLINE inline

namespace sbkernels::cpu {

// The row loops work on W float32 lanes at a time in GCC's vector types, so their vectorization does not
// hang on the auto-vectorizer: each function that inlines them is compiled for one instruction set
// (run_for_isa), where a W-lane vector is one AVX-512 (W = 16), AVX2 (W = 8) or SSE / NEON (W = 4) register.
template <int W>
struct Lanes {
  typedef float f32 __attribute__((vector_size(4 * W)));
  typedef int32_t i32 __attribute__((vector_size(4 * W)));
  typedef uint32_t u32 __attribute__((vector_size(4 * W)));
  typedef uint16_t u16 __attribute__((vector_size(2 * W)));
};
// (Free functions: GCC drops the vector attribute of these typedefs inside the class's own members.)
template <int W>
SBKERNELS_INLINE typename Lanes<W>::f32 splat(float x) {
  return typename Lanes<W>::f32{} + x;
}
template <int W>
SBKERNELS_INLINE typename Lanes<W>::i32 lane_index() {  // {0, 1, ..., W - 1}
  typename Lanes<W>::i32 out;
  for (int j = 0; j < W; ++j) out[j] = j;
  return out;
}

// W logits as float32. bfloat16 is the top half of a float32; float16 is widened exactly by integer
// operations (normal, subnormal, zero, inf and NaN alike), so no F16C instruction is needed.
template <int W>
SBKERNELS_INLINE typename Lanes<W>::f32 load(const float* p) {
  typename Lanes<W>::f32 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <int W>
SBKERNELS_INLINE typename Lanes<W>::u32 load_u16(const void* p) {
  typename Lanes<W>::u16 h;
  std::memcpy(&h, p, sizeof(h));
  return __builtin_convertvector(h, typename Lanes<W>::u32);
}
template <int W>
SBKERNELS_INLINE typename Lanes<W>::f32 load(const c10::BFloat16* p) {
  return __builtin_bit_cast(typename Lanes<W>::f32, load_u16<W>(p) << 16);
}
template <int W>
SBKERNELS_INLINE typename Lanes<W>::f32 load(const c10::Half* p) {
  using f32 = typename Lanes<W>::f32;
  using u32 = typename Lanes<W>::u32;
  const u32 h = load_u16<W>(p);
  constexpr uint32_t kExponent = 0x7c00u << 13;  // the float16 exponent field, moved to float32's place
  u32 o = (h & 0x7fffu) << 13;
  const u32 exponent = o & kExponent;
  o += (127u - 15u) << 23;                                                     // rebias
  o += __builtin_bit_cast(u32, exponent == kExponent) & ((128u - 16u) << 23);  // inf and NaN stay so
  // Subnormals and zero: one more exponent step, then subtract 2**-14 as a float.
  const f32 subnormal = __builtin_bit_cast(f32, o + (1u << 23)) - 6.103515625e-05f;
  o = exponent == 0 ? __builtin_bit_cast(u32, subnormal) : o;
  return __builtin_bit_cast(f32, o | ((h & 0x8000u) << 16));
}

// The last `count` (< W) logits of a row, the missing lanes set to `fill`. Lane by lane into a register: a
// vector load from a buffer just written element by element would stall on store forwarding.
template <int W, typename T>
SBKERNELS_INLINE typename Lanes<W>::f32 load_tail(const T* p, int64_t count, float fill) {
  typename Lanes<W>::f32 x = splat<W>(fill);
  for (int j = 0; j < count; ++j) x[j] = static_cast<float>(p[j]);
  return x;
}

#if defined(__x86_64__) && defined(__GNUC__)
// AVX-512 loads the tail with a lane mask in one instruction (no element-by-element build).
template <int W, typename T>
  requires(W == 16)
__attribute__((target("avx512f,avx512bw,avx512vl"))) SBKERNELS_INLINE Lanes<16>::f32 load_tail(const T* p,
                                                                                               int64_t count,
                                                                                               float fill) {
  const __mmask16 lanes = static_cast<__mmask16>((1u << count) - 1u);
  __m512 x;
  if constexpr (std::is_same_v<T, float>) {
    x = _mm512_maskz_loadu_ps(lanes, p);
  } else {
    const __m256i bits = _mm256_maskz_loadu_epi16(lanes, p);
    Lanes<16>::u16 h = __builtin_bit_cast(Lanes<16>::u16, bits);
    Lanes<16>::f32 wide = load<16>(reinterpret_cast<const T*>(&h));
    x = __builtin_bit_cast(__m512, wide);
  }
  return __builtin_bit_cast(Lanes<16>::f32, _mm512_mask_blend_ps(lanes, _mm512_set1_ps(fill), x));
}
#endif

template <typename T>
SBKERNELS_INLINE float to_float(T x) {
  return static_cast<float>(x);
}

// The low and high halves of a W-lane vector (float or integer lanes), as register shuffles, for
// reductions by halving (log2 W steps, not a W-long chain). (Through memory, the accumulators would live on
// the stack.)
template <typename V, std::size_t... I>
SBKERNELS_INLINE auto low_half(V v, std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, I...);
}
template <typename V, std::size_t... I>
SBKERNELS_INLINE auto high_half(V v, std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, (I + sizeof...(I))...);
}
template <int W, typename V, typename H>
SBKERNELS_INLINE void halves(V v, H& lo, H& hi) {
  lo = low_half(v, std::make_index_sequence<W / 2>());
  hi = high_half(v, std::make_index_sequence<W / 2>());
}
// The W lanes of v (float or integer) folded by halves with combine (log2 W steps: lane j meets lane
// j + W/2, and so on down to one lane).
template <int W, typename V, typename Combine>
SBKERNELS_INLINE auto lane_fold(V v, Combine combine) {
  if constexpr (W == 1) {
    return v[0];
  } else {
    decltype(low_half(v, std::make_index_sequence<W / 2>())) lo, hi;
    halves<W>(v, lo, hi);
    return lane_fold<W / 2>(combine(lo, hi), combine);
  }
}
template <int W>
SBKERNELS_INLINE float lane_sum(typename Lanes<W>::f32 v) {
  return lane_fold<W>(v, [](auto a, auto b) { return a + b; });
}
template <int W>
SBKERNELS_INLINE float lane_max(typename Lanes<W>::f32 v) {
  return lane_fold<W>(v, [](auto a, auto b) { return a > b ? a : b; });
}
// The sum of the W int32 lanes of v (the caller keeps it below 2**31).
template <int W>
SBKERNELS_INLINE int64_t lane_total(typename Lanes<W>::i32 v) {
  return lane_fold<W>(v, [](auto a, auto b) { return a + b; });
}

}  // namespace sbkernels::cpu
