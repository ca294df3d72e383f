// lstmkit's fused CPU kernel, the instruction set: Simd<T> is one vector of L values of T and the
// operations gemm.h and lstm_math.h are written with, for the widest set the build enables
// (cpu_build.py passes the CPU's flags): AVX-512 (16 floats / 8 doubles), AVX2 + FMA (8 / 4), or
// one lane (portable C++, the same code). Double has the extra operations of lstm_math.h's exp
// and tanh. Included by gemm.h and lstm_math.h only.
#pragma once

#include <cmath>
#include <cstdint>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace lstmkit {

template <typename T> struct Simd;

#if defined(__AVX512F__)
template <> struct Simd<float> {
  using V = __m512;
  static constexpr int64_t L = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V set(float a) { return _mm512_set1_ps(a); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }    // a b + c
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V abs(V a) { return _mm512_abs_ps(a); }
  static V select_lt(V a, V b, V x, V y) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), y, x); }
  static float sum(V a) { return _mm512_reduce_add_ps(a); }
  static void transpose(V (&r)[L]) {  // r[i][j] <- r[j][i]
    V u[L];
    for (int g = 0; g < 4; ++g) {  // u[4 m + g], 128-bit lane j: rows 4g .. 4g+3 of column 4j + m
      const V* a = r + 4 * g;
      const __m512d t0 = _mm512_castps_pd(_mm512_unpacklo_ps(a[0], a[1])), t1 = _mm512_castps_pd(_mm512_unpackhi_ps(a[0], a[1]));
      const __m512d t2 = _mm512_castps_pd(_mm512_unpacklo_ps(a[2], a[3])), t3 = _mm512_castps_pd(_mm512_unpackhi_ps(a[2], a[3]));
      u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2)), u[4 + g] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
      u[8 + g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3)), u[12 + g] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    for (int m = 0; m < 4; ++m) {  // the 4 x 4 lanes of u[4m .. 4m+3]: columns m, 4 + m, 8 + m, 12 + m
      const V* a = u + 4 * m;
      const V v0 = _mm512_shuffle_f32x4(a[0], a[1], 0x44), v1 = _mm512_shuffle_f32x4(a[0], a[1], 0xEE);
      const V v2 = _mm512_shuffle_f32x4(a[2], a[3], 0x44), v3 = _mm512_shuffle_f32x4(a[2], a[3], 0xEE);
      r[m] = _mm512_shuffle_f32x4(v0, v2, 0x88), r[4 + m] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
      r[8 + m] = _mm512_shuffle_f32x4(v1, v3, 0x88), r[12 + m] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
  }
};
template <> struct Simd<double> {
  using V = __m512d;
  static constexpr int64_t L = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V set(double a) { return _mm512_set1_pd(a); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static V broadcast(const double* p) { return _mm512_set1_pd(*p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm512_fnmadd_pd(a, b, c); }  // c - a b
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static V div(V a, V b) { return _mm512_div_pd(a, b); }
  static V min(V a, V b) { return _mm512_min_pd(a, b); }
  static V max(V a, V b) { return _mm512_max_pd(a, b); }
  static V abs(V a) { return _mm512_abs_pd(a); }
  static V round(V a) { return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V ldexp(V a, V n) { return _mm512_scalef_pd(a, n); }  // a 2^n, n integral
  static V select_lt(V a, V b, V x, V y) { return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, b, _CMP_LT_OQ), y, x); }
  static double sum(V a) { return _mm512_reduce_add_pd(a); }
  static void transpose(V (&r)[L]) {  // r[i][j] <- r[j][i]
    V u[L];
    for (int g = 0; g < 4; ++g)  // u[4 m + g], 128-bit lane j: rows 2g, 2g+1 of column 2j + m
      u[g] = _mm512_unpacklo_pd(r[2 * g], r[2 * g + 1]), u[4 + g] = _mm512_unpackhi_pd(r[2 * g], r[2 * g + 1]);
    for (int m = 0; m < 2; ++m) {  // the 4 x 4 lanes of u[4m .. 4m+3]: columns m, 2 + m, 4 + m, 6 + m
      const V* a = u + 4 * m;
      const V v0 = _mm512_shuffle_f64x2(a[0], a[1], 0x44), v1 = _mm512_shuffle_f64x2(a[0], a[1], 0xEE);
      const V v2 = _mm512_shuffle_f64x2(a[2], a[3], 0x44), v3 = _mm512_shuffle_f64x2(a[2], a[3], 0xEE);
      r[m] = _mm512_shuffle_f64x2(v0, v2, 0x88), r[2 + m] = _mm512_shuffle_f64x2(v0, v2, 0xDD);
      r[4 + m] = _mm512_shuffle_f64x2(v1, v3, 0x88), r[6 + m] = _mm512_shuffle_f64x2(v1, v3, 0xDD);
    }
  }
};
#elif defined(__AVX2__)
template <> struct Simd<float> {
  using V = __m256;
  static constexpr int64_t L = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V set(float a) { return _mm256_set1_ps(a); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static V select_lt(V a, V b, V x, V y) { return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_LT_OQ)); }
  static float sum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_hadd_ps(s, s));
  }
  static void transpose(V (&r)[L]) {  // r[i][j] <- r[j][i]
    V u[L];
    for (int g = 0; g < 2; ++g) {  // u[2 m + g], 128-bit lane j: rows 4g .. 4g+3 of column 4j + m
      const V* a = r + 4 * g;
      const __m256d t0 = _mm256_castps_pd(_mm256_unpacklo_ps(a[0], a[1])), t1 = _mm256_castps_pd(_mm256_unpackhi_ps(a[0], a[1]));
      const __m256d t2 = _mm256_castps_pd(_mm256_unpacklo_ps(a[2], a[3])), t3 = _mm256_castps_pd(_mm256_unpackhi_ps(a[2], a[3]));
      u[g] = _mm256_castpd_ps(_mm256_unpacklo_pd(t0, t2)), u[2 + g] = _mm256_castpd_ps(_mm256_unpackhi_pd(t0, t2));
      u[4 + g] = _mm256_castpd_ps(_mm256_unpacklo_pd(t1, t3)), u[6 + g] = _mm256_castpd_ps(_mm256_unpackhi_pd(t1, t3));
    }
    for (int m = 0; m < 4; ++m)
      r[m] = _mm256_permute2f128_ps(u[2 * m], u[2 * m + 1], 0x20), r[4 + m] = _mm256_permute2f128_ps(u[2 * m], u[2 * m + 1], 0x31);
  }
};
template <> struct Simd<double> {
  using V = __m256d;
  static constexpr int64_t L = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V set(double a) { return _mm256_set1_pd(a); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static V broadcast(const double* p) { return _mm256_broadcast_sd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V div(V a, V b) { return _mm256_div_pd(a, b); }
  static V min(V a, V b) { return _mm256_min_pd(a, b); }
  static V max(V a, V b) { return _mm256_max_pd(a, b); }
  static V abs(V a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
  static V round(V a) { return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V ldexp(V a, V n) {  // the exponent field of 2^n, built from the integer n
    const __m128i n32 = _mm_add_epi32(_mm256_cvtpd_epi32(n), _mm_set1_epi32(1023));
    return _mm256_mul_pd(a, _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_cvtepi32_epi64(n32), 52)));
  }
  static V select_lt(V a, V b, V x, V y) { return _mm256_blendv_pd(y, x, _mm256_cmp_pd(a, b, _CMP_LT_OQ)); }
  static double sum(V a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_hadd_pd(s, s));
  }
  static void transpose(V (&r)[L]) {  // r[i][j] <- r[j][i]
    const V t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);  // [a0 b0 | a2 b2], [a1 b1 | a3 b3]
    const V t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20), r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31), r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
};
#else  // portable: one lane, the same code
template <typename T> struct Simd {
  using V = T;
  static constexpr int64_t L = 1;
  static V zero() { return T(0); }
  static V set(T a) { return a; }
  static V load(const T* p) { return *p; }
  static V broadcast(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V fnma(V a, V b, V c) { return c - a * b; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V div(V a, V b) { return a / b; }
  static V min(V a, V b) { return a < b ? a : b; }
  static V max(V a, V b) { return a > b ? a : b; }
  static V abs(V a) { return std::abs(a); }
  static V round(V a) { return std::nearbyint(a); }
  static V ldexp(V a, V n) { return std::ldexp(a, int(n)); }
  static V select_lt(V a, V b, V x, V y) { return a < b ? x : y; }
  static T sum(V a) { return a; }
  static void transpose(V (&)[L]) {}
};
#endif

}  // namespace lstmkit
