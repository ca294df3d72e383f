// lstmkit's fused CPU kernel, the matrix products of the time loop: C = C0 + A B with the
// constant right-hand side B (the recurrent weights), packed once per call for gemm(); Product
// (at the end) picks between that, an unpacked gemv() at B=1 and the BLAS. Included by
// lstm_cpu.cpp only.
//
// Why our own: per step the product is small (A is B x H, B x 4H out), where a BLAS call spends
// more on dispatch and on re-reading B in its own layout than on arithmetic (one Zen 3 core at
// M=16, K=256, N=1024: MKL 54 GFLOP/s, this kernel 97). B is cut into panels of NR
// columns, each stored (K, NR) contiguously, so that the micro-kernel streams it with aligned
// vector loads while up to MR rows of A are broadcast: MR x NR accumulators stay in registers
// (AVX-512: 8 x 2 vectors, 16 of the 32 zmm registers, and for one row panels of 4 vectors;
// AVX2: 4 x 3, 12 of the 16 ymm). Panels are independent: with several threads they are shared
// out by at::parallel_for. The product is also the input projection's when its packed weights
// are small (lstm_cpu.cpp: matmul).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include <unistd.h>

#include "simd.h"

namespace lstmkit {


// Panels are V vectors wide (NR = V L columns); a micro-kernel call takes up to rows_for<V> rows.
#ifdef __AVX512F__
constexpr int MR = 8;            // 8 x 2 accumulators of the 32 zmm registers
constexpr int NR_VECS = 2;       // 32 floats: 4H in whole panels
constexpr int ROW_VECS = 4;      // one row: 64 columns per panel (B=1, H=128 forward kernel 0.34 -> 0.30 ms)
#else
constexpr int MR = 4;            // 4 x 3 accumulators of the 16 ymm registers
constexpr int NR_VECS = 3;
constexpr int ROW_VECS = 3;
#endif
template <int V>
constexpr int rows_for = MR * V <= 16 ? MR : 16 / V;  // at most 16 accumulators
constexpr int64_t MC = 64;       // rows of A per block (the time loop's products are one block)
constexpr int64_t PREFETCH_BYTES = int64_t(2) << 20;  // packed B from which gemm prefetches panels

// Ranges [first, last) of B's columns that a product computes; the others it skips, and C keeps
// what it held there (the gate blocks a variant does not use: lstm_cpu.cpp, forward_impl). Empty:
// all of them.
using Columns = std::vector<std::pair<int64_t, int64_t>>;
inline int64_t columns_width(const Columns& columns) {
  int64_t width = 0;
  for (const auto& [lo, hi] : columns) width += hi - lo;
  return width;
}

// B (K, N) as zero-padded panels of shape (K, NR), NR = V vectors, ceil(width / NR) for each range
// of columns. B is the parts (K_i, N) (any strides) stacked along k: the recurrent weights with
// full peepholes are [R, Q]^T.
template <typename T, int V = NR_VECS>
struct Packed {
  static constexpr int64_t NR = V * Simd<T>::L;
  int64_t K = 0, N = 0;
  at::Tensor data;  // (panels, K, NR)
  std::vector<int64_t> first, width;  // each panel's first column in B (and C), and its columns
  explicit Packed(const std::vector<at::Tensor>& parts, const Columns& columns = {}) : N(parts.at(0).size(1)) {
    for (const auto& part : parts) {
      TORCH_CHECK(part.size(1) == N, "Packed: parts differ in N");
      K += part.size(0);
    }
    for (const auto& [lo, hi] : columns.empty() ? Columns{{0, N}} : columns)
      for (int64_t n = lo; n < hi; n += NR) first.push_back(n), width.push_back(std::min(NR, hi - n));
    const int64_t panels = int64_t(first.size());
    data = at::empty({panels, K, NR}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
    int64_t k_first = 0;  // the part's first row in B
    for (const auto& part : parts) {
      const T* src = part.data_ptr<T>();
      const int64_t stride_k = part.stride(0), stride_n = part.stride(1), k_end = k_first + part.size(0);
      // B[k, n] = src[(k - k_first) stride_k + n stride_n], read in memory order, along k or
      // along n. Along k, in blocks of KB: a whole column of the panel at once writes K lines NR
      // values apart, which share a few L1 sets and evict each other from K = 256 on (packing
      // 4H x 2H at H=128: 260 µs; in blocks: 47 µs). With k contiguous (R^T, the forward's
      // recurrent weights), blocks of L x L values are transposed in registers, the rest as before
      // (R^T at B=1, H=128, 256 KiB: 46 -> 11 µs per call; right after a sleep, 80 -> 16 µs).
      constexpr int64_t KB = 16, L = Simd<T>::L;
      for (int64_t p = 0; p < panels; ++p) {
        const int64_t cols = width[p];
        const T* s = src + first[p] * stride_n - k_first * stride_k;
        T* d = data.data_ptr<T>() + p * K * NR;
        const auto copy = [&](int64_t k_lo, int64_t k_hi, int64_t j_lo, int64_t j_hi) {  // one value at a time
          for (int64_t k0 = k_lo; k0 < k_hi; k0 += KB)
            for (int64_t j = j_lo, k_stop = std::min(k_hi, k0 + KB); j < j_hi; ++j)
              for (int64_t k = k0; k < k_stop; ++k) d[k * NR + j] = s[j * stride_n + k * stride_k];
        };
        if (stride_k == 1) {
          const int64_t k_vec = k_first + (k_end - k_first) / L * L, j_vec = cols / L * L;
          for (int64_t k0 = k_first; k0 < k_vec; k0 += L)
            for (int64_t j0 = 0; j0 < j_vec; j0 += L) {
              typename Simd<T>::V v[L];  // v[i] = B[k0 : k0 + L, j0 + i], then B[k0 + i, j0 : j0 + L]
              _Pragma("GCC unroll 16") for (int64_t i = 0; i < L; ++i) v[i] = Simd<T>::load(s + (j0 + i) * stride_n + k0);
              Simd<T>::transpose(v);
              _Pragma("GCC unroll 16") for (int64_t i = 0; i < L; ++i) Simd<T>::store(d + (k0 + i) * NR + j0, v[i]);
            }
          copy(k_first, k_vec, j_vec, cols);
          copy(k_vec, k_end, 0, cols);
        } else if (stride_k < stride_n) {
          copy(k_first, k_end, 0, cols);
        } else
          for (int64_t k = k_first; k < k_end; ++k)
            for (int64_t j = 0; j < cols; ++j) d[k * NR + j] = s[k * stride_k + j * stride_n];
        for (int64_t k = k_first; k < k_end && cols < NR; ++k) std::fill(d + k * NR + cols, d + (k + 1) * NR, T(0));
      }
      k_first = k_end;
    }
  }
  const T* panel(int64_t p) const { return data.data_ptr<T>() + p * K * NR; }
  int64_t panels() const { return int64_t(first.size()); }
};

// The left-hand side A (M, K) of a product, rows in memory order: one block of columns, or two
// side by side with their own row strides, A = [A1 (M, split) | A2 (M, K - split)]: the time
// loop's [x^t, h^{t-1}] when it projects the input itself (lstm_cpu.cpp: forward_impl).
template <typename T>
struct Lhs {
  const T* a1;
  int64_t ld1;
  const T* a2 = nullptr;
  int64_t ld2 = 0, split = std::numeric_limits<int64_t>::max();
  Lhs(const T* a, int64_t lda) : a1(a), ld1(lda) {}
  Lhs(const T* a, int64_t lda, int64_t split_, const T* b, int64_t ldb) : a1(a), ld1(lda), a2(b), ld2(ldb), split(split_) {}
  Lhs rows_from(int64_t m) const {
    Lhs r = *this;
    r.a1 += m * ld1;
    if (a2) r.a2 += m * ld2;
    return r;
  }
  Lhs cols_from(int64_t k) const { return k < split ? Lhs(a1 + k, ld1, split - k, a2, ld2) : Lhs(a2 + (k - split), ld2); }
};

// C[0:R, 0:NR] = C0[0:R, 0:NR] (or 0 when C0 is null) + bias[0:NR] (in every row, or 0 when null)
// + A[0:R, :] panel, for R <= rows_for<V> rows.
template <typename T, int R, int V>
inline void micro_kernel(int64_t K, const Lhs<T>& A, const T* panel, const T* C0, int64_t ldc0,
                         const T* bias, T* C, int64_t ldc, const char* pf = nullptr, int64_t pf_lines = 0) {
  // pf: pf_lines cache lines to prefetch into L2 meanwhile (gemm: the next panel), or none
  using S = Simd<T>;
  // With one row, the V accumulators would wait on the FMA latency (4 cycles) every k: CH
  // chains over interleaved k, summed at the end, let the loads set the pace (AVX2, B=1, H=128:
  // kernel forward 0.60 -> 0.53 ms for T=128 with two chains).
  constexpr int CH = R * V >= 6 ? 1 : R * V >= 3 ? 2 : 4;
  typename S::V acc[CH][R][V];
  // C0 is added at the end: its rows (x_proj[t] in the time loop) often come from memory, so
  // they are prefetched now and arrive while the products run (B=64, H=512: forward kernel 231 -> 208 ms).
  if (C0)
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
      __builtin_prefetch(C0 + r * ldc0);
      __builtin_prefetch(C0 + r * ldc0 + V * S::L - 1);
    }
  _Pragma("GCC unroll 4") for (int c = 0; c < CH; ++c)
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
      _Pragma("GCC unroll 4") for (int v = 0; v < V; ++v)
        acc[c][r][v] = c == 0 && bias ? S::load(bias + v * S::L) : S::zero();
  // sum += A[0:R, k] panel[k, :], a pointing at A[0, k]
  // (always inlined: as calls, the accumulators would live in memory)
  const auto step = [&](int64_t k, const T* a, int64_t lda, typename S::V (&sum)[R][V]) __attribute__((always_inline)) {
    const T* b = panel + k * V * S::L;
    typename S::V bv[V];
    _Pragma("GCC unroll 4") for (int v = 0; v < V; ++v) bv[v] = S::load(b + v * S::L);
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
      const typename S::V ar = S::broadcast(a + r * lda);
      _Pragma("GCC unroll 4") for (int v = 0; v < V; ++v) sum[r][v] = S::fma(ar, bv[v], sum[r][v]);
    }
  };
  const auto run = [&](int64_t k, int64_t k_end, const T* a, int64_t lda) __attribute__((always_inline)) {  // columns k .. k_end of one block
    for (; k + CH <= k_end; k += CH, a += CH)
      _Pragma("GCC unroll 4") for (int c = 0; c < CH; ++c) {
        for (int64_t line = k + c; line < pf_lines; line += K) __builtin_prefetch(pf + 64 * line, 0, 2);  // to L2
        step(k + c, a + c, lda, acc[c]);
      }
    for (; k < k_end; ++k, ++a) step(k, a, lda, acc[0]);
  };
  const int64_t split = std::min(K, A.split);
  run(0, split, A.a1, A.ld1);
  if (split < K) run(split, K, A.a2, A.ld2);
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int v = 0; v < V; ++v) {
      _Pragma("GCC unroll 4") for (int c = 1; c < CH; ++c) acc[0][r][v] = S::add(acc[0][r][v], acc[c][r][v]);
      if (C0) acc[0][r][v] = S::add(acc[0][r][v], S::load(C0 + r * ldc0 + v * S::L));
      S::store(C + r * ldc + v * S::L, acc[0][r][v]);
    }
}

