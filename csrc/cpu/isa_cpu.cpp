#include "isa_cpu.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>

namespace sbkernels::cpu {
namespace {

bool supported(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kDefault: return true;
  }
  return false;
#else
  return isa == Isa::kDefault;
#endif
}

Isa best() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
    if (supported(isa)) return isa;
  }
  return Isa::kDefault;
}

const char* name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kDefault: return "default";
  }
  return "?";
}

Isa parse(const std::string& request) {
  if (request == "best") return best();
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kDefault}) {
    if (request == name(isa)) {
      TORCH_CHECK(supported(isa), "sbkernels: this CPU lacks the ", request,
                  " instructions; ask for \"best\", \"avx2\" or \"default\"");
      return isa;
    }
  }
  TORCH_CHECK(false, "sbkernels: unknown CPU instruction set \"", request,
              "\"; ask for \"best\", \"avx512\", \"avx2\" or \"default\"");
}

std::atomic<Isa>& current() {
  static std::atomic<Isa> isa{[] {
    const char* env = std::getenv("SBKERNELS_CPU_ISA");
    return env != nullptr && *env != '\0' ? parse(env) : best();
  }()};
  return isa;
}

}  // namespace

Isa active_isa() { return current().load(std::memory_order_relaxed); }

std::string cpu_isa(const std::string& request) {
  if (!request.empty()) current().store(parse(request), std::memory_order_relaxed);
  return name(active_isa());
}

}  // namespace sbkernels::cpu
