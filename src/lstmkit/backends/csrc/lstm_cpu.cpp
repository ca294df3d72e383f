// lstmkit's fused CPU recurrence: one layer, one direction, forward and backward through time.
//
// The time loop runs here, in C++: per step one matrix product (gemm.h's Product: the weights
// packed once per call, read unpacked at B=1, or the BLAS for calls of a few steps; R h^{t-1},
// and W x^t too at small sizes and at many rows against large weights, else x_proj is one
// product over all steps first) and one fused
// element-wise pass over the gates. Large buffers come from pool.h.
// Lecture notation (SPEC section 1), gate order i, f, g(z), o in every (.., 4H) row:
//     c^t = g(z) * f(z_i) + c^{t-1} * f(z_f)        h^t = h(c^t) * f(z_o)
// The Python side (backends/cpu.py) wraps forward and backward in one autograd.Function.
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>

#include "gemm.h"
#include "lstm_math.h"
#include "pool.h"

namespace {

using at::Tensor;
using namespace lstmkit;

// Variant options, unpacked from the int/float lists Python passes (see cpu.py: _codes).
struct Opts {
  int64_t act[3];  // activation codes of f, g, h (cpu.py: ACTIVATION_CODES)
  double alpha[3], beta[3];
  bool has_i, has_f, has_o, coupled, diag, full;
  double clip, cell_clip;  // 0 = none
  // With sigmoid/tanh gates and no clip, training saves the gate values f(z_i), f(z_f), g(z),
  // f(z_o) (their derivatives follow from the values); otherwise the gate inputs.
  bool saves_values;
  Opts(at::IntArrayRef flags, at::ArrayRef<double> params) {
    for (int k = 0; k < 3; ++k) act[k] = flags[k], alpha[k] = params[2 * k], beta[k] = params[2 * k + 1];
    has_i = flags[3], has_f = flags[4], has_o = flags[5], coupled = flags[6];
    diag = flags[7] == 1, full = flags[7] == 2;
    clip = params[6], cell_clip = params[7];
    saves_values = clip == 0 && act[0] <= 1 && act[1] <= 1;
  }
};

// Row i of a tensor's first dimension, without ATen's checks inside the time loop.
template <typename T>
struct Rows {
  T* data = nullptr;
  int64_t stride = 0;
  explicit Rows(const Tensor& t) {
    if (t.defined() && t.numel()) data = t.data_ptr<T>(), stride = t.dim() ? t.stride(0) : 0;
  }
  T* operator[](int64_t i) const { return data + i * stride; }
};

// (M, N) = a (M, K) @ b (K, N) into a huge-page buffer (pool.h: empty_large): a fresh 32 MB result costs
// ~8000 page faults otherwise. By gemm.h when b packed stays in L2 and there are rows enough to
// repay the packing (AVX-512, B=64 H=128: 5.5 ms against MKL's 5.9), else by the BLAS. No bias:
// the time loop adds it (forward_impl), where the BLAS would spend a pass over the result on it.
constexpr int64_t OWN_MATMUL_ROWS = 4 * MC, OWN_MATMUL_BYTES = int64_t(512) << 10;
template <typename T>
void own_matmul(const Tensor& a, const Tensor& b, Tensor& out) {
  const Packed<T> packed({b});
  gemm<T>(a.size(0), {a.data_ptr<T>(), a.stride(0)}, packed, nullptr, 0, nullptr, out.data_ptr<T>(), out.stride(0));
}
Tensor matmul(const Tensor& a, const Tensor& b) {
  Tensor out = empty_large({a.size(0), b.size(1)}, a.options());
  const bool own = Simd<float>::L > 1 && a.size(0) >= OWN_MATMUL_ROWS && a.stride(1) == 1 &&
                   b.numel() * int64_t(a.element_size()) <= OWN_MATMUL_BYTES;
  if (!own) return at::mm_out(out, a, b);
  if (a.scalar_type() == at::kDouble) own_matmul<double>(a, b, out); else own_matmul<float>(a, b, out);
  return out;
}

// The gate blocks (i, f, g, o) of the (.., 4H) rows the variant uses, as ranges of columns: a
// coupled forget gate and a dropped gate are constants, not products, so the products skip their
// blocks (at most two ranges: g is always there).
Columns used_gates(const Opts& o, int64_t H) {
  Columns used;
  for (const auto& [gate, on] : {std::pair{0, o.has_i}, {1, o.has_f && !o.coupled}, {2, true}, {3, o.has_o}})
    if (on && !used.empty() && used.back().second == gate * H) used.back().second += H;
    else if (on) used.emplace_back(gate * H, (gate + 1) * H);
  return used;
}

// dz^T x (N, K) for dz (M, N), x (M, K): a weight gradient summed over M = T B rows, computed in
// the columns of dz the variant uses only (the others are 0, and so are those rows of the result:
// coupled gates, alternating processes: B=64 H=512 forward+backward 672-677 -> 595-605 ms, B=16
// H=256 52.8-53.1 -> 48.9-50.9). From 1024 rows on as (x^T dz)^T, a transposed view (autograd
// copies it into a contiguous .grad): MKL is 2-8 % faster that way round at T B = 2048-8192 (one
// thread; B=64 H=128 forward+backward 62.3 -> 59.9 ms), not at 128 (B=1).
Tensor weight_grad(const Tensor& dz, const Tensor& x, const Columns& used) {
  const int64_t N = dz.size(1), K = x.size(1);
  const bool transposed = dz.size(0) >= 1024;
  const auto shape = transposed ? std::vector<int64_t>{K, N} : std::vector<int64_t>{N, K};
  Tensor dw = columns_width(used) == N ? at::empty(shape, dz.options()) : at::zeros(shape, dz.options());
  for (const auto& [lo, hi] : used) {
    const Tensor d = dz.narrow(1, lo, hi - lo);
    Tensor out = dw.narrow(transposed ? 1 : 0, lo, hi - lo);
    if (transposed) at::mm_out(out, x.t(), d); else at::mm_out(out, d.t(), x);
  }
  return transposed ? dw.t() : dw;
}
Tensor weight_grad_op(const Tensor& dz, const Tensor& x, at::IntArrayRef flags, at::ArrayRef<double> params) {
  return weight_grad(dz, x, used_gates(Opts(flags, params), dz.size(1) / 4));
}

// dz w (M, K) for dz (M, 4H), w (4H, K): dL/dx through x W_ih^T, over the used columns of dz.
Tensor input_grad(const Tensor& dz, const Tensor& w, at::IntArrayRef flags, at::ArrayRef<double> params) {
  Tensor dx;
  for (const auto& [lo, hi] : used_gates(Opts(flags, params), dz.size(1) / 4)) {
    const Tensor part = matmul(dz.narrow(1, lo, hi - lo), w.narrow(0, lo, hi - lo));
    dx = dx.defined() ? dx.add_(part) : part;
  }
  return dx;
}

// ---------------------------------------------------------------- forward
// Given W_ih, the kernel projects the input itself. From FUSE_ROWS rows, while [W_ih; R (; Q)]
// packed stays in L2 (FUSE_BYTES), inside each step's product, over [x^t, h^{t-1} (, c^{t-1})]:
// no (T, B, 4H) x_proj goes to memory and back, and the product runs with twice the depth.
// Also from BLAS_ROWS rows against an R beyond L2, which comes from L3 every step anyway: B=64
// H=512 forward 233-237 -> 221-230 ms, alternating processes (B=64 H=384, 2.4 MB: equal; coupled
// B=64 H=512, 3 MiB used: 204 -> 176 ms); not at B=16 (60 -> 63 ms, the weights stream at a
// quarter of the arithmetic per byte) nor with R in L2 (B=64 H=256 60.3 -> 60.5 ms, B=16 H=256
// 15.7 -> 16.5).
// Otherwise one product over all steps first (matmul).
constexpr int64_t FUSE_ROWS = 4, FUSE_BYTES = int64_t(1) << 20;

template <typename T>
std::vector<Tensor> forward_impl(const Tensor& x, const Tensor& w_in, const Tensor& bias, const Tensor& h0,
                                 const Tensor& c0, const Tensor& w_rec, const Tensor& peep, const Tensor& w_hr,
                                 const Tensor& lengths, const Opts& o, bool reverse, bool train) {
  const int64_t T_ = x.size(0), B = x.size(1), I = x.size(2), G = w_rec.size(0), H = G / 4;
  const int64_t P = h0.size(1), K = P + (o.full ? H : 0);  // GEMM input [h^{t-1}, c^{t-1}]
  const bool proj = w_hr.numel() > 0;
  auto opt = x.options();
  // The product skips the gate blocks the variant does not use (used_gates): their values are never
  // used, and z (zs, zeroed) holds 0 there until the gate pass writes the gate's constant.
  const Columns used = used_gates(o, H);
  const int64_t row_bytes = columns_width(used) * int64_t(sizeof(T));  // per row of [W_ih, R (, Q)]^T, as packed
  // Fused where R (its used blocks) is beyond L2 only while the input is at most twice as wide as
  // R is deep: from there the wider weights cost more than x_proj's round trip (H=512, T=16: B=64
  // I=2048 72 -> 78-83 ms, I=4096 125 -> 186; B=32 I=2048 41-43 -> 40, I=4096 69 -> 112-118).
  const bool fuse = w_in.numel() && Simd<T>::L > 1 && T_ >= PACK_STEPS && B >= FUSE_ROWS &&
                    ((I + K) * row_bytes <= FUSE_BYTES || (I <= 2 * K && B >= BLAS_ROWS && K * row_bytes > l2_bytes()));
  // x_proj (T, B, 4H) = W_ih x, or x itself (fused, or x_proj given)
  const Tensor x_proj = w_in.numel() && !fuse ? matmul(x.reshape({T_ * B, I}), w_in.t()).view({T_, B, G}) : x;
  Tensor y = empty_large({T_, B, P}, opt);
  Tensor hin = at::empty({B, K}, opt), c = c0.clone(), zs = at::zeros({B, G}, opt);
  hin.narrow(1, 0, P).copy_(h0);
  if (o.full) hin.narrow(1, P, H).copy_(c0);
  Tensor a = at::empty({B, H}, opt), c_new = at::empty({B, H}, opt), h_new = proj ? at::empty({B, P}, opt) : a;
  // Saved for backward: gate inputs before clipping (or gate values: Opts), c^t, c^{t-1}, the GEMM
  // input [h^{t-1}, c^{t-1}], and a = h(c^t) f(z_o) with a projection.
  Tensor zbuf, cbuf, cprev, hbuf, abuf;
  if (train) {
    zbuf = empty_large({T_, B, G}, opt), cbuf = empty_large({T_, B, H}, opt), cprev = empty_large({T_, B, H}, opt);
    hbuf = empty_large({T_, B, K}, opt), abuf = proj ? at::zeros({T_, B, H}, opt) : Tensor();  // idle rows: 0
  }
  const Rows<T> x_proj_(x_proj), y_(y), hin_(hin), c_(c), zs_(zs), a_(a), c_new_(c_new), h_new_(h_new);
  const Rows<T> zbuf_(zbuf), cbuf_(cbuf), cprev_(cprev), hbuf_(hbuf), abuf_(abuf);
  std::vector<Tensor> rec_parts{w_rec.t()};  // [W_ih, R, Q]^T ((I +) K, G)
  if (o.full) rec_parts.push_back(peep.t());
  if (fuse) rec_parts.insert(rec_parts.begin(), w_in.t());
  const Product<T> rec(rec_parts, T_, B, fuse, used);
  std::optional<Product<T>> hr;
  if (proj) hr.emplace(w_hr.t(), T_, B);  // W_hr^T (H, P)
  const T* pe = o.diag ? peep.data_ptr<T>() : nullptr;
  const T* b_ = bias.numel() ? bias.data_ptr<T>() : nullptr;
  const int64_t* len = lengths.numel() ? lengths.data_ptr<int64_t>() : nullptr;
  // Inference without lengths or full peepholes moves the state without copies: the product reads
  // h^{t-1} where the last step wrote it (y), and c^{t-1}, c^t take turns in c and c_new.
  const bool direct = !train && !len && !o.full;
  T *c_prev = c_.data, *c_next = c_new_.data;
  const T* h_prev = hin_.data;  // (B, K)

  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = reverse ? T_ - 1 - s : s;
    // z = W x^t + b + R h^{t-1} (+ Q c^{t-1})    (B, 4H)
    if (fuse) rec(B, {x_proj_[t], I, I, h_prev, K}, nullptr, 0, zs_.data, G, b_);
    else rec(B, {h_prev, K}, x_proj_[t], G, zs_.data, G, b_);
    if (train) {
      std::memcpy(hbuf_[t], hin_.data, B * K * sizeof(T));
      std::memcpy(cprev_[t], c_.data, B * H * sizeof(T));
    }
    for (int64_t b = 0; b < B; ++b) {
      if (len && t >= len[b]) continue;
      T *z = zs_[b], *zi = z, *zf = z + H, *zz = z + 2 * H, *zo = z + 3 * H;
      const T* cp = c_prev + b * H;
      T *cn = c_next + b * H, *ab = direct && !proj ? y_[t] + b * P : a_[b];
      if (o.diag)
        for (int64_t j = 0; j < H; ++j) zi[j] += pe[j] * cp[j], zf[j] += pe[H + j] * cp[j];
      T* saved = train ? zbuf_[t] + b * G : nullptr;
      if (train && !o.saves_values) std::memcpy(saved, z, 3 * H * sizeof(T));
      if (o.clip > 0) clamp(z, 3 * H, T(o.clip));
      if (o.has_i) activate<T>(o.act[0], o.alpha[0], o.beta[0], zi, zi, nullptr, H); else std::fill(zi, zi + H, T(1));
      if (o.coupled) for (int64_t j = 0; j < H; ++j) zf[j] = T(1) - zi[j];
      else if (o.has_f) activate<T>(o.act[0], o.alpha[0], o.beta[0], zf, zf, nullptr, H);
      else std::fill(zf, zf + H, T(1));
      activate<T>(o.act[1], o.alpha[1], o.beta[1], zz, zz, nullptr, H);
      if (train && o.saves_values) std::memcpy(saved, z, 3 * H * sizeof(T));
      for (int64_t j = 0; j < H; ++j) cn[j] = zz[j] * zi[j] + cp[j] * zf[j];  // c^t
      if (o.cell_clip > 0) clamp(cn, H, T(o.cell_clip));
      if (o.diag) for (int64_t j = 0; j < H; ++j) zo[j] += pe[2 * H + j] * cn[j];  // z_o peeks at c^t
      if (train && !o.saves_values) std::memcpy(saved + 3 * H, zo, H * sizeof(T));
      if (o.clip > 0) clamp(zo, H, T(o.clip));
      if (o.has_o) activate<T>(o.act[0], o.alpha[0], o.beta[0], zo, zo, nullptr, H); else std::fill(zo, zo + H, T(1));
      if (train && o.saves_values) std::memcpy(saved + 3 * H, zo, H * sizeof(T));
      activate<T>(o.act[2], o.alpha[2], o.beta[2], cn, ab, nullptr, H);
      for (int64_t j = 0; j < H; ++j) ab[j] *= zo[j];  // a = h(c^t) f(z_o)
    }
    if (proj) (*hr)(B, {a_.data, H}, nullptr, 0, direct ? y_[t] : h_new_.data, P);  // h^t = W_hr a
    if (direct) {
      h_prev = y_[t], std::swap(c_prev, c_next);
      continue;
    }
    T* yt = y_[t];
    for (int64_t b = 0; b < B; ++b) {
      T* yb = yt + b * P;
      if (len && t >= len[b]) { std::fill(yb, yb + P, T(0)); continue; }  // state kept, output 0
      std::memcpy(yb, h_new_[b], P * sizeof(T));
      std::memcpy(hin_[b], yb, P * sizeof(T));
      std::memcpy(c_[b], c_new_[b], H * sizeof(T));
      if (o.full) std::memcpy(hin_[b] + P, c_new_[b], H * sizeof(T));
      if (train) {
        std::memcpy(cbuf_[t] + b * H, c_new_[b], H * sizeof(T));
        if (proj) std::memcpy(abuf_[t] + b * H, a_[b], H * sizeof(T));
      }
    }
  }
  if (direct && T_ > 0) return {y, y[reverse ? 0 : T_ - 1].clone(), c_prev == c_.data ? c : c_new};
  Tensor h_n = hin.narrow(1, 0, P).clone();
  if (!train) return {y, h_n, c};
  return {y, h_n, c, zbuf, cbuf, cprev, hbuf, proj ? abuf : at::empty({0}, opt)};
}

