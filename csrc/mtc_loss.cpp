// Native CPU kernels for the multi-level tracklet contrastive (MTC) loss, Eq. 5-8 of the ART paper,
// exactly as artlib.ops.mtc_loss.mtc_loss_ref (DESIGN.md "MTC loss").
//
// Shapes: B videos, T frames, K region queries (= tracklets), d response width; r is (B, T, K, d).
// u_tk = r_tk / max(|r_tk|, eps), U_k = vec(Tr_k) / max(|vec(Tr_k)|, eps), vec(Tr_k) in R^{T d}, eps 1e-8.
//   spatial   (Eq. 5) = 1/(T K (K-1)) sum_t sum_{i!=j} u_ti . u_tj          = sum_t (|s_t|^2 - sum_k |u_tk|^2) / ...
//   temporal  (Eq. 6) = 1/((T-1) K) sum_{t<T,k} relu(lam - u_tk . u_(t+1)k)   (hinge)
//                     = lam - 1/((T-1) K) sum_{t<T,k} u_tk . u_(t+1)k          (linear)
//   tracklet  (Eq. 7) = 1/(K (K-1)) sum_{i!=j} U_i . U_j                     = (|W|^2 - sum_k |U_k|^2) / ...
//   total     (Eq. 8) = w_s spatial + w_t temporal + w_tr tracklet, each averaged over B,
// with s_t = sum_k u_tk and W = sum_k U_k: the pair sums cost O(K) per frame instead of O(K^2).
//
// One pass over r per video (at::parallel_for over B); per-video partial sums land in a (B, 3) buffer
// that is reduced in a fixed order, so the result does not depend on the thread count. The backward
// recomputes u, s and W (r is small: 24 x 16 x 2 x 256 floats at the paper's shape).
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "native.h"

namespace artlib_native {
namespace {

using at::Tensor;

constexpr double kCosEps = 1e-8;  // artlib.ops.mtc_loss.COS_EPS

template <typename T>
inline double dot(const T* a, const T* b, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  return static_cast<double>(at::vec::map2_reduce_all<T>(
      [](Vec x, Vec y) { return x * y; }, [](Vec x, Vec y) { return x + y; }, a, b, n));
}

// y += alpha * x
template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  at::vec::map2([alpha](Vec xv, Vec yv) { return yv + xv * Vec(alpha); }, y, x, y, n);
}

struct MtcDims {
  int64_t B, T, K, D;
};

// Videos per parallel task: at least ~256K elements of r each, so that the paper's shape (24 x 16 x
// 2 x 256 = 196K elements, ~0.1 ms of work) runs on one thread. Waking a second OpenMP thread costs
// more than it saves there, and on a busy machine a descheduled thread stalled whole calls by ms.
inline int64_t video_grain(const MtcDims& m) {
  return std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, m.T * m.K * m.D));
}

// Per-video quantities shared by the forward and the backward.
template <typename T>
struct VideoStats {
  std::vector<double> norm, inv;  // (T, K): |r_tk|, 1 / max(|r_tk|, eps)
  std::vector<double> tnorm, tinv;  // (K): |vec(Tr_k)|, 1 / max(|vec(Tr_k)|, eps)
  std::vector<T> u;  // (T, K, D) unit responses
  std::vector<T> s;  // (T, D)    s_t = sum_k u_tk
  std::vector<T> w;  // (T, D)    W = sum_k U_k, viewed per frame

  explicit VideoStats(const MtcDims& m)
      : norm(m.T * m.K), inv(m.T * m.K), tnorm(m.K), tinv(m.K), u(m.T * m.K * m.D),
        s(m.T * m.D), w(m.T * m.D) {}

