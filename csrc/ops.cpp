// Op schemas of fused_s2s (TORCH_LIBRARY) and the CPU bindings. Fake kernels and autograd are registered
// in Python (fused_s2s/ops/). Importing fused_s2s._C runs these registrations.
#include <Python.h>
#include <torch/library.h>

#include "cpu/lstm_layer.h"

TORCH_LIBRARY(fused_s2s, m) {
  m.def(
      "lstm_layer_fwd(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? w_hr, Tensor? lengths, bool reverse) -> (Tensor y, Tensor h_n, Tensor c_n, Tensor gates, "
      "Tensor cells)");
  m.def(
      "lstm_layer_infer(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor? w_hr, Tensor? lengths, bool reverse) -> (Tensor y, Tensor h_n, Tensor c_n)");
  // need_dw has a default so that a graph torch.compile cached before the argument existed (inductor's cache
  // key does not hold op schemas) still runs, computing every gradient as it did then.
  m.def(
      "lstm_layer_bwd(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor x, Tensor h0, Tensor c0, Tensor w_ih, "
      "Tensor w_hh, Tensor? w_hr, Tensor? lengths, bool reverse, Tensor y, Tensor gates, Tensor cells, "
      "bool need_dx, bool need_dw=True) -> (Tensor dx, Tensor dh0, Tensor dc0, Tensor dw_ih, Tensor dw_hh, "
      "Tensor db, Tensor dw_hr)");
}

TORCH_LIBRARY_IMPL(fused_s2s, CPU, m) {
  m.impl("lstm_layer_fwd", &fused_s2s::cpu::lstm_layer_fwd);
  m.impl("lstm_layer_infer", &fused_s2s::cpu::lstm_layer_infer);
  m.impl("lstm_layer_bwd", &fused_s2s::cpu::lstm_layer_bwd);
}

// A Python module with no functions: `import fused_s2s._C` loads this library and its registrations.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fused_s2s C++ ops (registered in torch.ops.fused_s2s)",
                               -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