// ---------------------------------------------------------------- backward through time
template <typename T>
std::vector<Tensor> backward_impl(const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n, const Tensor& zbuf,
                                  const Tensor& cbuf, const Tensor& cprev, const Tensor& hbuf, const Tensor& abuf,
                                  const Tensor& w_rec, const Tensor& peep, const Tensor& w_hr, const Tensor& lengths,
                                  const Opts& o, bool reverse) {
  const int64_t T_ = zbuf.size(0), B = zbuf.size(1), G = zbuf.size(2), H = G / 4;
  const int64_t P = dh_n.size(1), K = P + (o.full ? H : 0);
  const bool proj = w_hr.numel() > 0;
  auto opt = zbuf.options();
  Tensor dZ = empty_large({T_, B, G}, opt);                          // = d x_proj
  Tensor dh = dh_n.clone(), dc = dc_n.clone(), dht = at::empty({B, P}, opt);
  Tensor da = proj ? at::empty({B, H}, opt) : dht, dhin = at::empty({B, K}, opt);
  Tensor dhtot = proj ? at::zeros({T_, B, P}, opt) : Tensor();
  Tensor dpeep = at::zeros({3, H}, opt);
  const Rows<T> dZ_(dZ), zbuf_(zbuf), cbuf_(cbuf), cprev_(cprev), dhtot_(dhtot);
  // R and Q as two products here (each alone against Product's size thresholds, where the forward
  // counts them together).
  // dz is 0 in the gate blocks the variant does not use: the products take the rows of R and Q
  // of the used blocks only, and dz's columns of them (at most two ranges: Lhs's two blocks).
  const Columns used = used_gates(o, H);
  const auto used_rows = [&](const Tensor& w) {
    std::vector<Tensor> rows;
    for (const auto& [lo, hi] : used) rows.push_back(w.narrow(0, lo, hi - lo));
    return rows;
  };
  const auto dz_used = [&](const T* dz) {  // dz's used columns, as the products' left-hand side
    return used.size() == 1 ? Lhs<T>(dz + used[0].first, G)
                            : Lhs<T>(dz + used[0].first, G, used[0].second - used[0].first, dz + used[1].first, G);
  };
  const Product<T> rec(used_rows(w_rec), T_, B);  // R (G, P)
  std::optional<Product<T>> rec_c;
  if (o.full) rec_c.emplace(used_rows(peep), T_, B);  // Q (G, H)
  std::optional<Product<T>> hr;
  if (proj) hr.emplace(w_hr, T_, B);  // W_hr (P, H)
  // Absent options become neutral constants, so that the per-element loop has no branches.
  std::vector<T> no_peep(3 * H, T(0)), val(G), der(G), hv(H), hd(H), db_step(G);
  std::vector<double> db(G, 0.0);  // dL/db: dz summed over rows per step (db_step), over steps in double
  const T* pe = o.diag ? peep.data_ptr<T>() : no_peep.data();
  T* dp = dpeep.data_ptr<T>();
  const int64_t* len = lengths.numel() ? lengths.data_ptr<int64_t>() : nullptr;
  const T clip = o.clip, coupled = o.coupled;
  const T cell_clip = o.cell_clip > 0 ? T(o.cell_clip) : std::numeric_limits<T>::infinity();
  T *dh_p = dh.data_ptr<T>(), *dc_p = dc.data_ptr<T>(), *dht_p = dht.data_ptr<T>(), *dhin_p = dhin.data_ptr<T>();
  T* da_p = da.data_ptr<T>();
  const T* dy_p = dy.data_ptr<T>();

  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = reverse ? s : T_ - 1 - s;  // the forward's order, backwards
    std::fill(db_step.begin(), db_step.end(), T(0));
    const T* dyt = dy_p + t * B * P;
    for (int64_t i = 0; i < B * P; ++i) dht_p[i] = dh_p[i] + dyt[i];  // dL/dh^t
    if (proj) {
      for (int64_t b = 0; b < B; ++b)
        if (!(len && t >= len[b])) std::memcpy(dhtot_[t] + b * P, dht_p + b * P, P * sizeof(T));
      (*hr)(B, {dht_p, P}, nullptr, 0, da_p, H);  // dL/da = W_hr^T dh
    }
    for (int64_t b = 0; b < B; ++b) {
      T* dz = dZ_[t] + b * G;
      if (len && t >= len[b]) { std::fill(dz, dz + G, T(0)); continue; }
      const T *z = zbuf_[t] + b * G, *cn = cbuf_[t] + b * H, *cp = cprev_[t] + b * H;
      const T* dab = da_p + b * H;
      T* dcb = dc_p + b * H;
      T *vi = val.data(), *vf = vi + H, *vz = vi + 2 * H, *vo = vi + 3 * H;
      T *di = der.data(), *df = di + H, *dg = di + 2 * H, *dout = di + 3 * H;
      if (o.saves_values) {  // derivatives from the saved gate values
        vi = const_cast<T*>(z), vf = vi + H, vz = vi + 2 * H, vo = vi + 3 * H;
        if (o.has_i) derivative_from_value(o.act[0], vi, di, H); else std::fill(di, di + H, T(0));
        if (o.has_f && !o.coupled) derivative_from_value(o.act[0], vf, df, H); else std::fill(df, df + H, T(0));
        derivative_from_value(o.act[1], vz, dg, H);
        if (o.has_o) derivative_from_value(o.act[0], vo, dout, H); else std::fill(dout, dout + H, T(0));
      } else {  // recompute values and derivatives from the saved gate inputs, clipped
        std::memcpy(val.data(), z, G * sizeof(T));
        if (clip > 0) clamp(val.data(), G, clip);
        if (o.has_i) activate<T>(o.act[0], o.alpha[0], o.beta[0], vi, vi, di, H);
        else std::fill(vi, vi + H, T(1)), std::fill(di, di + H, T(0));
        if (o.has_f && !o.coupled) activate<T>(o.act[0], o.alpha[0], o.beta[0], vf, vf, df, H);
        else std::fill(df, df + H, T(0));
        if (o.coupled) for (int64_t j = 0; j < H; ++j) vf[j] = T(1) - vi[j];
        else if (!o.has_f) std::fill(vf, vf + H, T(1));
        activate<T>(o.act[1], o.alpha[1], o.beta[1], vz, vz, dg, H);
        if (o.has_o) activate<T>(o.act[0], o.alpha[0], o.beta[0], vo, vo, dout, H);
        else std::fill(vo, vo + H, T(1)), std::fill(dout, dout + H, T(0));
        if (clip > 0) for (int64_t j = 0; j < G; ++j) der[j] *= T(z[j] >= -clip && z[j] <= clip);
      }
      activate<T>(o.act[2], o.alpha[2], o.beta[2], cn, hv.data(), hd.data(), H);
      T *dzi = dz, *dzf = dz + H, *dzz = dz + 2 * H, *dzo = dz + 3 * H;
#pragma GCC ivdep  // the arrays do not overlap: vectorise without run-time alias checks
      for (int64_t j = 0; j < H; ++j) {
        dzo[j] = dab[j] * hv[j] * dout[j];
        T dct = dcb[j] + dab[j] * vo[j] * hd[j] + dzo[j] * pe[2 * H + j];  // dL/dc^t
        dct = std::abs(cn[j]) < cell_clip ? dct : T(0);
        dzz[j] = dct * vi[j] * dg[j];
        dzi[j] = (dct * vz[j] - coupled * dct * cp[j]) * di[j];
        dzf[j] = dct * cp[j] * df[j];
        dcb[j] = dct * vf[j] + dzi[j] * pe[j] + dzf[j] * pe[H + j];  // dL/dc^{t-1}
        dp[j] += dzi[j] * cp[j], dp[H + j] += dzf[j] * cp[j], dp[2 * H + j] += dzo[j] * cn[j];
      }
      for (int64_t j = 0; j < G; ++j) db_step[j] += dz[j];
    }
    for (int64_t j = 0; j < G; ++j) db[j] += db_step[j];
    rec(B, dz_used(dZ_[t]), nullptr, 0, dhin_p, K);  // dL/dh^{t-1} = R^T dz (columns 0 .. P)
    if (rec_c) (*rec_c)(B, dz_used(dZ_[t]), nullptr, 0, dhin_p + P, K);  // + Q^T dz for c^{t-1} (P .. K)
    for (int64_t b = 0; b < B; ++b) {
      if (len && t >= len[b]) continue;  // an idle step passes dh, dc through unchanged
      std::memcpy(dh_p + b * P, dhin_p + b * K, P * sizeof(T));
      if (o.full) for (int64_t j = 0; j < H; ++j) dc_p[b * H + j] += dhin_p[b * K + P + j];
    }
  }
  // Weight gradients: one GEMM each over all steps, by the BLAS (gemm.h wants A's rows contiguous).
  Tensor dw_rec = weight_grad(dZ.view({T_ * B, G}), hbuf.view({T_ * B, K}), used);  // (G, K)
  Tensor dw_hr = proj ? weight_grad(dhtot.view({T_ * B, P}), abuf.view({T_ * B, H}), {{0, P}}) : at::empty({0}, opt);
  Tensor dbias = at::empty({G}, opt);
  std::copy(db.begin(), db.end(), dbias.data_ptr<T>());
  return {dZ, dh, dc, dw_rec, dpeep, dw_hr, dbias};
}

