// Native CPU kernels for tracklet aggregation, Eq. 9 of the ART paper (saliency mode), exactly as
// artlib.ops.tracklet_aggregate.tracklet_aggregate_ref.
//
// Shapes: B videos, T frames, K tracklets, d width; r (B, T, K, d), s (B, K, d), out (B, K, d).
// Per video b and tracklet k (one parallel task, B*K tasks):
//   A_k (K x T) = s r_k^T / tau        r_k = r[b, :, k, :] (T x d, row stride K d)
//   P_k         = softmax over t of each row i of A_k           (saved for the backward, (B, K, K, T))
//   w_k (T)     = 1/K sum_i P_k[i, :]
//   out_k       = 1/T sum_t w_k[t] r_tk
// Backward, given g (B, K, d):
//   dw_t  = <g_k, r_tk> / T;   dA_k[i, t] = P_k[i, t] (dw_t - sum_t' P_k[i, t'] dw_t') / (K tau)
//   dr_k  = w_k g_k^T / T + dA_k^T s                              (T x d, per task)
//   ds    = sum_k dA_k r_k = dA (K x T K) rows (T K x d)           (per video, parallel over B*K rows)
// float64 stays float64; float32, float16 and bfloat16 are computed in float32. The reductions run
// in a fixed order per task, so the result does not depend on the thread count.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "native.h"

namespace artlib_native {
namespace {

using at::Tensor;

struct TaDims {
  int64_t B, T, K, D;
};

TaDims check_ta(const Tensor& r, const Tensor& s) {
  check_cpu_float(r, "responses");
  check_cpu_float(s, "semantics");
  check_dim(r, 4, "responses", "(B, T, K, d)");
  check_dim(s, 3, "semantics", "(B, K, d)");
  const TaDims m{r.size(0), r.size(1), r.size(2), r.size(3)};
  TORCH_CHECK_VALUE(s.size(0) == m.B && s.size(1) == m.K && s.size(2) == m.D,
                    "artlib native: semantics must be (B, K, d) = (", m.B, ", ", m.K, ", ", m.D,
                    ") to match responses ", r.sizes(), ", got ", s.sizes());
  TORCH_CHECK_VALUE(r.scalar_type() == s.scalar_type(), "artlib native: semantics must have ",
                    "responses' dtype ", r.scalar_type(), ", got ", s.scalar_type());
  return m;
}

// Tasks per parallel chunk: about 64K multiply-adds of the score GEMM each, so the paper's K = 2
// (48 tasks of 8K) runs in a few chunks instead of waking a thread per task.
inline int64_t task_grain(const TaDims& m) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, m.K * m.T * m.D));
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  return at::vec::map2_reduce_all<T>([](Vec x, Vec y) { return x * y; },
                                     [](Vec x, Vec y) { return x + y; }, a, b, n);
}

// y = alpha * x (overwrite: beta == 0) or y += alpha * x
template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t n, bool overwrite) {
  using Vec = at::vec::Vectorized<T>;
  if (overwrite) {
    at::vec::map([alpha](Vec xv) { return xv * Vec(alpha); }, y, x, n);
  } else {
    at::vec::map2([alpha](Vec xv, Vec yv) { return yv + xv * Vec(alpha); }, y, x, y, n);
  }
}

