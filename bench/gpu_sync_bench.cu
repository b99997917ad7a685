// Per-step grid synchronisation and state exchange among co-resident blocks, as the resident kernels
// (csrc/cuda/resident.cuh) do each step: barrier variants alone and with B x H floats exchanged through L2,
// and a barrier-free exchange of {value, step} 64-bit words. Standalone (no pyrnn build); on a GPU machine:
//   nvcc -O3 -arch=sm_90a bench/gpu_sync_bench.cu -o /tmp/sync_bench && /tmp/sync_bench
// Figures from an H100: BENCHMARKS.md (GPU section).
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>

constexpr int kThreads = 256;
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)

__device__ __forceinline__ void bar_fence(unsigned* counter, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1u);
    while (*reinterpret_cast<volatile unsigned*>(counter) < target) {}
    __threadfence();
  }
  __syncthreads();
}
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v; asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory"); return v;
}
__device__ __forceinline__ void red_release(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" :: "l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void st_release(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" :: "l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void bar_relacq(unsigned* counter, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    red_release(counter, 1u);
    while (ld_acquire(counter) < target) {}
  }
  __syncthreads();
}
// flags[block] = step (release); warp 0 waits until every flag >= step (acquire)
__device__ __forceinline__ void bar_flags(unsigned* flags, unsigned step) {
  __syncthreads();
  if (threadIdx.x < 32) {
    if (threadIdx.x == 0) st_release(flags + blockIdx.x, step);
    for (int b = threadIdx.x; b < gridDim.x; b += 32)
      while (ld_acquire(flags + b) < step) {}
    __syncwarp();
  }
  __syncthreads();
}
__device__ __forceinline__ void st_relaxed64(unsigned long long* p, unsigned long long v) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" :: "l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ unsigned long long ld_relaxed64(const unsigned long long* p) {
  unsigned long long v; asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory"); return v;
}
__device__ __forceinline__ float value_of(int step, int b, int j) { return float((step * 7 + b * 131 + j) % 1000); }

// mode: 0 fence barrier, 1 rel/acq counter, 2 flag array; data: exchange B x H floats each step
template <int MODE, bool DATA>
__global__ void __launch_bounds__(kThreads, 1) step_kernel(int steps, int B, int H, int upb, float* buf, unsigned* sync, int* errors) {
  extern __shared__ float xs[];
  int err = 0;
  const int u0 = blockIdx.x * upb;
  for (int it = 0; it < steps; ++it) {
    float* cur = buf + (it & 1) * B * H;
    if (DATA) {
      for (int e = threadIdx.x; e < B * upb; e += kThreads) {
        int b = e / upb, j = u0 + e % upb;
        if (j < H) cur[b * H + j] = value_of(it, b, j);
      }
    }
    if (MODE == 0) bar_fence(sync, (it + 1) * gridDim.x);
    if (MODE == 1) bar_relacq(sync, (it + 1) * gridDim.x);
    if (MODE == 2) bar_flags(sync, it + 1);
    if (DATA) {
      const int n4 = B * H / 4;
      for (int c = threadIdx.x; c < n4; c += kThreads) reinterpret_cast<float4*>(xs)[c] = __ldcg(reinterpret_cast<const float4*>(cur) + c);
      __syncthreads();
      for (int e = threadIdx.x; e < B * H; e += kThreads) if (xs[e] != value_of(it, e / H, e % H)) ++err;
    }
  }
  if (err) atomicAdd(errors, err);
}

// LL exchange: {tag, value} in one 64-bit word; no barrier at all
__global__ void __launch_bounds__(kThreads, 1) ll_kernel(int steps, int B, int H, int upb, unsigned long long* buf, int* errors) {
  extern __shared__ float xs[];
  int err = 0;
  const int u0 = blockIdx.x * upb;
  for (int it = 0; it < steps; ++it) {
    unsigned long long* cur = buf + (it & 1) * B * H;
    const unsigned tag = it + 1;
    for (int e = threadIdx.x; e < B * upb; e += kThreads) {
      int b = e / upb, j = u0 + e % upb;
      if (j < H) st_relaxed64(cur + b * H + j, (unsigned long long)tag << 32 | __float_as_uint(value_of(it, b, j)));
    }
    constexpr int U = 8;
    for (int c0 = threadIdx.x; c0 < B * H; c0 += U * kThreads) {
      unsigned long long v[U];
#pragma unroll
      for (int q = 0; q < U; ++q) { int c = c0 + q * kThreads; v[q] = c < B * H ? ld_relaxed64(cur + c) : (unsigned long long)tag << 32; }
#pragma unroll
      for (int q = 0; q < U; ++q) {
        int c = c0 + q * kThreads;
        while ((unsigned)(v[q] >> 32) != tag) v[q] = ld_relaxed64(cur + c);
        if (c < B * H) xs[c] = __uint_as_float((unsigned)v[q]);
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < B * H; e += kThreads) if (xs[e] != value_of(it, e / H, e % H)) ++err;
    __syncthreads();
  }
  if (err) atomicAdd(errors, err);
}

int main() {
  int sms; CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int steps = 4000;
  float* buf; unsigned* sync; int* errors;
  CK(cudaMalloc(&buf, 2 * 64 * 4096 * 8)); CK(cudaMalloc(&sync, 4096)); CK(cudaMalloc(&errors, 4));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  const char* names[] = {"fence-counter", "relacq-counter", "flag-array", "LL-pairs"};
  printf("%-16s %5s %3s %12s %12s\n", "sync", "H", "B", "us/step sync", "us/step +data");
  for (int H : {256, 512, 1024}) for (int B : {1, 4, 16, 64}) for (int mode = 0; mode < 4; ++mode) {
    const int upb = (H + sms - 1) / sms, blocks = (H + upb - 1) / upb;
    size_t smem = (size_t)B * H * 4;
    if (smem > 200 * 1024) continue;  // the exchanged rows must fit in shared memory
    float us[2] = {0, 0};
    for (int data = 0; data < 2; ++data) {
      if (mode == 3 && !data) continue;
      void* fn = mode == 0 ? (data ? (void*)step_kernel<0, true> : (void*)step_kernel<0, false>)
               : mode == 1 ? (data ? (void*)step_kernel<1, true> : (void*)step_kernel<1, false>)
               : mode == 2 ? (data ? (void*)step_kernel<2, true> : (void*)step_kernel<2, false>) : (void*)ll_kernel;
      CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
      std::vector<float> t;
      for (int rep = 0; rep < 5; ++rep) {
        CK(cudaMemset(sync, 0, 4096)); CK(cudaMemset(errors, 0, 4)); CK(cudaMemset(buf, 0, 2 * 64 * 4096 * 8));
        int st = steps; int B_ = B, H_ = H, upb_ = upb;
        void* args6[] = {&st, &B_, &H_, &upb_, &buf, &sync, &errors};
        void* args5[] = {&st, &B_, &H_, &upb_, &buf, &errors};
        cudaEventRecord(e0);
        CK(cudaLaunchCooperativeKernel(fn, blocks, kThreads, mode == 3 ? args5 : args6, smem, 0));
        cudaEventRecord(e1); CK(cudaEventSynchronize(e1));
        float ms; cudaEventElapsedTime(&ms, e0, e1); t.push_back(ms * 1e3f / steps);
        int herr; CK(cudaMemcpy(&herr, errors, 4, cudaMemcpyDeviceToHost));
        if (herr && data) { printf("ERRORS %d in %s H=%d B=%d\n", herr, names[mode], H, B); }
      }
      std::sort(t.begin(), t.end()); us[data] = t[2];
    }
    printf("%-16s %5d %3d %12.2f %12.2f\n", names[mode], H, B, us[0], us[1]);
  }
  return 0;
}
