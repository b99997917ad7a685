// pybind11 module pyrnn._cuda: the CUDA kernels behind raw device pointers, sizes and a stream handle (no
// torch headers). Takes the RecurrenceArgs type registered by pyrnn._C (import pyrnn._C first).
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "cells.h"

namespace py = pybind11;
using pyrnn::RecurrenceArgs;

namespace {

void check(int err, const char* what) {
  if (err != 0) throw std::runtime_error(std::string("pyrnn CUDA kernel ") + what + " failed: CUDA error " + std::to_string(err));
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pyrnn CUDA kernels: persistent per-layer recurrences (forward and BPTT) on raw device pointers";
  py::module_::import("pyrnn._C");  // registers RecurrenceArgs
#define PYRNN_BIND(cell)                                                                                       \
  m.def(#cell "_forward", [](const RecurrenceArgs& a, uintptr_t w, uintptr_t bs, uintptr_t off, uintptr_t s) {  \
    check(pyrnn::cuda::cell##_forward(a, w, bs, off, s), #cell "_forward");                                    \
  });                                                                                                          \
  m.def(#cell "_backward", [](const RecurrenceArgs& a, uintptr_t bs, uintptr_t off, uintptr_t s) {              \
    check(pyrnn::cuda::cell##_backward(a, bs, off, s), #cell "_backward");                                     \
  });                                                                                                          \
  m.def(#cell "_resident", [](const RecurrenceArgs& a, bool backward, uintptr_t bs, uintptr_t off, uintptr_t counter, \
                              uintptr_t s) {                                                                   \
    const int err = pyrnn::cuda::cell##_resident(a, backward, bs, off, counter, s);                            \
    if (err == pyrnn::cuda::kNotResident) return false;                                                        \
    check(err, #cell "_resident");                                                                             \
    return true;                                                                                               \
  });
  m.def("resident_plan", [](int G, const RecurrenceArgs& a, bool backward, int sms, size_t max_dyn_smem) {
    const pyrnn::cuda::ResidentPlanInfo p = pyrnn::cuda::resident_plan_info(G, a, backward, sms, max_dyn_smem);
    py::dict d;
    d["ok"] = p.ok;
    d["blocks"] = p.blocks;
    d["units_per_block"] = p.units_per_block;
    d["outputs_per_warp"] = p.outputs_per_warp;
    d["k_per_lane"] = p.k_per_lane;
    d["warps_per_output"] = p.warps_per_output;
    d["chunk_rows"] = p.chunk_rows;
    d["staged_row_length"] = p.staged_row_length;
    d["dyn_smem"] = p.dyn_smem;
    d["static_smem"] = p.static_smem;
    return d;
  }, "The resident kernels' launch plan for a layer (G gates, a.H, a.B, a.P, a.dtype) on a device with sms SMs");
  PYRNN_BIND(lstm)
  PYRNN_BIND(gru)
  PYRNN_BIND(rnn)
#undef PYRNN_BIND
}
