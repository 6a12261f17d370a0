// The per-row draw of the "sb" op (draw_cpu.cpp), run with the instruction set asked for.
#pragma once

#include <cstdint>

#include "isa_cpu.h"

namespace sbkernels::cpu {

// out[i] = #{k < n_hist : h[k] < loss[i]} for rows i in [begin, end): the percentile counts.
void count_below_dispatch(Isa isa, const float* h, int64_t n_hist, const float* loss, int64_t* out, int64_t begin,
                          int64_t end);

// out[j] = philox_uniform(seed, step, first_row + j) for j < count (philox_cpu.h).
void uniforms_dispatch(Isa isa, int64_t seed, int64_t step, int64_t first_row, int64_t count, float* out);

}  // namespace sbkernels::cpu