// micro_kernel<T, rows, V> for 1 <= rows <= rows_for<V>.
template <typename T, int V, int R = rows_for<V>>
inline void micro_rows(int64_t rows, int64_t K, const Lhs<T>& A, const T* panel, const T* C0,
                       int64_t ldc0, const T* bias, T* C, int64_t ldc, const char* pf = nullptr, int64_t pf_lines = 0) {
  if constexpr (R > 1)
    if (rows < R) return micro_rows<T, V, R - 1>(rows, K, A, panel, C0, ldc0, bias, C, ldc, pf, pf_lines);
  micro_kernel<T, R, V>(K, A, panel, C0, ldc0, bias, C, ldc, pf, pf_lines);
}

// C (M, N; row stride ldc) = C0 (M, N; row stride ldc0, or 0 when null) + bias (N, in every row,
// or 0 when null) + A (M, K) @ B. C0 may be C itself (accumulate). The last, partial panel
// goes through a small tile. backwards: each thread takes its share of the work in reverse order
// (Product alternates, see there).
template <typename T, int V>
void gemm(int64_t M, const Lhs<T>& A, const Packed<T, V>& B, const T* C0, int64_t ldc0, const T* bias,
          T* C, int64_t ldc, bool backwards = false) {
  constexpr int64_t NR = Packed<T, V>::NR, MR_ = rows_for<V>;
  const int64_t panels = B.panels(), K = B.K;
  // Blocks of MC rows of A (MC x K stays in L2) times every panel; blocks and panels are shared
  // out to threads in that order.
  const int64_t blocks = (M + MC - 1) / MC, work = blocks * panels;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 17) / std::max<int64_t>(1, std::min(M, MC) * K * NR));
  at::parallel_for(0, work, grain, [&](int64_t first, int64_t last) {
    T tile[MR_ * NR], tile0[MR_ * NR] = {}, bias0[NR] = {};  // past the last column: read, never used
    for (int64_t next = first; next < last; ++next) {
      const int64_t i = backwards ? first + last - 1 - next : next;
      const int64_t p = i % panels, n0 = B.first[p], cols = B.width[p];
      // Weights beyond L2 come from L3 panel by panel, and the hardware prefetcher stops at every
      // 4 KiB page: the next piece's panel is prefetched while this one runs, a line per k, its
      // lines shared out over the row tiles (B=16 H=512, 4 MiB: recurrence 39.6-45.8 -> 35.5-36.2
      // ms; at 1 MiB, in L2, it cost 5 %).
      const int64_t i_next = backwards ? i - 1 : i + 1;
      const bool prefetch = K * panels * NR * int64_t(sizeof(T)) >= PREFETCH_BYTES && (backwards ? i_next >= first : i_next < last);
      const char* upcoming = prefetch ? reinterpret_cast<const char*>(B.panel(i_next % panels)) : nullptr;
      const int64_t m_first = i / panels * MC, m_end = std::min(M, m_first + MC);
      const int64_t tiles = (m_end - m_first + MR_ - 1) / MR_;
      const int64_t share = (K * NR * int64_t(sizeof(T)) / 64 + tiles - 1) / tiles;  // lines per tile
      for (int64_t m = m_first; m < m_end; m += MR_) {
        const int64_t rows = std::min<int64_t>(MR_, m_end - m);
        const char* pf = upcoming ? upcoming + (m - m_first) / MR_ * share * 64 : nullptr;
        if (cols == NR) {
          micro_rows<T, V>(rows, K, A.rows_from(m), B.panel(p), C0 ? C0 + m * ldc0 + n0 : nullptr, ldc0,
                           bias ? bias + n0 : nullptr, C + m * ldc + n0, ldc, pf, pf ? share : 0);
          continue;
        }
        if (C0)
          for (int64_t r = 0; r < rows; ++r) std::memcpy(tile0 + r * NR, C0 + (m + r) * ldc0 + n0, cols * sizeof(T));
        if (bias) std::memcpy(bias0, bias + n0, cols * sizeof(T));
        micro_rows<T, V>(rows, K, A.rows_from(m), B.panel(p), C0 ? tile0 : nullptr, NR, bias ? bias0 : nullptr,
                         tile, NR);
        for (int64_t r = 0; r < rows; ++r) std::memcpy(C + (m + r) * ldc + n0, tile + r * NR, cols * sizeof(T));
      }
    }
  });
}

