// Entry points of the CPU kernels. Each cell file is compiled once per instruction set (see CMakeLists.txt)
// into namespace pyrnn::<isa>; bindings.cpp picks one at run time from cpuid.
#pragma once

#include "recurrence_args.h"

#define PYRNN_DECLARE_KERNELS(isa)                   \
  namespace pyrnn {                                  \
  namespace isa {                                    \
  void lstm_forward(const RecurrenceArgs& args);     \
  void lstm_backward(const RecurrenceArgs& args);    \
  void gru_forward(const RecurrenceArgs& args);      \
  void gru_backward(const RecurrenceArgs& args);     \
  void rnn_forward(const RecurrenceArgs& args);      \
  void rnn_backward(const RecurrenceArgs& args);     \
  void gemm(const GemmSpec& spec);                   \
  double fma_peak_gflops(int nthreads, int64_t iterations); \
  }                                                  \
  }

// Compiled with the flags of the build's baseline; always present.
PYRNN_DECLARE_KERNELS(portable)
#if defined(PYRNN_HAVE_AVX2)
PYRNN_DECLARE_KERNELS(avx2)
#endif
#if defined(PYRNN_HAVE_AVX512)
PYRNN_DECLARE_KERNELS(avx512)
#endif
