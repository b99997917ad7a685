// Portable SIMD for the kernels: GCC/Clang vector extensions, so one source compiles to AVX-512, AVX2 or
// SSE2 code depending on the flags of the translation unit (see CMakeLists.txt), plus vectorised exp,
// sigmoid and tanh for float32 and float64 (polynomials accurate to a few ulp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace pyrnn {
namespace PYRNN_ISA {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kVecRegs = 32;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
constexpr int kVecRegs = 16;
#else
constexpr int kVecBytes = 16;
constexpr int kVecRegs = 16;
#endif

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef int32_t I __attribute__((vector_size(kVecBytes)));
  static constexpr int W = kVecBytes / 4;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef int64_t I __attribute__((vector_size(kVecBytes)));
  static constexpr int W = kVecBytes / 8;
};

template <typename T>
using Vec = typename Simd<T>::V;

template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void vstore(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}
// First n (<= W) lanes; the rest read as zero / are not written. Tails of H not a multiple of W.
// AVX-512 and AVX2 use masked loads and stores (masked-off lanes are never touched, so they cannot fault). A
// memcpy of a variable size was a call into libc (with a vzeroupper) and a store-to-load forwarding stall per
// tail vector: with H = 200 every row's last vector of every gate went that way.
#if defined(__AVX2__) && !defined(__AVX512F__)
template <typename T>
inline __m256i lane_mask(int n) {  // lanes i < n all ones
  if constexpr (std::is_same<T, float>::value)
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  else
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}
#endif
template <typename T>
inline Vec<T> vload(const T* p, int n) {
  if (n == Simd<T>::W) return vload(p);
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value)
    return (Vec<T>)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  else
    return (Vec<T>)_mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1), p);
#elif defined(__AVX2__)
  if constexpr (std::is_same<T, float>::value)
    return (Vec<T>)_mm256_maskload_ps(p, lane_mask<T>(n));
  else
    return (Vec<T>)_mm256_maskload_pd(p, lane_mask<T>(n));
#else
  Vec<T> v = Vec<T>{};
  std::memcpy(&v, p, sizeof(T) * n);
  return v;
#endif
}
template <typename T>
inline void vstore(T* p, Vec<T> v, int n) {
  if (n == Simd<T>::W) return vstore(p, v);
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value)
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), (__m512)v);
  else
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1), (__m512d)v);
#elif defined(__AVX2__)
  if constexpr (std::is_same<T, float>::value)
    _mm256_maskstore_ps(p, lane_mask<T>(n), (__m256)v);
  else
    _mm256_maskstore_pd(p, lane_mask<T>(n), (__m256d)v);
#else
  std::memcpy(p, &v, sizeof(T) * n);
#endif
}
// A broadcast of a constant (see vsplat for operands read from memory). 0 + x keeps constants in registers;
// written as x - 0 they became {1to16} memory operands of the epilogues' polynomials: LSTM forward 5-15% slower.
template <typename T>
inline Vec<T> vbroadcast(T x) {
  return Vec<T>{} + x;
}
// A broadcast of an operand: x - 0 rather than 0 + x, which the compiler may drop (exact for every x, -0
// included; 0 + -0 is +0, so an addition stays), so a broadcast of a loaded scalar folds into its use (a
// broadcast load, or an FMA with a {1to16} memory operand) instead of a scalar add and a register broadcast:
// two extra instructions per row and depth step in the microkernels.
template <typename T>
inline Vec<T> vsplat(T x) {
  return x - Vec<T>{};
}

// The two-source shuffles of a stage of S on the row pair (a, b), with constant masks: `low` takes a's lanes
// whose bit S is clear and, in the lanes where it is set, b's lanes S below; `high` takes a's lanes S above the
// clear ones and b's set ones.
template <typename T, int S>
inline void shuffle_pair(Vec<T> a, Vec<T> b, Vec<T>& low, Vec<T>& high) {
  constexpr int W = Simd<T>::W;
  using I = typename Simd<T>::I;
  I lo, hi;
  for (int l = 0; l < W; ++l) {
    lo[l] = (l & S) ? W + l - S : l;
    hi[l] = (l & S) ? W + l : l + S;
  }
  low = __builtin_shuffle(a, b, lo);
  high = __builtin_shuffle(a, b, hi);
}

