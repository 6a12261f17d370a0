// Operator schemas of the sbkernels namespace and the Python module init of sbkernels._C.
//
// The selection ops (select_sb, ...) are Triton ops registered from Python into this same namespace as
// library fragments; the ops defined here have C++ implementations in cpu/ and cuda/.
#include <Python.h>
#include <torch/library.h>

#include "cpu/isa_cpu.h"
#include "slots.h"

extern "C" {
// Importing sbkernels._C loads this library, which runs the TORCH_LIBRARY registrations below. The module
// itself only carries the slot numbers of slots.h, for sbkernels/slots.py.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  using namespace sbkernels;
  const std::pair<const char*, int64_t> slots[] = {
      {"META_PUSHED", kMetaPushed},
      {"META_SEED", kMetaSeed},
      {"META_STEP", kMetaStep},
      {"META_NONFINITE", kMetaNonfinite},
      {"META_BAD_TARGETS", kMetaBadTargets},
      {"META_TICKET", kMetaTicket},
      {"META_SIZE_MISMATCH", kMetaSizeMismatch},
      {"META_SIZE", kMetaSize},
      {"CURSOR_OFFSET", kCursorOffset},
      {"CURSOR_OVERFLOW", kCursorOverflow},
      {"CURSOR_INVALID", kCursorInvalid},
      {"CURSOR_TICKET", kCursorTicket},
      {"CURSOR_SIZE", kCursorSize},
      {"ROW_VALID", kRowValid},
      {"ROW_IGNORED", kRowIgnored},
      {"ROW_BAD_TARGET", kRowBadTarget},
      {"MAX_COUNTER", kMaxCounter},
      {"MAX_INTEGER_BETA", kMaxIntegerBeta},
  };
  for (const auto& [name, value] : slots) {
    if (PyModule_AddIntConstant(module, name, static_cast<long>(value)) != 0) {
      Py_DECREF(module);
      return nullptr;
    }
  }
  return module;
}
}

TORCH_LIBRARY(sbkernels, m) {
  // Appends sources[t][indices[:count]] to outputs[t] at row cursor[0] for every t in one launch and
  // advances the cursor. cursor: int64 (4,), slots in slots.h: [offset, overflow, invalid, ticket]. Rows that do
  // not fit below the outputs' capacity are not written and are added to cursor[1]; an index outside
  // [0, N) keeps its slot, which is zero-filled and added to cursor[2]. count is read on the device.
  m.def(
      "gather_rows(Tensor[] sources, Tensor indices, Tensor count, Tensor(a!)[] outputs, Tensor(b!) cursor)"
      " -> ()");
  // Native CPU bodies of the selection ops (cpu/select_cpu.cpp), called by the Python ops for
  // backend="native": the fused "sb" pass (fixed_prob >= 0: policy "uniform" with a rate), and the row
  // statistics (loss, importance score, Philox uniform) of the batch-level policies.
  m.def(
      "select_sb_cpu(Tensor? logits, Tensor? targets, Tensor? losses, Tensor? flags, Tensor(a!) history,"
      " Tensor(b!) meta, float beta, float floor, int prime, int ignore_index, float label_smoothing,"
      " float fixed_prob, int beta_int) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "row_stats_cpu(Tensor? logits, Tensor? targets, Tensor? losses, Tensor meta, int ignore_index,"
      " float label_smoothing, int row_offset) -> (Tensor, Tensor, Tensor)");
  // gradmatch's residuals softmax(x) - onehot(t) (N, C) float32 and the losses, natively (cpu/select_cpu.cpp).
  m.def("residuals_cpu(Tensor logits, Tensor targets, int ignore_index) -> (Tensor, Tensor)");
  // Per-token losses of LM logits (B, T, V) against labels (B, T): (B, T - 1) with the causal shift, else
  // (B, T), float32 (cpu/select_cpu.cpp). The body of sequence_losses and linear_sequence_losses natively.
  m.def(
      "token_losses_cpu(Tensor logits, Tensor labels, bool shift, int ignore_index, float label_smoothing)"
      " -> Tensor");
  // The softmax statistics (3, N) float32 of one (N, C) tile of logits starting at column column_offset:
  // logsumexp, the label's logit if in the tile (else 0), the logit sum if logit_sums (cpu/tile_stats_cpu.cpp).
  // The body of linear_sequence_losses natively, one tile at a time.
  m.def("tile_stats_cpu(Tensor logits, Tensor labels, int column_offset, bool logit_sums) -> Tensor");
  // Native CPU body of the batch-level policies (cpu/sample_cpu.cpp): policy "keep" (param = keep),
  // "uniform" (k rows) or "importance" (k draws). Returns (indices, count, loss, prob, weight); weight is 0
  // except for "importance".
  m.def(
      "sample_rows_cpu(Tensor? logits, Tensor? targets, Tensor? losses, Tensor(a!) meta, str policy, float param,"
      " int k, int ignore_index, int row_offset) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The instruction set of the native CPU kernels: "" reads it; "best", "avx512", "avx2" or "default" sets it.
  m.def("cpu_isa(str request) -> str", [](std::string request) { return sbkernels::cpu::cpu_isa(request); });
}
