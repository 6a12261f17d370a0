// Slot numbers of the two small int64 device tensors every op reads and advances, and the per-row flag
// values, named once for C++, Python and Triton: the extension exports them as module constants of sbkernels._C, which
// sbkernels/slots.py reads and kernels/common.py turns into Triton constexprs.
#pragma once

#include <cstdint>

namespace sbkernels {

// SelectorState.meta: the selection state's counters.
constexpr int64_t kMetaPushed = 0;        // losses ever pushed into the history
constexpr int64_t kMetaSeed = 1;          // Philox seed
constexpr int64_t kMetaStep = 2;          // calls made so far: the high 32 bits of every Philox offset
constexpr int64_t kMetaNonfinite = 3;     // rows whose loss was NaN or +-inf (never selected, never pushed)
constexpr int64_t kMetaBadTargets = 4;    // rows whose target was outside [0, C) and not ignore_index
constexpr int64_t kMetaTicket = 5;        // select kernel scratch: (valid losses << 32) | finished programs
constexpr int64_t kMetaSizeMismatch = 6;  // global calls whose ranks passed different batch sizes
constexpr int64_t kMetaSize = 8;

// gather_rows' cursor.
constexpr int64_t kCursorOffset = 0;    // rows written so far (the next row's slot)
constexpr int64_t kCursorOverflow = 1;  // rows that did not fit below the outputs' capacity (never written)
constexpr int64_t kCursorInvalid = 2;   // indices outside [0, N) (their slots zero-filled)
constexpr int64_t kCursorTicket = 3;    // CUDA kernel scratch: blocks finished; 0 between launches
constexpr int64_t kCursorSize = 4;

// Per-row flags (int8): why a row may not be selected, before its loss is known.
constexpr int64_t kRowValid = 0;
constexpr int64_t kRowIgnored = 1;    // target == ignore_index
constexpr int64_t kRowBadTarget = 2;  // target outside [0, C)

// Limits a run can never exceed; state outside them is refused (load_state_dict, the native ops' checks) or,
// where the device cannot report it without a sync, clamped by the kernel so no index leaves its tensor.
constexpr int64_t kMaxCounter = int64_t{1} << 62;  // pushed, step and the error counts of meta
constexpr int64_t kMaxIntegerBeta = 16;            // pct ** beta by repeated multiplication for whole beta in [1, 16]

}  // namespace sbkernels
