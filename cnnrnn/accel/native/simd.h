// The one vector abstraction of the native kernels: float32 vectors of the widest instruction
// set the library is compiled for, chosen at compile time. The same sources are compiled
// once per instruction set (cnnrnn/accel/native/__init__.py: `ISAS`):
//
//   AVX-512 (__AVX512F__):      16 lanes, 32 vector registers, masks in k registers;
//   AVX2 + FMA (__AVX2__, __FMA__): 8 lanes, 16 vector registers, masks in vector registers.
//
// Kernels use only what is defined here (Vec, Mask, kLanes and the functions below), plus the
// register-blocking constants, which depend on the number of registers.

#ifndef CNNRNN_NN_NATIVE_SIMD_H_
#define CNNRNN_NN_NATIVE_SIMD_H_

#include <immintrin.h>

#include <cstdint>

namespace cnnrnn {

#if defined(__AVX512F__)

constexpr int kLanes = 16;            // float32 lanes of a vector
constexpr int kVectorRegisters = 32;  // vector registers the compiler can allocate
using Vec = __m512;
using Mask = __mmask16;  // lanes [0, n) of a vector

inline Vec Zero() { return _mm512_setzero_ps(); }
inline Vec Set1(float x) { return _mm512_set1_ps(x); }
inline Vec Load(const float* p) { return _mm512_loadu_ps(p); }
inline Vec LoadAligned(const float* p) { return _mm512_load_ps(p); }
inline void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline void StoreAligned(float* p, Vec v) { _mm512_store_ps(p, v); }
// Lanes outside the mask read as zero and are never accessed (no fault past an array's end).
inline Vec LoadMasked(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
inline void StoreMasked(float* p, Mask m, Vec v) { _mm512_mask_storeu_ps(p, m, v); }
inline Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec Sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec Mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec Div(Vec a, Vec b) { return _mm512_div_ps(a, b); }
inline Vec Min(Vec a, Vec b) { return _mm512_min_ps(a, b); }
inline Vec Max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
inline Vec Fnma(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
// Bitwise, through the integer forms (the float forms need AVX512DQ).
inline Vec And(Vec a, Vec b) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}
inline Vec AndNot(Vec a, Vec b) {  // ~a & b
  return _mm512_castsi512_ps(
      _mm512_andnot_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}
inline Vec Or(Vec a, Vec b) {
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)));
}
inline Vec RoundNearest(Vec x) {
  return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// p 2^n for integral n in [-128, 128].
inline Vec Scale2(Vec p, Vec n) { return _mm512_scalef_ps(p, n); }
inline float ReduceAdd(Vec v) { return _mm512_reduce_add_ps(v); }
inline Mask FullMask() { return static_cast<Mask>(0xFFFF); }
inline Mask FirstLanes(int64_t n) {  // n in [0, kLanes]
  return n >= kLanes ? FullMask() : static_cast<Mask>((1u << n) - 1);
}

// Register blocking (32 registers): rows of a block of NV vectors per row that share one
// broadcast per row: rows x NV accumulators, NV operand vectors and the broadcast.
template <int NV>
constexpr int BroadcastBlockRows() {
  return NV == 1 ? 16 : NV == 2 ? 12 : NV == 3 ? 8 : 6;
}
// The same for the convolution's weight gradient (its operand vectors are masked loads).
template <int NV>
constexpr int WeightGradBlockRows() {
  return NV == 1 ? 16 : NV == 2 ? 10 : NV == 3 ? 7 : 5;
}
constexpr int kBlockVectors = 4;  // vectors of output columns per register block

#elif defined(__AVX2__) && defined(__FMA__)

constexpr int kLanes = 8;
constexpr int kVectorRegisters = 16;
using Vec = __m256;
// Lanes [0, n): all bits set in those lanes (a struct, so that function types that take
// one keep no vector attributes).
struct Mask {
  __m256i bits;
};

inline Vec Zero() { return _mm256_setzero_ps(); }
inline Vec Set1(float x) { return _mm256_set1_ps(x); }
inline Vec Load(const float* p) { return _mm256_loadu_ps(p); }
inline Vec LoadAligned(const float* p) { return _mm256_load_ps(p); }
inline void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline void StoreAligned(float* p, Vec v) { _mm256_store_ps(p, v); }
inline Vec LoadMasked(const float* p, Mask m) { return _mm256_maskload_ps(p, m.bits); }
inline void StoreMasked(float* p, Mask m, Vec v) { _mm256_maskstore_ps(p, m.bits, v); }
inline Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec Sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec Mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec Div(Vec a, Vec b) { return _mm256_div_ps(a, b); }
inline Vec Min(Vec a, Vec b) { return _mm256_min_ps(a, b); }
inline Vec Max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec Fnma(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a, b, c); }
inline Vec And(Vec a, Vec b) { return _mm256_and_ps(a, b); }
inline Vec AndNot(Vec a, Vec b) { return _mm256_andnot_ps(a, b); }
inline Vec Or(Vec a, Vec b) { return _mm256_or_ps(a, b); }
inline Vec RoundNearest(Vec x) {
  return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// p 2^n for integral n in [-128, 128], in two exact steps 2^(n - n / 2) 2^(n / 2) (each
// exponent within the normal range, so results that are subnormal come out as such).
inline Vec Scale2(Vec p, Vec n) {
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(ni, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const auto pow2 = [&](__m256i e) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, bias), 23));
  };
  return _mm256_mul_ps(_mm256_mul_ps(p, pow2(_mm256_sub_epi32(ni, half))), pow2(half));
}
inline float ReduceAdd(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline Mask FullMask() { return Mask{_mm256_set1_epi32(-1)}; }
inline Mask FirstLanes(int64_t n) {  // n in [0, kLanes]
  return Mask{_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                                 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))};
}

