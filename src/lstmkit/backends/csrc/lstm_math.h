// lstmkit's fused CPU kernel, the element-wise math: exp, sigmoid, tanh, ONNX's activations
// with their derivatives. Included by lstm_cpu.cpp only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "simd.h"

namespace lstmkit {

// ---------------------------------------------------------------- exp, sigmoid, tanh
// Vectorised exp in double (Cephes' range reduction and rational function, about 1 ulp) for
// double's sigmoid and tanh; float's are rational functions without exp (below). Written once
// over simd.h's vectors; array tails use the C library.
inline Simd<double>::V vexp(Simd<double>::V x) {
  using S = Simd<double>;
  x = S::min(S::set(709.0), S::max(S::set(-708.0), x));  // NaN passes (see tanh)
  const auto n = S::round(S::mul(x, S::set(1.4426950408889634073599)));
  x = S::fnma(n, S::set(6.93145751953125E-1), x);
  x = S::fnma(n, S::set(1.42860682030941723212E-6), x);
  const auto xx = S::mul(x, x);
  auto px = S::fma(S::set(1.26177193074810590878E-4), xx, S::set(3.02994407707441961300E-2));
  px = S::mul(x, S::fma(px, xx, S::set(9.99999999999999999910E-1)));
  auto q = S::fma(S::set(3.00198505138664455042E-6), xx, S::set(2.52448340349684104192E-3));
  q = S::fma(q, xx, S::set(2.27265548208155028766E-1));
  q = S::fma(q, xx, S::set(2.00000000000000000009E0));
  return S::ldexp(S::fma(S::set(2.0), S::div(px, S::sub(q, px)), S::set(1.0)), n);
}
// tanh: in float, x P(x^2) / Q(x^2) for |x| <= 9, a rational function fitted for lstmkit
// (benchmarks/fit_tanh.py: within 3e-7 of tanh, 20 vector operations where the exp form takes 31;
// NaN stays NaN), and exactly +-1 beyond, where float's tanh is +-1 or (up to 9.011) 1 ulp from
// it (the fit gives +-(1 - 1.8e-7) at 9: saturated units passed 1 - v^2 = 3.6e-7 of their
// gradient, not 0, 2-4x nn.LSTM's float gradient error in saturated networks); in double,
// 1 - 2 / (1 + e^2x) for |x| >= 0.625 and Cephes' rational function below, where the difference
// would cancel.
template <typename T>
inline typename Simd<T>::V vtanh(typename Simd<T>::V u) {
  using S = Simd<T>;
  if constexpr (sizeof(T) == 4) {
    const auto x = u, one = S::set(1.0f);
    u = S::min(S::set(9.0f), S::max(S::set(-9.0f), u));  // min/max return their 2nd operand if one is NaN
    const auto s = S::mul(u, u);
    auto p = S::set(-8.492771102260738e-14f);
    for (float c : {5.279598286334064e-11f, -2.0228810626576887e-08f, 1.1155229003634304e-05f,
                    0.0031040466856211424f, 0.13084091246128082f, 1.0f})
      p = S::fma(p, s, S::set(c));
    auto q = S::set(0.00025462755002081394f);
    for (float c : {0.02449554018676281f, 0.46417418122291565f, 1.0f}) q = S::fma(q, s, S::set(c));
    const auto r = S::min(one, S::max(S::set(-1.0f), S::div(S::mul(u, p), q)));
    return S::select_lt(S::set(9.0f), S::abs(x), S::select_lt(x, S::zero(), S::set(-1.0f), one), r);
  } else {
    const auto one = S::set(T(1)), z = S::mul(u, u);
    const auto big = S::sub(one, S::div(S::set(T(2)), S::add(one, vexp(S::add(u, u)))));
    auto p = S::fma(S::set(-9.64399179425052238628E-1), z, S::set(-9.92877231001918586564E1));
    p = S::fma(p, z, S::set(-1.61468768441708447952E3));
    auto q = S::add(z, S::set(1.12811678491632931402E2));
    q = S::fma(q, z, S::set(2.23548839060100448583E3));
    q = S::fma(q, z, S::set(4.84406305325125486048E3));
    const auto small = S::fma(S::mul(u, z), S::div(p, q), u);
    return S::select_lt(S::abs(u), S::set(T(0.625)), small, big);
  }
}
// sigmoid: in float 1/2 + tanh(x/2)/2 (within 2e-7, in [0, 1]), in double 1 / (1 + e^-x).
template <typename T>
inline typename Simd<T>::V vsigmoid(typename Simd<T>::V x) {
  using S = Simd<T>;
  if constexpr (sizeof(T) == 4) {
    const auto half = S::set(0.5f);
    return S::fma(vtanh<T>(S::mul(x, half)), half, half);
  } else {
    return S::div(S::set(T(1)), S::add(S::set(T(1)), vexp(S::sub(S::zero(), x))));
  }
}
// y = tanh(scale x).
template <typename T>
inline void tanh_array(const T* x, T* y, int64_t n, T scale) {
  using S = Simd<T>;
  int64_t j = 0;
  for (; j + S::L <= n; j += S::L) S::store(y + j, vtanh<T>(S::mul(S::load(x + j), S::set(scale))));
  for (; j < n; ++j) y[j] = std::tanh(scale * x[j]);
}
// y = 1 / (1 + exp(-x)), the sigmoid.
template <typename T>
inline void sigmoid_array(const T* x, T* y, int64_t n) {
  using S = Simd<T>;
  int64_t j = 0;
  for (; j + S::L <= n; j += S::L) S::store(y + j, vsigmoid<T>(S::load(x + j)));
  for (; j < n; ++j) y[j] = T(1) / (T(1) + std::exp(-x[j]));
}

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