  void compute(const T* r, const MtcDims& m) {
    const int64_t TT = m.T, K = m.K, D = m.D;
    std::fill(s.begin(), s.end(), T(0));
    std::fill(w.begin(), w.end(), T(0));
    std::fill(tnorm.begin(), tnorm.end(), 0.0);
    for (int64_t t = 0; t < TT; ++t) {
      for (int64_t k = 0; k < K; ++k) {
        const T* rtk = r + (t * K + k) * D;
        const double sq = dot(rtk, rtk, D);
        const double n = std::sqrt(sq);
        norm[t * K + k] = n;
        inv[t * K + k] = 1.0 / std::max(n, kCosEps);
        tnorm[k] += sq;
        T* utk = u.data() + (t * K + k) * D;
        const T iv = static_cast<T>(inv[t * K + k]);
        for (int64_t e = 0; e < D; ++e) utk[e] = rtk[e] * iv;
        axpy(T(1), utk, s.data() + t * D, D);
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      tnorm[k] = std::sqrt(tnorm[k]);
      tinv[k] = 1.0 / std::max(tnorm[k], kCosEps);
    }
    for (int64_t t = 0; t < TT; ++t) {
      for (int64_t k = 0; k < K; ++k) {
        axpy(static_cast<T>(tinv[k]), r + (t * K + k) * D, w.data() + t * D, D);
      }
    }
  }
};

// out[b] = (spatial_b, temporal_b, tracklet_b) before the 1/B mean.
template <typename T>
void mtc_fwd_kernel(const T* r, const MtcDims& m, double lam, bool hinge, double* out) {
  const int64_t TT = m.T, K = m.K, D = m.D;
  at::parallel_for(0, m.B, video_grain(m), [&](int64_t begin, int64_t end) {
    VideoStats<T> st(m);
    for (int64_t b = begin; b < end; ++b) {
      const T* rb = r + b * TT * K * D;
      st.compute(rb, m);
      double spatial = 0.0, temporal = 0.0, tracklet = 0.0;
      if (K > 1) {
        // Eq. 5: sum_{i!=j} u_ti . u_tj = |s_t|^2 - sum_k |u_tk|^2
        for (int64_t t = 0; t < TT; ++t) {
          const T* st_ = st.s.data() + t * D;
          double diag = 0.0;
          for (int64_t k = 0; k < K; ++k) {
            const double nu = st.norm[t * K + k] * st.inv[t * K + k];
            diag += nu * nu;
          }
          spatial += dot(st_, st_, D) - diag;
        }
        spatial /= static_cast<double>(TT * K * (K - 1));
        // Eq. 7: sum_{i!=j} U_i . U_j = |W|^2 - sum_k |U_k|^2
        double diag = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          const double nu = st.tnorm[k] * st.tinv[k];
          diag += nu * nu;
        }
        tracklet = (dot(st.w.data(), st.w.data(), TT * D) - diag) / static_cast<double>(K * (K - 1));
      }
      if (TT > 1) {
        // Eq. 6 over adjacent frames of the same query.
        double acc = 0.0;
        for (int64_t t = 0; t + 1 < TT; ++t) {
          for (int64_t k = 0; k < K; ++k) {
            const double c = dot(st.u.data() + (t * K + k) * D, st.u.data() + ((t + 1) * K + k) * D, D);
            acc += hinge ? std::max(lam - c, 0.0) : c;
          }
        }
        acc /= static_cast<double>((TT - 1) * K);
        temporal = hinge ? acc : lam - acc;
      }
      out[b * 3 + 0] = spatial;
      out[b * 3 + 1] = temporal;
      out[b * 3 + 2] = tracklet;
    }
  });
}