// The weights as cpu.py passes them: R (4H, P); peep the diagonal peepholes (3, H), Q (4H, H) with
// full peepholes, or empty; W_hr (P, H), or empty where P = H. A mismatch would read or write past
// the end of a buffer, so it is refused.
void check_weights(const Tensor& w_rec, const Tensor& peep, const Tensor& w_hr, int64_t G, int64_t P, const Opts& o) {
  const int64_t H = G / 4;
  TORCH_CHECK(w_rec.dim() == 2 && w_rec.size(0) == G && w_rec.size(1) == P, "lstmkit cpu backend: w_rec must be (4H, P)");
  TORCH_CHECK(w_hr.numel() ? w_hr.dim() == 2 && w_hr.size(0) == P && w_hr.size(1) == H : P == H,
              "lstmkit cpu backend: W_hr must be (P, H), or empty where h has H columns");
  if (o.full) TORCH_CHECK(peep.dim() == 2 && peep.size(0) == G && peep.size(1) == H, "lstmkit cpu backend: Q must be (4H, H)");
  if (o.diag) TORCH_CHECK(peep.dim() == 2 && peep.size(0) == 3 && peep.size(1) == H, "lstmkit cpu backend: peepholes must be (3, H)");
}

// x: x_proj (T, B, 4H), or the input (T, B, I) when w_in = W_ih (4H, I) is given (else empty).
std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& w_in, const Tensor& bias, const Tensor& h0,
                                 const Tensor& c0, const Tensor& w_rec, const Tensor& peep, const Tensor& w_hr,
                                 const Tensor& lengths, at::IntArrayRef flags, at::ArrayRef<double> params, bool reverse,
                                 bool train) {
  const Opts o(flags, params);
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "lstmkit cpu backend: x must be contiguous (T, B, .)");
  const int64_t G = w_in.numel() ? w_in.size(0) : x.size(2);
  TORCH_CHECK(!w_in.numel() || (w_in.dim() == 2 && w_in.size(1) == x.size(2)), "lstmkit cpu backend: W_ih must be (4H, I)");
  TORCH_CHECK(!w_in.numel() || w_in.scalar_type() == x.scalar_type(), "lstmkit cpu backend: W_ih must have x's dtype");
  check_weights(w_rec, peep, w_hr, G, h0.size(1), o);
  const int64_t B = x.size(1);
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && c0.dim() == 2 && c0.size(0) == B && c0.size(1) == G / 4,
              "lstmkit cpu backend: h0 must be (B, P) and c0 (B, H)");
  TORCH_CHECK(!lengths.numel() || (lengths.dim() == 1 && lengths.size(0) == B), "lstmkit cpu backend: lengths must be (B,)");
  TORCH_CHECK(!bias.numel() || (bias.dim() == 1 && bias.size(0) == G && bias.is_contiguous()),
              "lstmkit cpu backend: bias must be contiguous (4H,) or empty");
  if (x.scalar_type() == at::kDouble)
    return forward_impl<double>(x, w_in, bias, h0, c0, w_rec, peep, w_hr, lengths, o, reverse, train);
  TORCH_CHECK(x.scalar_type() == at::kFloat, "lstmkit cpu backend: float32 or float64 only");
  return forward_impl<float>(x, w_in, bias, h0, c0, w_rec, peep, w_hr, lengths, o, reverse, train);
}