template <typename T>
void ta_fwd_kernel(const T* r, const T* s, const TaDims& m, double tau, T* out, T* p, T* w) {
  const int64_t TT = m.T, K = m.K, D = m.D;
  const bool use_blas = blas_ok<T>();
  const T inv_tau = static_cast<T>(1.0 / tau), inv_k = T(1) / T(K), inv_t = T(1) / T(TT);
  at::parallel_for(0, m.B * K, task_grain(m), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / K, k = task % K;
      const T* rk = r + (b * TT * K + k) * D;  // row t at rk + t K D
      const T* sb = s + b * K * D;
      T* pk = p + task * K * TT;  // (K x T): P[b, k, i, t]
      T* wk = w + task * TT;
      gemm<T>(false, true, K, TT, D, inv_tau, sb, D, rk, K * D, T(0), pk, TT, use_blas);
      std::fill(wk, wk + TT, T(0));
      for (int64_t i = 0; i < K; ++i) {
        T* row = pk + i * TT;
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t t = 0; t < TT; ++t) mx = std::max(mx, row[t]);
        T sum = 0;
        for (int64_t t = 0; t < TT; ++t) {
          row[t] = std::exp(row[t] - mx);
          sum += row[t];
        }
        const T inv = T(1) / sum;
        for (int64_t t = 0; t < TT; ++t) {
          row[t] *= inv;
          wk[t] += row[t];
        }
      }
      T* ok = out + task * D;
      for (int64_t t = 0; t < TT; ++t) {
        wk[t] *= inv_k;
        axpy(wk[t] * inv_t, rk + t * K * D, ok, D, t == 0);
      }
    }
  });
}