// dr = d(c_s spatial + c_t temporal + c_tr tracklet)/dr, the terms already averaged over B.
template <typename T>
void mtc_bwd_kernel(const T* r, const MtcDims& m, double lam, bool hinge, double c_s, double c_t,
                    double c_tr, T* dr) {
  const int64_t B = m.B, TT = m.T, K = m.K, D = m.D;
  const double a_s = K > 1 ? 2.0 * c_s / static_cast<double>(B * TT * K * (K - 1)) : 0.0;
  const double a_t = TT > 1 ? c_t / static_cast<double>(B * (TT - 1) * K) : 0.0;
  const double a_tr = K > 1 ? 2.0 * c_tr / static_cast<double>(B * K * (K - 1)) : 0.0;
  at::parallel_for(0, B, video_grain(m), [&](int64_t begin, int64_t end) {
    VideoStats<T> st(m);
    std::vector<T> g(TT * K * D);  // dL/du_tk
    for (int64_t b = begin; b < end; ++b) {
      const T* rb = r + b * TT * K * D;
      T* drb = dr + b * TT * K * D;
      st.compute(rb, m);
      // Eq. 5: d/du_tk = a_s (s_t - u_tk)   (a_s carries the 2 from the symmetric pair sum)
      for (int64_t t = 0; t < TT; ++t) {
        for (int64_t k = 0; k < K; ++k) {
          T* gtk = g.data() + (t * K + k) * D;
          const T* utk = st.u.data() + (t * K + k) * D;
          const T* s_t = st.s.data() + t * D;
          const T as = static_cast<T>(a_s);
          for (int64_t e = 0; e < D; ++e) gtk[e] = as * (s_t[e] - utk[e]);
        }
      }
      // Eq. 6: d/dc = -a_t (times [lam - c > 0] for the hinge), c = u_tk . u_(t+1)k
      if (TT > 1 && a_t != 0.0) {
        for (int64_t t = 0; t + 1 < TT; ++t) {
          for (int64_t k = 0; k < K; ++k) {
            const T* u0 = st.u.data() + (t * K + k) * D;
            const T* u1 = st.u.data() + ((t + 1) * K + k) * D;
            const double c = dot(u0, u1, D);
            if (hinge && !(lam - c > 0.0)) continue;
            const T gc = static_cast<T>(-a_t);
            axpy(gc, u1, g.data() + (t * K + k) * D, D);
            axpy(gc, u0, g.data() + ((t + 1) * K + k) * D, D);
          }
        }
      }
      // through u = r / max(|r|, eps): dr = (g - u (u . g)) / |r|, or g / eps when |r| < eps
      for (int64_t t = 0; t < TT; ++t) {
        for (int64_t k = 0; k < K; ++k) {
          const int64_t i = t * K + k;
          const T* gtk = g.data() + i * D;
          const T* utk = st.u.data() + i * D;
          T* out = drb + i * D;
          const T iv = static_cast<T>(st.inv[i]);
          const T ug = st.norm[i] >= kCosEps ? static_cast<T>(dot(utk, gtk, D)) : T(0);
          for (int64_t e = 0; e < D; ++e) out[e] = (gtk[e] - utk[e] * ug) * iv;
        }
      }
      // Eq. 7: d/dU_k = a_tr (W - U_k), then through U_k = vec(Tr_k) / max(|vec(Tr_k)|, eps)
      if (K > 1 && a_tr != 0.0) {
        for (int64_t k = 0; k < K; ++k) {
          const double ik = st.tinv[k];
          double uw = 0.0;  // U_k . W
          for (int64_t t = 0; t < TT; ++t) uw += dot(rb + (t * K + k) * D, st.w.data() + t * D, D);
          uw *= ik;
          const double uu = st.tnorm[k] * st.tnorm[k] * ik * ik;  // |U_k|^2
          const double uh = st.tnorm[k] >= kCosEps ? a_tr * (uw - uu) : 0.0;  // U_k . H_k
          // dr_tk += ik (a_tr (W_t - U_tk) - U_tk uh),  U_tk = r_tk ik
          const T cw = static_cast<T>(ik * a_tr);
          const T cr = static_cast<T>(-ik * ik * (a_tr + uh));
          for (int64_t t = 0; t < TT; ++t) {
            const T* rtk = rb + (t * K + k) * D;
            const T* w_t = st.w.data() + t * D;
            T* out = drb + (t * K + k) * D;
            for (int64_t e = 0; e < D; ++e) out[e] += cw * w_t[e] + cr * rtk[e];
          }
        }
      }
    }
  });
}

