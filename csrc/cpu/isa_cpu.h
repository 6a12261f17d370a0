// The instruction set the native CPU kernels run with: the best one this CPU has, or one asked for through
// the sbkernels::cpu_isa op (tests run every path on one machine) or the SBKERNELS_CPU_ISA variable.
#pragma once

#include <string>

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

}  // namespace sbkernels::cpu
