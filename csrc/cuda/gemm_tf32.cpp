// The layers' big non-recurrent GEMMs (input projection of all steps, weight gradients) in TF32 on tensor
// cores, for float32 on CUDA where torch.nn's cuDNN layers would use TF32 too (the host decides: pyrnn/ops.py).
// torch's own matmul follows a different, process-wide switch (torch.backends.cuda.matmul, off by default), so
// this calls cuBLAS directly. cuBLAS is loaded at run time (torch has already loaded it): no link-time
// dependency, and without it the host falls back to torch's float32 GEMM. Host code only, no torch headers.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <climits>
#include <cstdint>
#include <mutex>

#include "cells.h"

namespace pyrnn {
namespace cuda {
namespace {

// The few cuBLAS declarations used (cublas_api.h; a stable C ABI), so the build needs no cuBLAS headers.
using Handle = void*;
using CreateFn = int (*)(Handle*);
using SetStreamFn = int (*)(Handle, cudaStream_t);
using SetWorkspaceFn = int (*)(Handle, void*, size_t);
using GemmExFn = int (*)(Handle, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                         const void*, void*, int, int, int, int);
constexpr int kOpN = 0, kOpT = 1, kR32F = 0, kComputeFastTF32 = 77, kGemmDefault = -1;

struct Cublas {
  CreateFn create = nullptr;
  SetStreamFn set_stream = nullptr;
  SetWorkspaceFn set_workspace = nullptr;
  GemmExFn gemm_ex = nullptr;
  Handle handles[64] = {};  // per device, created on first use
  std::mutex mutex;         // a handle serves one host thread at a time
};

Cublas* load() {
  static Cublas* lib = [] () -> Cublas* {
    static const char* names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"};
    void* so = nullptr;
    for (const char* name : names)  // the one torch loaded, else any on the library path
      if ((so = dlopen(name, RTLD_NOW | RTLD_NOLOAD))) break;
    for (int i = 0; !so && i < 4; ++i) so = dlopen(names[i], RTLD_NOW);
    if (!so) return nullptr;
    auto* c = new Cublas;
    c->create = reinterpret_cast<CreateFn>(dlsym(so, "cublasCreate_v2"));
    c->set_stream = reinterpret_cast<SetStreamFn>(dlsym(so, "cublasSetStream_v2"));
    c->set_workspace = reinterpret_cast<SetWorkspaceFn>(dlsym(so, "cublasSetWorkspace_v2"));
    c->gemm_ex = reinterpret_cast<GemmExFn>(dlsym(so, "cublasGemmEx"));
    if (!c->create || !c->set_stream || !c->gemm_ex) return nullptr;
    return c;
  }();
  return lib;
}

// A row-major [rows, cols] matrix at X[r][c] = base[r * s_r + c * s_c] as a cuBLAS (column-major) operand
// equal to its transpose [cols, rows]: op N where columns are unit-stride, op T where rows are.
bool as_transposed_operand(int64_t rows, int64_t cols, int64_t s_r, int64_t s_c, int& op, int64_t& ld) {
  if ((s_c == 1 || cols == 1) && (rows == 1 || s_r >= cols)) {
    op = kOpN;
    ld = rows == 1 ? (cols > 1 ? cols : 1) : s_r;
    return true;
  }
  if ((s_r == 1 || rows == 1) && (cols == 1 || s_c >= rows)) {
    op = kOpT;
    ld = cols == 1 ? (rows > 1 ? rows : 1) : s_c;
    return true;
  }
  return false;
}

}  // namespace

bool gemm_tf32_available() { return load() != nullptr; }

int gemm_tf32(int64_t M, int64_t N, int64_t K, uintptr_t a, int64_t sa_m, int64_t sa_k, uintptr_t b, int64_t sb_k,
              int64_t sb_n, uintptr_t c, float beta, uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
  Cublas* lib = load();
  if (!lib) return kNoCublas;
  int op_a = 0, op_b = 0;
  int64_t lda = 0, ldb = 0;
  // C [M, N] row-major is C^T [N, M] column-major (ld N) = B^T [N, K] . A^T [K, M]
  if (!as_transposed_operand(M, K, sa_m, sa_k, op_a, lda) || !as_transposed_operand(K, N, sb_k, sb_n, op_b, ldb))
    return kBadGemmLayout;
  for (int64_t v : {M, N, K, lda, ldb})
    if (v > INT_MAX) return kBadGemmLayout;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return kBadGemmLayout;
  std::lock_guard<std::mutex> lock(lib->mutex);
  Handle& h = lib->handles[dev];
  if (!h) {
    if (int s = lib->create(&h)) {
      h = nullptr;
      return kCublasError + s;
    }
  }
  if (int s = lib->set_stream(h, reinterpret_cast<cudaStream_t>(stream))) return kCublasError + s;
  // A workspace the caller allocated on this stream: cuBLAS's own default one is shared by every stream.
  if (lib->set_workspace && workspace)
    if (int s = lib->set_workspace(h, reinterpret_cast<void*>(workspace), workspace_bytes)) return kCublasError + s;
  const float alpha = 1.f;
  const int s = lib->gemm_ex(h, op_b, op_a, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha,
                             reinterpret_cast<const void*>(b), kR32F, static_cast<int>(ldb),
                             reinterpret_cast<const void*>(a), kR32F, static_cast<int>(lda), &beta,
                             reinterpret_cast<void*>(c), kR32F, static_cast<int>(N), kComputeFastTF32, kGemmDefault);
  return s ? kCublasError + s : 0;
}

}  // namespace cuda
}  // namespace pyrnn
