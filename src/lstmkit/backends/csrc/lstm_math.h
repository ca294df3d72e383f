// lstmkit's fused CPU kernel, the element-wise math: exp, sigmoid, tanh, ONNX's activations
// with their derivatives. Included by lstm_cpu.cpp only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace lstmkit {

// ---------------------------------------------------------------- exp, sigmoid, tanh
// Vectorised exp (Cephes' range reduction and polynomials: about 1 ulp in float and double,
// SIMD lanes of AVX2), then sigmoid(x) = 1 / (1 + e^-x), and tanh(x) = 1 - 2 / (1 + e^2x) for
// |x| >= 0.625 and Cephes' odd polynomial (float) or rational function (double) below, where
// the difference would cancel.
#ifdef __AVX2__
inline __m256 vexp(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  for (float c : {1.3981999507E-3f, 8.3334519073E-3f, 4.1665795894E-2f, 1.6666665459E-1f, 5.0000001201E-1f})
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(c));
  p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
inline __m256d vexp(__m256d x) {
  x = _mm256_min_pd(_mm256_max_pd(x, _mm256_set1_pd(-708.0)), _mm256_set1_pd(709.0));
  const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634073599)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93145751953125E-1), x);
  x = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.42860682030941723212E-6), x);
  const __m256d xx = _mm256_mul_pd(x, x);
  __m256d px = _mm256_fmadd_pd(_mm256_set1_pd(1.26177193074810590878E-4), xx, _mm256_set1_pd(3.02994407707441961300E-2));
  px = _mm256_mul_pd(x, _mm256_fmadd_pd(px, xx, _mm256_set1_pd(9.99999999999999999910E-1)));
  __m256d q = _mm256_fmadd_pd(_mm256_set1_pd(3.00198505138664455042E-6), xx, _mm256_set1_pd(2.52448340349684104192E-3));
  q = _mm256_fmadd_pd(q, xx, _mm256_set1_pd(2.27265548208155028766E-1));
  q = _mm256_fmadd_pd(q, xx, _mm256_set1_pd(2.00000000000000000009E0));
  const __m256d r = _mm256_fmadd_pd(_mm256_set1_pd(2.0), _mm256_div_pd(px, _mm256_sub_pd(q, px)), _mm256_set1_pd(1.0));
  const __m128i n32 = _mm_add_epi32(_mm256_cvtpd_epi32(n), _mm_set1_epi32(1023));
  return _mm256_mul_pd(r, _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_cvtepi32_epi64(n32), 52)));
}
inline __m256 vtanh(__m256 u) {
  const __m256 one = _mm256_set1_ps(1.0f), z = _mm256_mul_ps(u, u);
  const __m256 big = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(one, vexp(_mm256_add_ps(u, u)))));
  __m256 p = _mm256_set1_ps(-5.70498872745E-3f);
  for (float c : {2.06390887954E-2f, -5.37397155531E-2f, 1.33314422036E-1f, -3.33332819422E-1f})
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(c));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), u, u);
  const __m256 abs_u = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), u);
  return _mm256_blendv_ps(big, small, _mm256_cmp_ps(abs_u, _mm256_set1_ps(0.625f), _CMP_LT_OQ));
}
inline __m256d vtanh(__m256d u) {
  const __m256d one = _mm256_set1_pd(1.0), z = _mm256_mul_pd(u, u);
  const __m256d big = _mm256_sub_pd(one, _mm256_div_pd(_mm256_set1_pd(2.0), _mm256_add_pd(one, vexp(_mm256_add_pd(u, u)))));
  __m256d p = _mm256_fmadd_pd(_mm256_set1_pd(-9.64399179425052238628E-1), z, _mm256_set1_pd(-9.92877231001918586564E1));
  p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(-1.61468768441708447952E3));
  __m256d q = _mm256_add_pd(z, _mm256_set1_pd(1.12811678491632931402E2));
  q = _mm256_fmadd_pd(q, z, _mm256_set1_pd(2.23548839060100448583E3));
  q = _mm256_fmadd_pd(q, z, _mm256_set1_pd(4.84406305325125486048E3));
  const __m256d small = _mm256_fmadd_pd(_mm256_mul_pd(u, z), _mm256_div_pd(p, q), u);
  const __m256d abs_u = _mm256_andnot_pd(_mm256_set1_pd(-0.0), u);
  return _mm256_blendv_pd(big, small, _mm256_cmp_pd(abs_u, _mm256_set1_pd(0.625), _CMP_LT_OQ));
}
inline void tanh_array(const float* x, float* y, int64_t n, float scale) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, vtanh(_mm256_mul_ps(_mm256_loadu_ps(x + j), _mm256_set1_ps(scale))));
  for (; j < n; ++j) y[j] = std::tanh(scale * x[j]);
}
inline void tanh_array(const double* x, double* y, int64_t n, double scale) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) _mm256_storeu_pd(y + j, vtanh(_mm256_mul_pd(_mm256_loadu_pd(x + j), _mm256_set1_pd(scale))));
  for (; j < n; ++j) y[j] = std::tanh(scale * x[j]);
}
// y = 1 / (1 + exp(-x)), the sigmoid.
inline void sigmoid_array(const float* x, float* y, int64_t n) {
  int64_t j = 0;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(y + j, _mm256_div_ps(one, _mm256_add_ps(one, vexp(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_loadu_ps(x + j))))));
  for (; j < n; ++j) y[j] = 1.0f / (1.0f + std::exp(-x[j]));
}
inline void sigmoid_array(const double* x, double* y, int64_t n) {
  int64_t j = 0;
  const __m256d one = _mm256_set1_pd(1.0);
  for (; j + 4 <= n; j += 4)
    _mm256_storeu_pd(y + j, _mm256_div_pd(one, _mm256_add_pd(one, vexp(_mm256_sub_pd(_mm256_setzero_pd(), _mm256_loadu_pd(x + j))))));
  for (; j < n; ++j) y[j] = 1.0 / (1.0 + std::exp(-x[j]));
}
#else
template <typename T>
inline void sigmoid_array(const T* x, T* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = T(1) / (T(1) + std::exp(-x[j]));
}
template <typename T>
inline void tanh_array(const T* x, T* y, int64_t n, T scale) {
  for (int64_t j = 0; j < n; ++j) y[j] = std::tanh(scale * x[j]);
}
#endif