// y[lo:hi] = c0 (or 0 when null) + bias (or 0 when null) + x (K) @ B[:, lo:hi] for one row, B's
// columns contiguous (stride_k 1), read as they are: 8 dot products at a time (8 independent
// accumulators), last ones first when backwards.
template <typename T>
void gemv(const T* x, const at::Tensor& b, const T* c0, const T* bias, T* y, bool backwards, int64_t lo, int64_t hi) {
  using S = Simd<T>;
  constexpr int64_t L = S::L;
  const int64_t K = b.size(0), sn = b.stride(1), blocks = (hi - lo) / 8;
  const T* B = b.data_ptr<T>();
  for (int64_t next = 0; next < blocks; ++next) {
    const int64_t n = lo + 8 * (backwards ? blocks - 1 - next : next);
    typename S::V acc[8];
    _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j) acc[j] = S::zero();
    int64_t k = 0;
    for (; k + L <= K; k += L) {
      const typename S::V xv = S::load(x + k);
      _Pragma("GCC unroll 8") for (int j = 0; j < 8; ++j) acc[j] = S::fma(S::load(B + (n + j) * sn + k), xv, acc[j]);
    }
    for (int j = 0; j < 8; ++j) {
      T sum = S::sum(acc[j]);
      for (int64_t kk = k; kk < K; ++kk) sum += B[(n + j) * sn + kk] * x[kk];
      y[n + j] = (c0 ? c0[n + j] : T(0)) + (bias ? bias[n + j] : T(0)) + sum;
    }
  }
  for (int64_t n = lo + 8 * blocks; n < hi; ++n) {
    T sum = (c0 ? c0[n] : T(0)) + (bias ? bias[n] : T(0));
    for (int64_t k = 0; k < K; ++k) sum += B[n * sn + k] * x[k];
    y[n] = sum;
  }
}

