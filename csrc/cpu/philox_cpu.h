// The Philox uniforms of the selection ops, bit for bit those of Triton's tl.rand.
#pragma once

#include <cstdint>

#include "lanes_cpu.h"

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
// philox_uniform for the W consecutive rows first_row, ..., first_row + W - 1, one per lane: the same
// rounds on W counters at once (32 x 32 -> 64-bit products in 64-bit lanes).
template <int W>
SBKERNELS_INLINE typename Lanes<W>::f32 philox_uniforms(int64_t seed, int64_t step, int64_t first_row) {
  using u32 = typename Lanes<W>::u32;
  using i32 = typename Lanes<W>::i32;
  typedef uint64_t u64 __attribute__((vector_size(8 * W)));
  const uint64_t first = (static_cast<uint64_t>(step) << 32) + static_cast<uint64_t>(first_row);
  const u64 offset = __builtin_convertvector(lane_index<W>(), u64) + first;
  u32 c0 = __builtin_convertvector(offset, u32), c1 = __builtin_convertvector(offset >> 32, u32), c2{}, c3{};
  uint32_t k0 = static_cast<uint32_t>(static_cast<uint64_t>(seed));
  uint32_t k1 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  for (int round = 0; round < 10; ++round) {
    const u64 b = __builtin_convertvector(c2, u64) * 0xCD9E8D57u;
    const u64 a = __builtin_convertvector(c0, u64) * 0xD2511F53u;
    const u32 n0 = __builtin_convertvector(b >> 32, u32) ^ c1 ^ k0;
    const u32 n2 = __builtin_convertvector(a >> 32, u32) ^ c3 ^ k1;
    c1 = __builtin_convertvector(b, u32);
    c3 = __builtin_convertvector(a, u32);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const i32 x = __builtin_bit_cast(i32, c0);
  const i32 folded = x < 0 ? ~x : x;  // -x - 1 for negative x
  return __builtin_convertvector(folded, typename Lanes<W>::f32) * 4.6566127342e-10f;
}

}  // namespace sbkernels::cpu