// ---------------------------------------------------------------- activations
// value(x) into v, and d value / dx into d when d != nullptr (x and v may alias).
template <typename T>
void activate(int64_t code, T a, T b, const T* x, T* v, T* d, int64_t n) {
  switch (code) {
    case 0:  // sigmoid
      sigmoid_array(x, v, n);
      if (d) for (int64_t j = 0; j < n; ++j) d[j] = v[j] * (T(1) - v[j]);
      return;
    case 1:  // tanh
      tanh_array(x, v, n, T(1));
      if (d) for (int64_t j = 0; j < n; ++j) d[j] = T(1) - v[j] * v[j];
      return;
    case 7:  // scaled_tanh: a tanh(b x)
      tanh_array(x, v, n, b);
      if (d) for (int64_t j = 0; j < n; ++j) d[j] = a * b * (T(1) - v[j] * v[j]);
      for (int64_t j = 0; j < n; ++j) v[j] *= a;
      return;
  }
  for (int64_t j = 0; j < n; ++j) {
    const T u = x[j];
    T val, der;
    switch (code) {
      case 2: val = u, der = 1; break;                                         // identity
      case 3: val = u > 0 ? u : T(0), der = u > 0; break;                       // relu
      case 4: { const T s = a * u + b;                                          // hard_sigmoid
                val = std::min(std::max(s, T(0)), T(1)), der = (s > 0 && s < 1) ? a : T(0); break; }
      case 5: val = u >= 0 ? u : a * u, der = u > 0 ? T(1) : a; break;          // leaky_relu
      case 6: val = u > a ? u : T(0), der = u > a; break;                       // thresholded_relu
      case 8: val = a * u + b, der = a; break;                                  // affine
      case 9: val = u >= 0 ? u : a * std::expm1(u), der = u > 0 ? T(1) : a * std::exp(std::min(u, T(0))); break;  // elu
      case 10: val = u / (T(1) + std::abs(u)), der = T(1) / ((T(1) + std::abs(u)) * (T(1) + std::abs(u))); break;  // softsign
      default: val = std::max(u, T(0)) + std::log1p(std::exp(-std::abs(u))),  // softplus
               der = u >= 0 ? T(1) / (T(1) + std::exp(-u)) : std::exp(u) / (T(1) + std::exp(u)); break;
    }
    v[j] = val;
    if (d) d[j] = der;
  }
}

// d value / dx from the value, for sigmoid (code 0) and tanh (code 1).
template <typename T>
void derivative_from_value(int64_t code, const T* v, T* d, int64_t n) {
  if (code == 0) for (int64_t j = 0; j < n; ++j) d[j] = v[j] * (T(1) - v[j]);
  else for (int64_t j = 0; j < n; ++j) d[j] = T(1) - v[j] * v[j];
}

template <typename T>
inline void clamp(T* x, int64_t n, T limit) {
  for (int64_t j = 0; j < n; ++j) x[j] = std::min(std::max(x[j], -limit), limit);
}

}  // namespace lstmkit