// A product with a constant right-hand side B (K, N), used at every step of a call: packed for
// gemm() when the call has enough steps to repay the packing and the CPU has the vector units
// the micro-kernel is written for; otherwise the BLAS on B as it is (a one-step call, such as
// LSTMCell's, would read and write the weights once more than it uses them). One row against a
// B of more than 1 MiB and half the L2 cache with contiguous columns goes to gemv() instead
// (below 1 MiB, packed was faster on both machines measured; no smaller L2 was): packing is
// pure cost where the packed copy does not stay close to the core between steps (B=1 forward,
// alternating builds: Zen 3 (512 KiB L2), H=512: 13.8 ms unpacked, 15.7 packed; H=128 packed
// 5-9 % faster. Xeon with AVX-512 (2 MiB L2), since packing transposes in registers: H=512
// (4 MiB) 15.4 ms unpacked, 17.2 packed; H=256 (1 MiB) 2 % faster packed, module against
// onnxruntime 1.04 -> 1.02 over four process pairs).
// Successive calls run through B in alternate directions: when B does not fit in L2, each step
// then starts on the part of B the previous step read last, still in L2, instead of evicting
// it just before it is needed (LRU against a cyclic sweep keeps nothing).
// Many rows against weights far beyond L2 go to the BLAS as well (on a contiguous copy, in calls
// long enough to repay it): there MKL's own blocking beats the panels (AVX-512 Xeon, B=64 H=512,
// 4 MiB: forward 249 -> 242 ms, forward+backward 752 -> 728, alternating builds), not at B=16 or
// with 1-2 MiB (B=16 H=512 recurrence 35.6 ms packed, 46.7 BLAS).
constexpr int64_t PACK_STEPS = 4;
inline int64_t l2_bytes() {  // this core's L2 cache (1 MiB where the C library does not say)
  static const int64_t bytes = [] {
#ifdef _SC_LEVEL2_CACHE_SIZE  // glibc
    const long size = sysconf(_SC_LEVEL2_CACHE_SIZE);
#else
    const long size = 0;
#endif
    return size > 0 ? int64_t(size) : int64_t(1) << 20;
  }();
  return bytes;
}
constexpr int64_t BLAS_ROWS = 32, BLAS_BYTES = int64_t(4) << 20;

