// Host-side view of the resident kernels' launch plan (resident.cuh), for the tests: pure arithmetic, no
// device needed, so it is checked wherever pyrnn._cuda is built.
#include "cells.h"
#include "resident.cuh"

namespace pyrnn {
namespace cuda {

ResidentPlanInfo resident_plan_info(int G, const RecurrenceArgs& a, bool backward, int sms, size_t max_dyn_smem) {
  const resident::Plan p = resident::plan(G, a, backward, sms, max_dyn_smem);
  ResidentPlanInfo info;
  info.ok = p.ok;
  info.blocks = p.blocks;
  info.units_per_block = p.lay.upb;
  info.outputs_per_warp = p.to;
  info.k_per_lane = p.ke;
  info.warps_per_output = p.lay.wk;
  info.chunk_rows = p.lay.chunk;
  info.staged_row_length = p.lay.ld;
  info.gx_staged = p.lay.gx_staged != 0;
  info.dyn_smem = static_cast<int64_t>(p.dyn_smem);
  info.static_smem = static_cast<int64_t>(sizeof(float) * resident::kRowChunk * resident::kMaxOutputs);
  return info;
}

}  // namespace cuda
}  // namespace pyrnn
