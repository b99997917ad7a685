// pybind11 module pyrnn._C: the CPU kernels behind raw pointers and sizes (no torch headers), with the
// instruction set picked once at import from cpuid and overridable for tests (PYRNN_ISA or set_isa).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels_api.h"
#include "thread_team.h"
#include "workspace_pool.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace py = pybind11;
using pyrnn::RecurrenceArgs;

namespace {

using Kernel = void (*)(const RecurrenceArgs&);
struct KernelSet {
  const char* name;
  Kernel lstm_forward, lstm_backward, gru_forward, gru_backward, rnn_forward, rnn_backward;
  void (*gemm)(const pyrnn::GemmSpec&);
  double (*fma_peak_gflops)(int, int64_t);
};

#define PYRNN_KERNEL_SET(isa)                                                                          \
  KernelSet {                                                                                          \
    #isa, pyrnn::isa::lstm_forward, pyrnn::isa::lstm_backward, pyrnn::isa::gru_forward,               \
        pyrnn::isa::gru_backward, pyrnn::isa::rnn_forward, pyrnn::isa::rnn_backward, pyrnn::isa::gemm, \
        pyrnn::isa::fma_peak_gflops                                                                     \
  }

// Instruction sets this build has and this CPU runs, best first.
std::vector<KernelSet> supported_sets() {
  std::vector<KernelSet> sets;
#if defined(PYRNN_HAVE_AVX512)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq"))
    sets.push_back(PYRNN_KERNEL_SET(avx512));
#endif
#if defined(PYRNN_HAVE_AVX2)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) sets.push_back(PYRNN_KERNEL_SET(avx2));
#endif
  sets.push_back(PYRNN_KERNEL_SET(portable));
  return sets;
}

const KernelSet* active = nullptr;

void set_isa(const std::string& name) {
  static const std::vector<KernelSet> sets = supported_sets();
  for (const auto& s : sets) {
    if (name == "auto" || name == s.name) {
      active = &s;
      return;
    }
  }
  std::string have;
  for (const auto& s : sets) have += std::string(have.empty() ? "" : ", ") + s.name;
  throw std::invalid_argument("pyrnn: instruction set '" + name + "' is not available here (have: " + have + ")");
}

// The CPU's maker, by cpuid: which GEMM serves the large non-recurrent products (pyrnn/ops.py _torch_gemm).
std::string cpu_vendor() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_is("intel")) return "intel";
  if (__builtin_cpu_is("amd")) return "amd";
#endif
  return "other";
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const auto& s : supported_sets()) names.emplace_back(s.name);
  return names;
}

template <Kernel KernelSet::*member>
void call(const RecurrenceArgs& args) {
  if (args.T < 1) throw std::invalid_argument("pyrnn: T must be >= 1");
  if (args.H < 1) throw std::invalid_argument("pyrnn: H must be >= 1");
  (active->*member)(args);
}

// Asks the kernel to back the 2 MiB-aligned interior of [ptr, ptr + nbytes) with transparent huge pages.
// The workspaces of a training step are tens of MiB, freshly allocated each call: faulting them in 4 KiB at a
// time cost ~15% of an LSTM step. Returns the bytes advised (0 where unsupported or refused).
int64_t advise_huge_pages(uintptr_t ptr, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (ptr + kHuge - 1) & ~(kHuge - 1), end = (ptr + static_cast<uintptr_t>(nbytes)) & ~(kHuge - 1);
  if (nbytes <= 0 || end <= begin) return 0;
  return madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) == 0 ? static_cast<int64_t>(end - begin) : 0;
#else
  (void)ptr;
  (void)nbytes;
  return 0;
#endif
}