std::vector<Tensor> lstm_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n, const Tensor& zbuf,
                                  const Tensor& cbuf, const Tensor& cprev, const Tensor& hbuf, const Tensor& abuf,
                                  const Tensor& w_rec, const Tensor& peep, const Tensor& w_hr, const Tensor& lengths,
                                  at::IntArrayRef flags, at::ArrayRef<double> params, bool reverse) {
  const Opts o(flags, params);
  check_weights(w_rec, peep, w_hr, zbuf.size(2), dh_n.size(1), o);
  if (zbuf.scalar_type() == at::kDouble)
    return backward_impl<double>(dy, dh_n, dc_n, zbuf, cbuf, cprev, hbuf, abuf, w_rec, peep, w_hr, lengths, o, reverse);
  return backward_impl<float>(dy, dh_n, dc_n, zbuf, cbuf, cprev, hbuf, abuf, w_rec, peep, w_hr, lengths, o, reverse);
}

}  // namespace

TORCH_LIBRARY(lstmkit_cpu, m) {
  m.def("forward(Tensor x, Tensor w_ih, Tensor bias, Tensor h0, Tensor c0, Tensor w_rec, Tensor peep, Tensor w_hr, "
        "Tensor lengths, int[] flags, float[] params, bool reverse, bool train) -> Tensor[]", &lstm_forward);
  m.def("matmul(Tensor a, Tensor b) -> Tensor", &matmul);
  m.def("weight_grad(Tensor dz, Tensor x, int[] flags, float[] params) -> Tensor", &weight_grad_op);
  m.def("input_grad(Tensor dz, Tensor w, int[] flags, float[] params) -> Tensor", &input_grad);
  m.def("release_memory() -> ()", &release_memory);
  m.def("backward(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor zbuf, Tensor cbuf, Tensor cprev, Tensor hbuf, "
        "Tensor abuf, Tensor w_rec, Tensor peep, Tensor w_hr, Tensor lengths, int[] flags, float[] params, "
        "bool reverse) -> Tensor[]", &lstm_backward);
}