// Transposes the W x W block held in v[0..W) (v[i] = row i) in registers: log2(W) stages, each swapping the
// off-diagonal S x S sub-blocks of row pairs (i, i + S).
template <typename T, int S>
inline void transpose_stage(Vec<T>* v) {
  constexpr int W = Simd<T>::W;
  for (int i = 0; i < W; ++i) {
    if (i & S) continue;
    shuffle_pair<T, S>(v[i], v[i + S], v[i], v[i + S]);
  }
  if constexpr (S > 1) transpose_stage<T, S / 2>(v);
}
template <typename T>
inline void transpose_block(Vec<T>* v) {
  if constexpr (Simd<T>::W > 1) transpose_stage<T, Simd<T>::W / 2>(v);
}

// Lane l of the result = the sum of v[l]'s lanes, for the W vectors v[0..W) (clobbered): transpose_block's
// stages with the two halves of each shuffle pair added instead of kept, so W - 1 pairs in all. After the stage
// of S, vector i < S holds partial sums of row i in its lanes with bit S clear and of row i + S in those with
// it set; at the end lane l holds row l's.
template <typename T, int S>
inline void fold_stage(Vec<T>* v) {
  for (int i = 0; i < S; ++i) {
    Vec<T> low, high;
    shuffle_pair<T, S>(v[i], v[i + S], low, high);
    v[i] = low + high;
  }
  if constexpr (S > 1) fold_stage<T, S / 2>(v);
}
template <typename T>
inline Vec<T> sum_lanes_across(Vec<T>* v) {
  if constexpr (Simd<T>::W > 1) fold_stage<T, Simd<T>::W / 2>(v);
  return v[0];
}

// Bit views of float lanes, unsigned so that shifts into the top bit are defined.
typedef uint32_t UintVec __attribute__((vector_size(kVecBytes)));
inline UintVec bits_of(Vec<float> v) {
  UintVec u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
}
inline Vec<float> float_of(UintVec u) {
  Vec<float> v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}
inline UintVec sign_bits() { return UintVec{} + 0x80000000u; }

// What e^x and e^x - 1 share for x <= 0 (the only arguments sigmoid and tanh pass): x clamped at -87.3, so 2^n stays
// a normal float; x = n ln2 + r, |r| <= ln2/2 (Cody-Waite); t = x log2(e) + 1.5 * 2^23 + 127, whose low mantissa
// bits hold n + 127, so 2^n is those bits shifted into the exponent field (no float-to-int conversion).
struct ReducedNonpositive {
  Vec<float> r;      // in [-ln2/2, ln2/2]
  Vec<float> scale;  // 2^n
  explicit ReducedNonpositive(Vec<float> x) {
    constexpr float kShift = 12582912.0f + 127.0f;
    x = x < -87.3f ? vbroadcast(-87.3f) : x;  // (a NaN compares false and stays)
    const Vec<float> t = x * 1.44269504088896341f + kShift;
    const Vec<float> n = t - kShift;
    r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    scale = float_of(bits_of(t) << 23);
  }
};

// e^x - 1 and e^x for x <= 0, from one reduction: 2^n (e^r - 1) + (2^n - 1) is accurate relative to the result
// near 0, where e^x - 1 itself would cancel (e^r - 1 = r + r^2 q(r), Taylor to r^7, error < 2e-8 relative;
// 2^n - 1 is exact); e^x = 2^n (e^r - 1) + 2^n.
struct Expm1Nonpositive {
  Vec<float> em1, e;
  explicit Expm1Nonpositive(Vec<float> x) {
    const ReducedNonpositive red(x);
    const Vec<float> r = red.r;
    Vec<float> q = vbroadcast(1.0f / 5040);
    q = q * r + 1.0f / 720;
    q = q * r + 1.0f / 120;
    q = q * r + 1.0f / 24;
    q = q * r + 1.0f / 6;
    q = q * r + 0.5f;
    const Vec<float> em1_r = (r * r) * q + r;
    em1 = red.scale * em1_r + (red.scale - 1.0f);
    e = red.scale * em1_r + red.scale;
  }
};

// e^x for x <= 0; 0 below -103.98, as expf underflows (so saturated gates have exactly zero derivative, and
// 0 * inf makes NaN where torch's does).
inline Vec<float> exp_nonpositive(Vec<float> x) {
  const Vec<float> e = Expm1Nonpositive(x).e;
  return x < -103.98f ? Vec<float>{} : e;
}