// The DLPack ABI (the "dltensor" capsule torch.from_dlpack takes), declared from its published spec so that
// pool buffers become torch tensors whose last release hands the memory back to the pool.
struct DLDevice {
  int32_t device_type;  // 1 = CPU
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // 1 = unsigned int
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // null = compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};

struct PoolBuffer {
  DLManagedTensor managed;
  int64_t shape[1];
};

void release_pool_buffer(DLManagedTensor* managed) {
  pyrnn::pool_release(managed->dl_tensor.data);
  delete static_cast<PoolBuffer*>(managed->manager_ctx);
}

// A uint8 [nbytes] pool buffer as a DLPack capsule (torch.from_dlpack consumes it).
py::object pool_buffer(int64_t nbytes) {
  if (nbytes < 0) throw std::invalid_argument("pyrnn: negative buffer size");
  void* data = pyrnn::pool_acquire(nbytes);
  if (!data) throw std::bad_alloc();
  auto* buffer = new PoolBuffer{};
  buffer->shape[0] = nbytes;
  buffer->managed.dl_tensor = DLTensor{data, DLDevice{1, 0}, 1, DLDataType{1, 8, 1}, buffer->shape, nullptr, 0};
  buffer->managed.manager_ctx = buffer;
  buffer->managed.deleter = &release_pool_buffer;
  PyObject* capsule = PyCapsule_New(&buffer->managed, "dltensor", [](PyObject* cap) {
    // Still named "dltensor": nobody took ownership, so the buffer goes back here.
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      managed->deleter(managed);
    }
  });
  if (!capsule) {
    release_pool_buffer(&buffer->managed);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(capsule);
}

// Cells: one call with every pointer positional (0 = absent). Filling a RecurrenceArgs attribute by attribute
// from Python cost ~5 us per call, a third of an LSTMCell step at B=1. mode: 0 LSTM, 1 GRU, 2 RNN tanh, 3 RNN relu.
RecurrenceArgs cell_args(int mode, int dtype, int nthreads, int64_t B, int64_t I, int64_t H, uintptr_t x,
                         uintptr_t w_ih, uintptr_t w_hh) {
  if (mode < 0 || mode > 3) throw std::invalid_argument("pyrnn: unknown cell mode");
  if (B < 1 || I < 1 || H < 1) throw std::invalid_argument("pyrnn: cell sizes must be >= 1");
  RecurrenceArgs a;
  a.dtype = dtype;
  a.nthreads = nthreads;
  a.nonlinearity = mode == 3 ? static_cast<int>(pyrnn::Nonlinearity::kRelu) : 0;
  a.T = 1, a.B = B, a.H = H, a.I = I, a.y_stride = H;
  a.x = x, a.w_ih = w_ih, a.w_hh = w_hh;
  return a;
}

int64_t cell_gates(int mode) { return mode == 0 ? 4 : mode == 1 ? 3 : 1; }

Kernel KernelSet::*cell_kernel(int mode, bool backward) {
  if (mode == 0) return backward ? &KernelSet::lstm_backward : &KernelSet::lstm_forward;
  if (mode == 1) return backward ? &KernelSet::gru_backward : &KernelSet::gru_forward;
  return backward ? &KernelSet::rnn_backward : &KernelSet::rnn_forward;
}

// Scratch for a cell call (doubles: room for either dtype), kept per calling thread and grown as needed, like
// torch's own CPU allocator keeps blocks: a fresh std::vector per call zero-filled it and, past glibc's mmap
// threshold (128 KiB: the gx of an LSTM cell at B=32 H=256), mapped and page-faulted it anew on every call.
double* cell_scratch(size_t n) {
  thread_local std::vector<double> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

// x: [B, I], h0/c0: [B, H], w_ih: [G*H, I], w_hh: [G*H, H], b_ih/b_hh: [G*H]; writes h, c (LSTM) [B, H] and, when
// given, the workspace gates [B, G*H] (LSTM, GRU) and gh_n [B, H] (GRU).
void cell_forward(int mode, int dtype, int nthreads, int64_t B, int64_t I, int64_t H, uintptr_t x, uintptr_t h0,
                  uintptr_t c0, uintptr_t w_ih, uintptr_t w_hh, uintptr_t b_ih, uintptr_t b_hh, uintptr_t h,
                  uintptr_t c, uintptr_t gates, uintptr_t gh_n) {
  if (!x) throw std::invalid_argument("pyrnn: cell_forward needs x");
  RecurrenceArgs a = cell_args(mode, dtype, nthreads, B, I, H, x, w_ih, w_hh);
  const int64_t G = cell_gates(mode);
  a.gx = reinterpret_cast<uintptr_t>(cell_scratch(static_cast<size_t>(B * G * H)));  // [B, G*H], the kernel's
  a.h0 = h0, a.c0 = c0, a.b_ih = b_ih, a.b_hh = b_hh;
  a.y = a.h_n = h;     // one step: the output is the final state
  a.cell = a.c_n = c;  // likewise the cell state
  a.gates = gates, a.gh_n = gh_n;
  if (mode == 1 && b_hh)  // GRU: b_hn = b_hh[2H:] sits inside r * (...)
    a.b_hn = b_hh + static_cast<uintptr_t>(2 * H) * (dtype == static_cast<int>(pyrnn::DType::kFloat64) ? 8 : 4);
  (active->*cell_kernel(mode, false))(a);
}

// Backward of cell_forward from dh (and dc) [B, H]: writes dh0 [B, H], dc0 (LSTM) [B, H] and, with x given, dx
// [B, I] and (where given) the weight gradients dw_ih [G*H, I], dw_hh [G*H, H], db_ih, db_hh [G*H]. With x = 0
// the caller takes the gate gradients instead (d_gates [B, G*H] and, GRU, d_gates_h [B, G*H], where its n part
// differs) and forms dx and the weight gradients itself (torch's MKL GEMMs on Intel CPUs).
void cell_backward(int mode, int dtype, int nthreads, int64_t B, int64_t I, int64_t H, uintptr_t x, uintptr_t h0,
                   uintptr_t c0, uintptr_t w_ih, uintptr_t w_hh, uintptr_t h, uintptr_t c, uintptr_t gates,
                   uintptr_t gh_n, uintptr_t dh, uintptr_t dc, uintptr_t dx, uintptr_t dh0, uintptr_t dc0,
                   uintptr_t dw_ih, uintptr_t dw_hh, uintptr_t db_ih, uintptr_t db_hh, uintptr_t d_gates,
                   uintptr_t d_gates_h) {
  RecurrenceArgs a = cell_args(mode, dtype, nthreads, B, I, H, x, w_ih, w_hh);
  const int64_t G = cell_gates(mode);
  // dh arrives as dy and dh_n is zero; the gate gradients (unless the caller takes them) and the driver's
  // two-step rings (which a single step only names) are scratch. doubles: room for either dtype.
  double* scratch = cell_scratch(static_cast<size_t>(5 * B * H + 2 * B * G * H));
  double* zeros = scratch + 4 * B * H;
  std::fill(zeros, zeros + B * H, 0.0);
  a.dy = dh, a.dh_n = reinterpret_cast<uintptr_t>(zeros);
  a.dh_prev_ws = reinterpret_cast<uintptr_t>(scratch);
  a.dc_prev_ws = reinterpret_cast<uintptr_t>(scratch + 2 * B * H);
  a.d_gates = d_gates ? d_gates : reinterpret_cast<uintptr_t>(scratch + 5 * B * H);
  if (mode == 1) a.d_gates_h = d_gates_h ? d_gates_h : reinterpret_cast<uintptr_t>(scratch + 5 * B * H + B * G * H);
  // h (the output, which the RNN's derivative reads as h_n) and c (LSTM, recomputed from the gates when 0) may be
  // 0 where the caller did not keep them.
  a.y = a.h_n = h, a.cell = c, a.h0 = h0, a.c0 = c0, a.dc_n = dc, a.gates = gates, a.gh_n = gh_n, a.h_prev_ws = h0;
  a.dx = dx, a.dh0 = dh0, a.dc0 = dc0, a.dw_ih = dw_ih, a.dw_hh = dw_hh, a.db_ih = db_ih, a.db_hh = db_hh;
  (active->*cell_kernel(mode, true))(a);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyrnn CPU kernels: fused per-layer recurrences (forward and BPTT) on raw pointers";
  const char* env = std::getenv("PYRNN_ISA");
  set_isa(env && *env ? env : "auto");

  py::class_<RecurrenceArgs> args(m, "RecurrenceArgs");
  args.def(py::init<>());
#define FIELD(name) args.def_readwrite(#name, &RecurrenceArgs::name)
  FIELD(dtype); FIELD(nonlinearity); FIELD(nthreads); FIELD(reverse); FIELD(T); FIELD(B); FIELD(H); FIELD(P);
  FIELD(y_stride); FIELD(batch_sizes); FIELD(gx); FIELD(b_hn); FIELD(h0);
  FIELD(c0); FIELD(y); FIELD(h_n); FIELD(c_n); FIELD(cell); FIELD(cell_ring); FIELD(proj_in); FIELD(gates);
  FIELD(gh_n); FIELD(h_prev_ws); FIELD(w_hh); FIELD(w_hr); FIELD(dy); FIELD(dh_n); FIELD(dc_n); FIELD(d_gates);
  FIELD(d_gates_h); FIELD(dh0); FIELD(dc0); FIELD(dh_total); FIELD(dh_prev_ws); FIELD(dc_prev_ws);
  FIELD(I); FIELD(x); FIELD(w_ih); FIELD(b_ih); FIELD(b_hh); FIELD(dx);
#undef FIELD

  py::class_<pyrnn::GemmSpec> gemm_spec(m, "GemmSpec");
  gemm_spec.def(py::init<>());
#define GFIELD(name) gemm_spec.def_readwrite(#name, &pyrnn::GemmSpec::name)
  GFIELD(dtype); GFIELD(nthreads); GFIELD(M); GFIELD(N); GFIELD(K); GFIELD(a); GFIELD(sa_m); GFIELD(sa_k);
  GFIELD(b); GFIELD(sb_k); GFIELD(sb_n); GFIELD(c); GFIELD(ldc); GFIELD(accumulate); GFIELD(bias);
#undef GFIELD

  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("gemm", [](const pyrnn::GemmSpec& s) { active->gemm(s); }, nogil,
        "C (+)= A B (+ bias) on raw pointers and element strides");
  m.def("cell_forward", &cell_forward, nogil, "one step of a cell, input projection included (raw pointers)");
  m.def("cell_backward", &cell_backward, nogil, "backward of cell_forward, dx included (raw pointers)");
  m.def("lstm_forward", &call<&KernelSet::lstm_forward>, nogil);
  m.def("lstm_backward", &call<&KernelSet::lstm_backward>, nogil);
  m.def("gru_forward", &call<&KernelSet::gru_forward>, nogil);
  m.def("gru_backward", &call<&KernelSet::gru_backward>, nogil);
  m.def("rnn_forward", &call<&KernelSet::rnn_forward>, nogil);
  m.def("rnn_backward", &call<&KernelSet::rnn_backward>, nogil);
  m.def(
      "set_parallel_threshold", [](int64_t macs) { pyrnn::min_macs_per_thread().store(macs); }, py::arg("macs"),
      "per-step multiply-adds each extra thread needs (tests set 1 to force the threaded path)");
  m.def("get_parallel_threshold", [] { return pyrnn::min_macs_per_thread().load(); });
  m.def(
      "set_row_split_min_rows", [](int64_t rows) { pyrnn::row_split_min_rows().store(rows); }, py::arg("rows"),
      "rows per thread from which a sequence is split by batch rows rather than hidden units (tests: 1 forces the "
      "row split wherever it applies, a huge value the unit split)");
  m.def("get_row_split_min_rows", [] { return pyrnn::row_split_min_rows().load(); });
  m.def("fma_peak_gflops", [](int nthreads, int64_t iterations) { return active->fma_peak_gflops(nthreads, iterations); },
        nogil, py::arg("nthreads"), py::arg("iterations") = 100000000,
        "measured float32 FMA throughput of this machine with the active ISA, GFLOP/s");
  m.def("thread_backend", [] { return std::string(pyrnn::ThreadTeam::backend()); },
        "'openmp' when the kernels run on torch's OpenMP threads, 'team' on pyrnn's own");
  m.def("advise_huge_pages", &advise_huge_pages, py::arg("ptr"), py::arg("nbytes"),
        "madvise(MADV_HUGEPAGE) the 2 MiB-aligned interior of a buffer; returns the bytes advised");
  m.def("pool_buffer", &pool_buffer, py::arg("nbytes"),
        "a uint8 [nbytes] workspace buffer from pyrnn's cache, as a DLPack capsule for torch.from_dlpack");
  m.def("pool_stats", [] {
    const pyrnn::PoolStats s = pyrnn::pool_stats();
    return py::dict(py::arg("live_bytes") = s.live_bytes, py::arg("cached_bytes") = s.cached_bytes,
                    py::arg("limit_bytes") = s.limit_bytes, py::arg("hits") = s.hits, py::arg("misses") = s.misses);
  }, "workspace cache: bytes in use and kept idle, the idle cap, hits and misses");
  m.def("pool_set_limit", &pyrnn::pool_set_limit, py::arg("bytes"), "cap on the idle bytes the cache keeps");
  m.def("pool_clear", &pyrnn::pool_clear, "free every idle workspace buffer");
  m.def("cpu_vendor", &cpu_vendor, "'intel', 'amd' or 'other' (cpuid)");
  m.def("isa", [] { return std::string(active->name); }, "instruction set the kernels run with");
  m.def("available_isas", &available_isas, "instruction sets this build and CPU support, best first");
  m.def("set_isa", &set_isa, py::arg("name"), "force an instruction set ('auto' for the best)");
}
