// The per-row draw of the "sb" op, each compiled for every instruction set (isa_cpu.h): the percentile
// counts against the history snapshot and the Philox uniforms.
#include "draw_cpu.h"

#include <algorithm>
#include <cstring>

#include "lanes_cpu.h"
#include "philox_cpu.h"

namespace sbkernels::cpu {
namespace {

// #{k < n_hist : history[k] < loss_r} for R rows at once (an exact integer count: the order does not
// matter): each W-lane history load serves R compares, into R independent accumulators. int32 lanes, so the
// history goes by chunks of 2**30 (no lane sum can overflow).
template <int W, int R>
SBKERNELS_INLINE void count_below(const float* history, int64_t n_hist, const float* loss, int64_t* out) {
  using i32 = typename Lanes<W>::i32;
  using f32 = typename Lanes<W>::f32;
  f32 bound[R];
  for (int r = 0; r < R; ++r) {
    bound[r] = splat<W>(loss[r]);
    out[r] = 0;
  }
  const int64_t whole = n_hist - n_hist % W;
  for (int64_t chunk = 0; chunk < whole; chunk += int64_t{1} << 30) {
    const int64_t chunk_end = std::min(whole, chunk + (int64_t{1} << 30));
    i32 below[R] = {};
    for (int64_t k = chunk; k < chunk_end; k += W) {
      const f32 h = load<W>(history + k);
      for (int r = 0; r < R; ++r) {
        if constexpr (W == 16) {  // AVX-512: one masked add (the compare's result is a mask register)
          below[r] = h < bound[r] ? below[r] + 1 : below[r];
        } else {  // the compare's true lanes are -1 (a select would be a blend)
          below[r] -= h < bound[r];
        }
      }
    }
    for (int r = 0; r < R; ++r) out[r] += lane_total<W>(below[r]);
  }
  for (int64_t k = whole; k < n_hist; ++k) {
    for (int r = 0; r < R; ++r) out[r] += history[k] < loss[r] ? 1 : 0;
  }
}

// #{h < loss_i} over the history snapshot for rows [begin, end), on W lanes (run_for_isa).
struct CountBlock {
  template <int W>
  SBKERNELS_INLINE static void run(const float* h, int64_t n_hist, const float* loss, int64_t* out, int64_t begin,
                                   int64_t end) {
    int64_t i = begin;
    for (; i + 4 <= end; i += 4) count_below<W, 4>(h, n_hist, loss + i, out + i);
    for (; i < end; ++i) count_below<W, 1>(h, n_hist, loss + i, out + i);
  }
};

// philox_uniform(seed, step, first_row + j) for j < count into out, on W lanes (run_for_isa).
struct UniformsBlock {
  template <int W>
  SBKERNELS_INLINE static void run(int64_t seed, int64_t step, int64_t first_row, int64_t count, float* out) {
    int64_t j = 0;
    for (; j + W <= count; j += W) {
      const typename Lanes<W>::f32 u = philox_uniforms<W>(seed, step, first_row + j);
      std::memcpy(out + j, &u, sizeof(u));
    }
    for (; j < count; ++j) out[j] = philox_uniform(seed, step, first_row + j);
  }
};

}  // namespace

void count_below_dispatch(Isa isa, const float* h, int64_t n_hist, const float* loss, int64_t* out, int64_t begin,
                          int64_t end) {
  run_for_isa<CountBlock>(isa, h, n_hist, loss, out, begin, end);
}

void uniforms_dispatch(Isa isa, int64_t seed, int64_t step, int64_t first_row, int64_t count, float* out) {
  run_for_isa<UniformsBlock>(isa, seed, step, first_row, count, out);
}

}  // namespace sbkernels::cpu