template <typename T>
void ta_bwd_kernel(const T* g, const T* r, const T* s, const T* p, const T* w, const TaDims& m,
                   double tau, T* dr, T* ds, T* da) {
  const int64_t TT = m.T, K = m.K, D = m.D;
  const bool use_blas = blas_ok<T>();
  const T inv_t = T(1) / T(TT), coef = static_cast<T>(1.0 / (static_cast<double>(K) * tau));
  // dr and dA, one task per (b, k); dA is stored as (B, K_i, T, K_k): one video's is the (K x T K)
  // left factor of ds = dA rows.
  at::parallel_for(0, m.B * K, task_grain(m), [&](int64_t begin, int64_t end) {
    std::vector<T> dw(TT), dak(K * TT);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / K, k = task % K;
      const T* rk = r + (b * TT * K + k) * D;
      const T* gk = g + task * D;
      const T* pk = p + task * K * TT;
      const T* wk = w + task * TT;
      for (int64_t t = 0; t < TT; ++t) dw[t] = dot(gk, rk + t * K * D, D) * inv_t;
      for (int64_t i = 0; i < K; ++i) {
        const T* prow = pk + i * TT;
        T c = 0;
        for (int64_t t = 0; t < TT; ++t) c += prow[t] * dw[t];
        T* darow = dak.data() + i * TT;
        T* dst = da + (b * K + i) * TT * K + k;
        for (int64_t t = 0; t < TT; ++t) {
          darow[t] = prow[t] * (dw[t] - c) * coef;
          dst[t * K] = darow[t];
        }
      }
      T* drk = dr + (b * TT * K + k) * D;
      for (int64_t t = 0; t < TT; ++t) axpy(wk[t] * inv_t, gk, drk + t * K * D, D, true);
      gemm<T>(true, false, TT, D, K, T(1), dak.data(), TT, s + b * K * D, D, T(1), drk, K * D,
              use_blas);
    }
  });
  // ds, parallel over the B*K rows (b, i): each chunk is one GEMM per video it touches
  at::parallel_for(0, m.B * K, task_grain(m), [&](int64_t begin, int64_t end) {
    int64_t row = begin;
    while (row < end) {
      const int64_t b = row / K, i0 = row % K;
      const int64_t rows = std::min(end - row, K - i0);
      gemm<T>(false, false, rows, D, TT * K, T(1), da + row * TT * K, TT * K, r + b * TT * K * D,
              D, T(0), ds + row * D, D, use_blas);
      row += rows;
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> ta_fwd(const Tensor& r, const Tensor& s, double tau) {
  const TaDims m = check_ta(r, s);
  TORCH_CHECK_VALUE(tau > 0, "artlib native: temperature must be > 0, got ", tau);
  const auto ct = compute_type(r.scalar_type());
  const Tensor rc = as_compute(r, ct), sc = as_compute(s, ct);
  const auto opts = rc.options();
  Tensor out = at::empty({m.B, m.K, m.D}, opts);
  Tensor p = at::empty({m.B, m.K, m.K, m.T}, opts);
  Tensor w = at::empty({m.B, m.K, m.T}, opts);
  if (m.T > 0 && m.D > 0 && out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "artlib_native_tracklet_aggregate_fwd", [&] {
      (void)blas_ok<scalar_t>();  // decided outside the parallel region
      ta_fwd_kernel<scalar_t>(rc.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(), m, tau,
                              out.mutable_data_ptr<scalar_t>(), p.mutable_data_ptr<scalar_t>(),
                              w.mutable_data_ptr<scalar_t>());
    });
  } else {
    out.zero_();
  }
  return {out.to(r.scalar_type()), p, w};
}

std::tuple<Tensor, Tensor> ta_bwd(const Tensor& grad, const Tensor& r, const Tensor& s,
                                  const Tensor& p, const Tensor& w, double tau) {
  const TaDims m = check_ta(r, s);
  check_cpu_float(grad, "grad");
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == m.B && grad.size(1) == m.K &&
                        grad.size(2) == m.D,
                    "artlib native: grad must be (B, K, d) = (", m.B, ", ", m.K, ", ", m.D,
                    "), got ", grad.sizes());
  const auto ct = compute_type(r.scalar_type());
  TORCH_CHECK_VALUE(p.scalar_type() == ct && p.dim() == 4 && p.size(0) == m.B &&
                        p.size(1) == m.K && p.size(2) == m.K && p.size(3) == m.T,
                    "artlib native: p must be the forward's saliency (B, K, K, T) = (", m.B, ", ",
                    m.K, ", ", m.K, ", ", m.T, ") in ", ct, ", got ", p.sizes(), " ",
                    p.scalar_type());
  TORCH_CHECK_VALUE(w.scalar_type() == ct && w.dim() == 3 && w.size(0) == m.B &&
                        w.size(1) == m.K && w.size(2) == m.T,
                    "artlib native: w must be the forward's weights (B, K, T) = (", m.B, ", ", m.K,
                    ", ", m.T, ") in ", ct, ", got ", w.sizes(), " ", w.scalar_type());
  const Tensor gc = as_compute(grad, ct), rc = as_compute(r, ct), sc = as_compute(s, ct);
  const Tensor pc = p.contiguous(), wc = w.contiguous();
  Tensor dr = at::empty(rc.sizes(), rc.options());
  Tensor ds = at::empty(sc.sizes(), sc.options());
  if (m.T > 0 && m.D > 0 && ds.numel() > 0) {
    Tensor da = at::empty({m.B, m.K, m.T, m.K}, rc.options());
    AT_DISPATCH_FLOATING_TYPES(ct, "artlib_native_tracklet_aggregate_bwd", [&] {
      (void)blas_ok<scalar_t>();
      ta_bwd_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), rc.const_data_ptr<scalar_t>(),
                              sc.const_data_ptr<scalar_t>(), pc.const_data_ptr<scalar_t>(),
                              wc.const_data_ptr<scalar_t>(), m, tau,
                              dr.mutable_data_ptr<scalar_t>(), ds.mutable_data_ptr<scalar_t>(),
                              da.mutable_data_ptr<scalar_t>());
    });
  } else {
    dr.zero_();
    ds.zero_();
  }
  return {dr.to(r.scalar_type()), ds.to(s.scalar_type())};
}

}  // namespace
}  // namespace artlib_native

TORCH_LIBRARY_FRAGMENT(artlib, m) {
  m.def(
      "native_tracklet_aggregate_fwd(Tensor responses, Tensor semantics, float temperature) -> "
      "(Tensor, Tensor, Tensor)");
  m.def(
      "native_tracklet_aggregate_bwd(Tensor grad, Tensor responses, Tensor semantics, Tensor p, "
      "Tensor w, float temperature) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(artlib, CPU, m) {
  m.impl("native_tracklet_aggregate_fwd", &artlib_native::ta_fwd);
  m.impl("native_tracklet_aggregate_bwd", &artlib_native::ta_bwd);
}