template <typename T>
struct Product {
  std::vector<at::Tensor> parts;  // B (K, N) = the parts (K_i, N) stacked along k, any strides
  Columns columns;  // the columns computed where packed or one row (the BLAS computes them all)
  std::optional<Packed<T>> packed;
  std::optional<Packed<T, ROW_VECS>> packed_row;  // for products of one row: wider panels
  bool one_row = true;  // gemv() over each part
  mutable bool backwards = false;
  // no_blas: packed where the BLAS would be chosen (the forward's fused [W_ih, R] product)
  Product(std::vector<at::Tensor> parts_, int64_t steps, int64_t rows, bool no_blas = false, Columns columns_ = {})
      : parts(std::move(parts_)), columns(std::move(columns_)) {
    if (columns.empty()) columns = {{0, parts.at(0).size(1)}};
    int64_t bytes = 0;  // the weights of the columns computed
    for (const auto& part : parts)
      bytes += part.size(0) * columns_width(columns) * int64_t(sizeof(T)), one_row &= part.stride(0) == 1;
    one_row &= rows == 1 && 2 * bytes > std::max(int64_t(2) << 20, l2_bytes());
    if (!no_blas && steps >= PACK_STEPS && rows >= BLAS_ROWS && bytes >= BLAS_BYTES) {  // the BLAS, on contiguous weights
      for (auto& part : parts) part = part.contiguous();
      return;
    }
    if (one_row || steps < PACK_STEPS || Simd<T>::L == 1) return;
    if (rows == 1) packed_row.emplace(parts, columns); else packed.emplace(parts, columns);
  }
  Product(const at::Tensor& b, int64_t steps, int64_t rows) : Product(std::vector<at::Tensor>{b}, steps, rows) {}
  // C (M, N; row stride ldc, contiguous rows) = C0 (M, N; ldc0, or 0 when null) + bias (N, in every
  // row, or 0 when null) + A (M, K) @ B. Unpacked, each part of B must lie in one block of A's columns.
  void operator()(int64_t M, const Lhs<T>& A, const T* C0, int64_t ldc0, T* C, int64_t ldc,
                  const T* bias = nullptr) const {
    backwards = !backwards;
    if (packed) return gemm<T>(M, A, *packed, C0, ldc0, bias, C, ldc, backwards);
    if (packed_row) return gemm<T>(M, A, *packed_row, C0, ldc0, bias, C, ldc, backwards);
    const int64_t n = int64_t(parts.size());
    for (int64_t i = 0; i < n; ++i) {  // part by part, each adding to C; last one first when backwards
      const int64_t part = backwards ? n - 1 - i : i;
      const auto& b = parts[part];
      int64_t k0 = 0;  // the part's first row in B
      for (int64_t j = 0; j < part; ++j) k0 += parts[j].size(0);
      TORCH_CHECK(k0 >= A.split || k0 + b.size(0) <= A.split, "Product: a part of B spans both blocks of A");
      const Lhs<T> a_part = A.cols_from(k0);
      if (one_row) {
        for (int64_t r = 0, ranges = int64_t(columns.size()); r < ranges; ++r) {
          const auto& [lo, hi] = columns[backwards ? ranges - 1 - r : r];
          gemv<T>(a_part.a1, b, C0, bias, C, backwards, lo, hi);
        }
      } else {
        const int64_t N = b.size(1);
        if (bias)  // C = C0 + bias, then the BLAS adds to C
          for (int64_t r = 0; r < M; ++r)
            for (int64_t j = 0; j < N; ++j) C[r * ldc + j] = (C0 ? C0[r * ldc0 + j] : T(0)) + bias[j];
        const auto options = b.options();
        const at::Tensor a = at::from_blob(const_cast<T*>(a_part.a1), {M, b.size(0)}, {a_part.ld1, 1}, options);
        at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, options);
        if (bias || C0 == C) c.addmm_(a, b);
        else if (!C0) at::mm_out(c, a, b);
        else at::addmm_out(c, at::from_blob(const_cast<T*>(C0), {M, N}, {ldc0, 1}, options), a, b);
      }
      C0 = C, ldc0 = ldc, bias = nullptr;
    }
  }
};

}  // namespace lstmkit