MtcDims check_mtc(const Tensor& r) {
  check_cpu_float(r, "r");
  check_dim(r, 4, "r", "(B, T, K, d)");
  TORCH_CHECK_VALUE(r.size(0) >= 1 && r.size(1) >= 1 && r.size(2) >= 1 && r.size(3) >= 1,
                    "artlib native: r must have B, T, K, d >= 1, got ", r.sizes());
  return {r.size(0), r.size(1), r.size(2), r.size(3)};
}

Tensor mtc_fwd(const Tensor& r, double lam, bool hinge, double w_s, double w_t, double w_tr) {
  const MtcDims m = check_mtc(r);
  const auto ct = compute_type(r.scalar_type());
  const Tensor rc = as_compute(r, ct);
  std::vector<double> part(m.B * 3);
  AT_DISPATCH_FLOATING_TYPES(ct, "artlib_native_mtc_fwd", [&] {
    mtc_fwd_kernel<scalar_t>(rc.const_data_ptr<scalar_t>(), m, lam, hinge, part.data());
  });
  double spatial = 0.0, temporal = 0.0, tracklet = 0.0;
  for (int64_t b = 0; b < m.B; ++b) {
    spatial += part[b * 3 + 0];
    temporal += part[b * 3 + 1];
    tracklet += part[b * 3 + 2];
  }
  spatial /= m.B;
  temporal /= m.B;
  tracklet /= m.B;
  const double total = w_s * spatial + w_t * temporal + w_tr * tracklet;  // Eq. 8
  Tensor out = at::empty({4}, at::TensorOptions().dtype(at::kDouble));
  double* o = out.mutable_data_ptr<double>();
  o[0] = total;
  o[1] = spatial;
  o[2] = temporal;
  o[3] = tracklet;
  return out.to(ct);
}

Tensor mtc_bwd(const Tensor& grad, const Tensor& r, double lam, bool hinge, double w_s, double w_t,
               double w_tr) {
  const MtcDims m = check_mtc(r);
  check_cpu_float(grad, "grad");
  TORCH_CHECK_VALUE(grad.numel() == 4 && grad.dim() == 1,
                    "artlib native: grad must be (4,) = d/d[total, spatial, temporal, tracklet], got ",
                    grad.sizes());
  const Tensor g = grad.to(at::kDouble).contiguous();
  const double* gp = g.const_data_ptr<double>();
  // total = w_s spatial + w_t temporal + w_tr tracklet: fold its gradient into each term's.
  const double c_s = gp[0] * w_s + gp[1], c_t = gp[0] * w_t + gp[2], c_tr = gp[0] * w_tr + gp[3];
  const auto ct = compute_type(r.scalar_type());
  const Tensor rc = as_compute(r, ct);
  Tensor dr = at::empty(rc.sizes(), rc.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "artlib_native_mtc_bwd", [&] {
    mtc_bwd_kernel<scalar_t>(rc.const_data_ptr<scalar_t>(), m, lam, hinge, c_s, c_t, c_tr,
                             dr.mutable_data_ptr<scalar_t>());
  });
  return dr.to(r.scalar_type());
}

}  // namespace
}  // namespace artlib_native

TORCH_LIBRARY_FRAGMENT(artlib, m) {
  m.def(
      "native_mtc_loss_fwd(Tensor r, float lam, bool hinge, float w_s, float w_t, float w_tr) -> "
      "Tensor");
  m.def(
      "native_mtc_loss_bwd(Tensor grad, Tensor r, float lam, bool hinge, float w_s, float w_t, "
      "float w_tr) -> Tensor");
}

TORCH_LIBRARY_IMPL(artlib, CPU, m) {
  m.impl("native_mtc_loss_fwd", &artlib_native::mtc_fwd);
  m.impl("native_mtc_loss_bwd", &artlib_native::mtc_bwd);
}