// sigmoid from the negative side, r = e/(1+e) with e = exp(-|x|), and 1 - r for x > 0 (as oneDNN does): near
// 1, 1/(1+e) rounds 1+e first and can land several ulps from the true value, which the backward's s(1-s) then
// turns into a large relative error (33% on a saturated gate in the fuzz tests). Within 2.4 ulp of the true value.
inline Vec<float> vsigmoid(Vec<float> x) {
  using V = Vec<float>;
  const V e = exp_nonpositive(float_of(bits_of(x) | sign_bits()));  // e^-|x|
  const V r = e / (1.0f + e);
  return x > 0.0f ? 1.0f - r : r;
}

// tanh for float lanes, from e = e^(-2|x|) and m = e - 1 (one reduction, one division): tanh|x| = -m / (1 + e)
// below 0.5, accurate near 0 (m is, relative to itself), and 1 - 2e / (1 + e) above, rounding once near 1 (where
// the backward's 1 - tanh^2 needs every bit); the sign of x copied on (tanh(-0) = -0). Within 2.5 ulp of the true
// value, in half the instructions of a polynomial near 0 and 1 - 2e/(1+e) both evaluated and blended.
inline Vec<float> vtanh(Vec<float> x) {
  using V = Vec<float>;
  const Expm1Nonpositive ex(float_of(bits_of(x) | sign_bits()) * 2.0f);
  const auto near_one = ex.e < 1.0f / 3;  // tanh|x| > 0.5
  const V q = (near_one ? 2.0f * ex.e : 0.0f - ex.em1) / (ex.e + 1.0f);  // 0 - m: +0 at x = 0
  const V magnitude = near_one ? 1.0f - q : q;
  return float_of(bits_of(magnitude) | (bits_of(x) & sign_bits()));
}

// exp for float64 lanes: the same scheme with a degree-13 Taylor polynomial (error ~1e-18 relative) and a
// two-part ln2; overflow gives inf and underflow 0; NaN propagates.
inline Vec<double> vexp(Vec<double> x_in) {
  using V = Vec<double>;
  using I = Simd<double>::I;
  V x = x_in > 709.0 ? vbroadcast(709.0) : x_in;
  x = x < -708.0 ? vbroadcast(-708.0) : x;
  const V shifter = vbroadcast(6755399441055744.0);  // 1.5 * 2^52
  const V n = (x * 1.4426950408889634 + shifter) - shifter;
  V r = x - n * 6.93147180369123816490e-01;
  r = r - n * 1.90821492927058770002e-10;
  constexpr double kInvFact[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                 1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,
                                 1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,        0.5,
                                 1.0,                1.0};
  V p = vbroadcast(kInvFact[0]);
  for (int i = 1; i < 14; ++i) p = p * r + kInvFact[i];
  const I bits = (__builtin_convertvector(n, I) + 1023) << 52;
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  V out = p * scale;
  out = x_in > 709.782712893384 ? vbroadcast(__builtin_inf()) : out;
  return x_in < -745.1332191019412 ? V{} : out;
}

inline Vec<double> vsigmoid(Vec<double> x) {  // as the float version
  using V = Vec<double>;
  const V e = vexp(x > 0.0 ? -x : x);
  const V r = e / (1.0 + e);
  return x > 0.0 ? 1.0 - r : r;
}

// tanh for float64 lanes: the odd Taylor series through x^23 for |x| < 0.25 (terms shrink 40x each, error
// ~1e-19), else 1 - 2e/(1 + e), e = e^-2|x|, through exp.
inline Vec<double> vtanh(Vec<double> x) {
  using V = Vec<double>;
  constexpr double kCoef[] = {9.691537956929451e-05, -0.00023912911424355248, 0.000590027440945586,
                              -0.0014558343870513183, 0.003592128036572481,   -0.008863235529902197,
                              0.021869488536155203,   -0.05396825396825397,   0.13333333333333333,
                              -0.3333333333333333};  // x^21 ... x^3
  const V ax = x < 0.0 ? -x : x;
  const V e = vexp(-2.0 * ax);
  const V big = 1.0 - 2.0 * e / (1.0 + e);
  const V x2 = x * x;
  V p = vbroadcast(-3.927832388331683e-05);  // x^23
  for (double c : kCoef) p = p * x2 + c;
  const V small = x + x * x2 * p;
  const V mag = ax < 0.25 ? (small < 0.0 ? -small : small) : big;
  return x < 0.0 ? -mag : mag;
}

// relu that lets NaN through, as torch.relu does.
template <typename T>
inline Vec<T> vrelu(Vec<T> x) {
  return x < T(0) ? Vec<T>{} : x;
}

}  // namespace PYRNN_ISA
}  // namespace pyrnn
