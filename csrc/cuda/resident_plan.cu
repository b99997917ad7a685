// Host-side views of the resident kernels for the tests, no device needed, so they are checked wherever
// pyrnn._cuda is built: the launch plan (resident.cuh; pure arithmetic) and the TF32 MMA tile's fragment code
// (mma_tile.cuh, emulated lane by lane).
#include "cells.h"
#include "resident.cuh"

namespace pyrnn {
namespace cuda {

ResidentPlanInfo resident_plan_info(int G, const RecurrenceArgs& a, bool backward, int sms, size_t max_dyn_smem,
                                    bool tf32) {
  const resident::Plan p = resident::plan(G, a, backward, sms, max_dyn_smem, tf32);
  ResidentPlanInfo info;
  info.ok = p.ok;
  info.blocks = p.blocks;
  info.units_per_block = p.lay.upb;
  info.outputs_per_warp = p.to;
  info.k_per_lane = p.ke;
  info.warps_per_output = p.lay.wk;
  info.chunk_rows = p.lay.chunk;
  info.staged_row_length = p.lay.ld;
  info.row_quantum = p.lay.quantum;
  info.mma = p.mma;
  info.mma_output_tiles = p.nt;
  info.mma_k_steps = p.ks;
  info.gx_staged = p.lay.gx_staged != 0;
  info.dyn_smem = static_cast<int64_t>(p.dyn_smem);
  info.static_smem = static_cast<int64_t>(sizeof(float) * resident::kRowChunk * resident::kMaxOutputs);
  return info;
}

bool mma_tile_emulate(int nt, int ks, bool half, uintptr_t w_ptr, int O, int K, uintptr_t xs_ptr, int rows,
                      uintptr_t out_ptr) {
  const float* w = reinterpret_cast<const float*>(w_ptr);  // [O, K]
  const float* xs = reinterpret_cast<const float*>(xs_ptr);
  float* out = reinterpret_cast<float*>(out_ptr);
  const int ld = resident::mma_row_length(ks);
  auto weight = [&](int o, int k) { return o < O && k < K ? w[static_cast<int64_t>(o) * K + k] : 0.f; };
#define PYRNN_EMULATE(NT_, KS_, HALF_)                                                      \
  if (nt == NT_ && ks == KS_ && half == HALF_) {                                            \
    resident::emulate_dot<NT_, KS_, HALF_>(weight, xs, ld, rows, O, out);                   \
    return true;                                                                            \
  }
  // the launch's instantiations (resident.cuh): forward nt 1..4 x ks 4..16, backward nt 1 x ks 4..64
  PYRNN_EMULATE(1, 4, false) PYRNN_EMULATE(1, 8, false) PYRNN_EMULATE(1, 16, false) PYRNN_EMULATE(1, 32, false)
  PYRNN_EMULATE(1, 64, false) PYRNN_EMULATE(1, 64, true) PYRNN_EMULATE(2, 4, false) PYRNN_EMULATE(3, 8, false)
  PYRNN_EMULATE(4, 16, false)
#undef PYRNN_EMULATE
  return false;
}

}  // namespace cuda
}  // namespace pyrnn