// Register blocking (16 registers): rows x NV accumulators + NV operand vectors + the
// broadcast within 16 (6 x 2 is the classic AVX2 matmul tile).
template <int NV>
constexpr int BroadcastBlockRows() {
  return NV == 1 ? 12 : NV == 2 ? 6 : NV == 3 ? 4 : 2;
}
template <int NV>
constexpr int WeightGradBlockRows() {
  return BroadcastBlockRows<NV>();
}
constexpr int kBlockVectors = 2;

#else
#error "cnnrnn's native kernels need AVX-512F, or AVX2 and FMA (compile with -mavx2 -mfma)"
#endif

// The mask of the last vector of `channels` floats: its channels % kLanes lanes, or all.
inline Mask TailMask(int64_t channels) {
  const int64_t rem = channels % kLanes;
  return rem == 0 ? FullMask() : FirstLanes(rem);
}

// exp(x) for x in [-88, 88] (clamped outside): Cody-Waite reduction by ln 2 and a degree-6
// polynomial (Cephes' expf), then scaling by 2^n; about 1 ulp.
inline Vec Exp(Vec x) {
  x = Min(Max(x, Set1(-88.0f)), Set1(88.0f));
  const Vec n = RoundNearest(Mul(x, Set1(1.44269504088896341f)));
  Vec r = Fnma(n, Set1(0.693359375f), x);
  r = Fnma(n, Set1(-2.12194440e-4f), r);
  Vec p = Set1(1.9875691500e-4f);
  p = Fma(p, r, Set1(1.3981999507e-3f));
  p = Fma(p, r, Set1(8.3334519073e-3f));
  p = Fma(p, r, Set1(4.1665795894e-2f));
  p = Fma(p, r, Set1(1.6666665459e-1f));
  p = Fma(p, r, Set1(5.0000001201e-1f));
  p = Fma(p, Mul(r, r), Add(r, Set1(1.0f)));
  return Scale2(p, n);
}

inline Vec Sigmoid(Vec x) {
  const Vec one = Set1(1.0f);
  return Div(one, Add(one, Exp(Sub(Zero(), x))));
}

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2 |x|) (absolute error ~1e-7 near 0).
inline Vec Tanh(Vec x) {
  const Vec sign_bit = Set1(-0.0f);
  const Vec a = AndNot(sign_bit, x);
  const Vec e = Exp(Mul(a, Set1(-2.0f)));
  const Vec one = Set1(1.0f);
  const Vec t = Div(Sub(one, e), Add(one, e));
  return Or(t, And(sign_bit, x));
}

inline Vec OneMinus(Vec x) { return Sub(Set1(1.0f), x); }

}  // namespace cnnrnn

#endif  // CNNRNN_NN_NATIVE_SIMD_H_
