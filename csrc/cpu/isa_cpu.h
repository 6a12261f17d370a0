// The instruction set the native CPU kernels run with: the best one this CPU has, or one asked for through
// the sbkernels::cpu_isa op (tests run every path on one machine) or the SBKERNELS_CPU_ISA variable.
#pragma once

#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

// x86-64 builds compile the kernels for AVX-512 and AVX2 too; others for the baseline only.
#if defined(__x86_64__) && defined(__GNUC__)
#define SBKERNELS_HAS_X86_ISAS 1
#endif

namespace sbkernels::cpu {

enum class Isa { kDefault, kAvx2, kAvx512 };

Isa active_isa();

// "" reads the active instruction set; "best", "avx512", "avx2" or "default" sets it first (an error when
// the CPU lacks it). Returns the name of the active one.
std::string cpu_isa(const std::string& request);

// Kernel::run<W>(args...) compiled for an instruction set: W = 16 float32 lanes for AVX-512, 8 for AVX2 +
// FMA, 4 (one SSE or NEON register) for any CPU. Each entry point is "flatten"ed: everything run<W> calls is
// inlined into it, so it is compiled for that instruction set (rows_cpu.h, lanes_cpu.h).
#ifdef SBKERNELS_HAS_X86_ISAS
template <typename Kernel, typename... Args>
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma"), flatten)) void run_avx512(Args... args) {
  Kernel::template run<16>(args...);
}
template <typename Kernel, typename... Args>
__attribute__((target("avx2,fma"), flatten)) void run_avx2(Args... args) {
  Kernel::template run<8>(args...);
}
#endif
template <typename Kernel, typename... Args>
__attribute__((flatten)) void run_baseline(Args... args) {
  Kernel::template run<4>(args...);
}

// Kernel::run<W>(args...) for the instruction set isa.
template <typename Kernel, typename... Args>
void run_for_isa(Isa isa, Args... args) {
#ifdef SBKERNELS_HAS_X86_ISAS
  if (isa == Isa::kAvx512) return run_avx512<Kernel, Args...>(args...);
  if (isa == Isa::kAvx2) return run_avx2<Kernel, Args...>(args...);
#endif
  run_baseline<Kernel, Args...>(args...);
}

#ifdef SBKERNELS_HAS_X86_ISAS
// Flush-to-zero and denormals-are-zero while a row block runs (this thread only; the caller's mode comes
// back after). A float32 result below 2**-126 (a tiny exp, or its square in the score) otherwise costs a
// microcode assist of a hundred cycles or more on Intel CPUs; flushed, it is 0 where it would have been at
// most 1.2e-38, next to a row sum of at least 1.
struct FlushDenormals {
  const unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved); }
};
#endif

}  // namespace sbkernels::cpu
