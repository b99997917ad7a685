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
                              uintptr_t s, uintptr_t phases, bool tf32) {                                      \
    const int err = pyrnn::cuda::cell##_resident(a, backward, bs, off, counter, phases, s, tf32);              \
    if (err == pyrnn::cuda::kNotResident) return false;                                                        \
    check(err, #cell "_resident");                                                                             \
    return true;                                                                                               \
  }, py::arg("a"), py::arg("backward"), py::arg("batch_sizes"), py::arg("offsets"), py::arg("counter"),        \
     py::arg("stream"), py::arg("phases") = 0, py::arg("tf32") = false);
  m.def("resident_plan", [](int G, const RecurrenceArgs& a, bool backward, int sms, size_t max_dyn_smem, bool tf32) {
    const pyrnn::cuda::ResidentPlanInfo p = pyrnn::cuda::resident_plan_info(G, a, backward, sms, max_dyn_smem, tf32);
    py::dict d;
    d["ok"] = p.ok;
    d["blocks"] = p.blocks;
    d["units_per_block"] = p.units_per_block;
    d["outputs_per_warp"] = p.outputs_per_warp;
    d["k_per_lane"] = p.k_per_lane;
    d["warps_per_output"] = p.warps_per_output;
    d["chunk_rows"] = p.chunk_rows;
    d["staged_row_length"] = p.staged_row_length;
    d["row_quantum"] = p.row_quantum;
    d["mma"] = p.mma;
    d["mma_output_tiles"] = p.mma_output_tiles;
    d["mma_k_steps"] = p.mma_k_steps;
    d["gx_staged"] = p.gx_staged;
    d["dyn_smem"] = p.dyn_smem;
    d["static_smem"] = p.static_smem;
    return d;
  }, "The resident kernels' launch plan for a layer (G gates, a.H, a.B, a.P, a.dtype) on a device with sms SMs",
     py::arg("G"), py::arg("a"), py::arg("backward"), py::arg("sms"), py::arg("max_dyn_smem"), py::arg("tf32") = false);
  m.def("mma_tile_emulate", &pyrnn::cuda::mma_tile_emulate,
        "The TF32 MMA tile's fragment code run on the host (tests): out = xs . w^T; False if not instantiated");
  m.def("gemm_tf32_available", &pyrnn::cuda::gemm_tf32_available, "Whether cuBLAS could be loaded");
  m.def("gemm_tf32", [](int64_t M, int64_t N, int64_t K, uintptr_t a, int64_t sa_m, int64_t sa_k, uintptr_t b,
                        int64_t sb_k, int64_t sb_n, uintptr_t c, float beta, uintptr_t ws, size_t ws_bytes,
                        uintptr_t s) {
    const int err = pyrnn::cuda::gemm_tf32(M, N, K, a, sa_m, sa_k, b, sb_k, sb_n, c, beta, ws, ws_bytes, s);
    if (err == pyrnn::cuda::kNoCublas) return false;
    if (err == pyrnn::cuda::kBadGemmLayout) throw std::runtime_error("pyrnn gemm_tf32: unsupported strides or sizes");
    if (err >= pyrnn::cuda::kCublasError)
      throw std::runtime_error("pyrnn gemm_tf32: cuBLAS status " + std::to_string(err - pyrnn::cuda::kCublasError));
    check(err, "gemm_tf32");
    return true;
  }, "C [M, N] = A @ B + beta * C in TF32 (cuBLAS loaded at run time); False where cuBLAS is unavailable");
  PYRNN_BIND(lstm)
  PYRNN_BIND(gru)
  PYRNN_BIND(rnn)
#undef PYRNN_BIND
}
