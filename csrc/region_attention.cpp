// Native CPU kernels for the region-attention core (DESIGN.md "The core, written out"), the absorbed
// form of Eq. 3 of the ART paper.
//
// Shapes: N frames (B*T), M query rows per frame (heads*K, the heads folded into the queries),
// L tokens per frame, d latent width.
//   q (N, M, d)  queries, already scaled by 1/sqrt(d_h);   x (N, L, d)  frame tokens (keys = values).
//
// Forward, per frame:   S = q x^T (M x L),  P = softmax_rows(S),  a = P x (M x d),  lse = logsumexp_rows(S)
//                       (a in q's dtype; lse in float32, float64 for float64 input; float16 and
//                       bfloat16 are computed in float32)
// Backward, given da:   dP = da x^T;  delta_m = da_m . a_m;  dS = P * (dP - delta);
//                       dq = dS x;  dx = P^T da + dS^T q
//
// Equivalent to `torch.softmax(q @ x.mT, -1) @ x` (and its autograd), but each frame's x is read from
// memory once per pass: one thread owns a frame, its M x L score block lives in a thread-local buffer
// (<= 200 KB at M = 128, L = 196), and the two (forward) or three (backward) GEMMs that touch x run
// back to back while x sits in L2. The backward stacks [q; da] so that one GEMM yields [S; dP] and
// one GEMM yields dx = [dS; P]^T [q; da].
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "gemm.h"
#include "native.h"

namespace artlib_native {
namespace {

using at::Tensor;

template <typename T>
inline T row_max(const T* row, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  return at::vec::reduce_all<T>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, row, n);
}

// row <- exp(row - shift); returns the sum of the new row.
template <typename T>
inline T exp_shift_sum(T* row, int64_t n, T shift) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const Vec vshift(shift);
  Vec vsum(T(0));
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    Vec v = (Vec::loadu(row + i) - vshift).exp();
    v.store(row + i);
    vsum = vsum + v;
  }
  T sum = at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, vsum);
  for (; i < n; ++i) {
    row[i] = std::exp(row[i] - shift);
    sum += row[i];
  }
  return sum;
}

// In place: row <- softmax(row); returns logsumexp of the original row.
template <typename T>
inline T softmax_row(T* row, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  const T mx = row_max(row, n);
  const T sum = exp_shift_sum(row, n, mx);
  const T inv = T(1) / sum;
  at::vec::map([inv](Vec v) { return v * Vec(inv); }, row, row, n);
  return mx + std::log(sum);
}

// logsumexp of a row, without changing it (float64 backward given a float32 lse: see core_bwd).
template <typename T>
inline T row_logsumexp(const T* row, int64_t n, T* scratch) {
  const T mx = row_max(row, n);
  std::copy(row, row + n, scratch);
  return mx + std::log(exp_shift_sum(scratch, n, mx));
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  return at::vec::map2_reduce_all<T>([](Vec x, Vec y) { return x * y; },
                                     [](Vec x, Vec y) { return x + y; }, a, b, n);
}

// top <- dS = P * (dP - delta) with P = exp(S - lse); bottom <- P.   (top holds S, bottom holds dP)
template <typename T>
inline void softmax_bwd_rows(T* top, T* bottom, int64_t n, T lse, T delta) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const Vec vlse(lse), vdelta(delta);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    Vec p = (Vec::loadu(top + i) - vlse).exp();
    Vec ds = p * (Vec::loadu(bottom + i) - vdelta);
    ds.store(top + i);
    p.store(bottom + i);
  }
  for (; i < n; ++i) {
    T p = std::exp(top[i] - lse);
    top[i] = p * (bottom[i] - delta);
    bottom[i] = p;
  }
}

// The three GEMM shapes of the core, on the micro-kernels of gemm.h or on the BLAS in libtorch.
// "auto" takes the micro-kernels for M <= 32 query rows and BLAS above. Measured on the 2-core dev
// box (AVX2, MKL), N = 384 frames, best of 8: M = 16 fwd 80 vs 108 ms, bwd 335 vs 343 ms (own vs
// MKL); M = 128 fwd 466 vs 420 ms, bwd 1054 vs 817 ms. Without usable BLAS symbols the
// micro-kernels run everywhere. ARTLIB_NATIVE_GEMM=own|blas|aten forces one (benchmarks, tests;
// "aten" is at::mm on slices, the slow but safe path).
template <typename T>
struct Gemms {
  bool own = true;
  bool blas = false;

  explicit Gemms(int64_t M) {
    const char* env = std::getenv("ARTLIB_NATIVE_GEMM");
    const std::string mode = env ? env : "auto";
    blas = blas_ok<T>();
    if (mode == "own") {
      own = true;
    } else if (mode == "blas") {
      own = false;
    } else if (mode == "aten") {
      own = blas = false;
    } else {
      own = M <= 32 || !blas;
    }
  }
  // C (m x n) = A (m x k) B (n x k)^T
  void nt(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
          int64_t ldc) const {
    if (own) return kern::gemm_nt<T>(m, n, k, A, lda, B, ldb, C, ldc);
    gemm<T>(false, true, m, n, k, T(1), A, lda, B, ldb, T(0), C, ldc, blas);
  }
  // C (m x n) = A (m x k) B (k x n)
  void nn(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
          int64_t ldc) const {
    if (own) return kern::gemm_nn<T>(m, n, k, A, lda, B, ldb, C, ldc);
    gemm<T>(false, false, m, n, k, T(1), A, lda, B, ldb, T(0), C, ldc, blas);
  }
  // C (m x n) = A (k x m)^T B (k x n)
  void tn(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
          int64_t ldc) const {
    if (own) return kern::gemm_tn<T>(m, n, k, A, lda, B, ldb, C, ldc);
    gemm<T>(true, false, m, n, k, T(1), A, lda, B, ldb, T(0), C, ldc, blas);
  }
};

// Frames per parallel task: at least ~1M multiply-adds each (at the paper's shapes, 16 x 196 x 256
// per GEMM, every frame is its own task), so tiny calls do not pay for waking OpenMP threads.
inline int64_t frame_grain(int64_t M, int64_t L, int64_t D) {
  return std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, M * L * D));
}

template <typename T>
void core_fwd_kernel(const T* q, const T* x, T* a, T* lse, int64_t N, int64_t M, int64_t L,
                     int64_t D) {
  const Gemms<T> mm(M);
  at::parallel_for(0, N, frame_grain(M, L, D), [&](int64_t begin, int64_t end) {
    std::vector<T> s(static_cast<size_t>(M * L));  // this thread's M x L block of S, then P
    for (int64_t n = begin; n < end; ++n) {
      const T* qn = q + n * M * D;
      const T* xn = x + n * L * D;
      mm.nt(M, L, D, qn, D, xn, D, s.data(), L);  // S = q x^T
      for (int64_t m = 0; m < M; ++m) {
        lse[n * M + m] = softmax_row(s.data() + m * L, L);
      }
      mm.nn(M, D, L, s.data(), L, xn, D, a + n * M * D, D);  // a = P x
    }
  });
}

template <typename T>
void core_bwd_kernel(const T* da, const T* q, const T* x, const T* a, const T* lse, T* dq, T* dx,
                     int64_t N, int64_t M, int64_t L, int64_t D, bool exact_lse) {
  const Gemms<T> mm(M);
  at::parallel_for(0, N, frame_grain(M, L, D), [&](int64_t begin, int64_t end) {
    std::vector<T> w(static_cast<size_t>(2 * M * D));  // [q; da]   (2M x d)
    std::vector<T> y(static_cast<size_t>(2 * M * L));  // [S; dP] -> [dS; P]   (2M x L)
    std::vector<T> scratch(exact_lse ? static_cast<size_t>(L) : 0);
    for (int64_t n = begin; n < end; ++n) {
      const T* qn = q + n * M * D;
      const T* dan = da + n * M * D;
      const T* an = a + n * M * D;
      const T* xn = x + n * L * D;
      std::copy(qn, qn + M * D, w.data());
      std::copy(dan, dan + M * D, w.data() + M * D);
      // [S; dP] = [q; da] x^T: x is read once for both.
      mm.nt(2 * M, L, D, w.data(), D, xn, D, y.data(), L);
      for (int64_t m = 0; m < M; ++m) {
        T* top = y.data() + m * L;
        T* bottom = y.data() + (M + m) * L;
        const T row_lse =
            exact_lse ? row_logsumexp(top, L, scratch.data()) : lse[n * M + m];
        const T delta = dot(dan + m * D, an + m * D, D);  // delta_m = da_m . a_m
        softmax_bwd_rows(top, bottom, L, row_lse, delta);
      }
      // dq = dS x
      mm.nn(M, D, L, y.data(), L, xn, D, dq + n * M * D, D);
      // dx = [dS; P]^T [q; da] = dS^T q + P^T da
      mm.tn(L, D, 2 * M, y.data(), L, w.data(), D, dx + n * L * D, D);
    }
  });
}

void check_core_inputs(const Tensor& q, const Tensor& x) {
  check_cpu_float(q, "q");
  check_cpu_float(x, "x");
  check_dim(q, 3, "q", "(N, M, d)");
  check_dim(x, 3, "x", "(N, L, d)");
  TORCH_CHECK_VALUE(x.size(0) == q.size(0) && x.size(2) == q.size(2),
                    "artlib native: x must be (N, L, d) = (", q.size(0), ", L, ", q.size(2),
                    ") to match q ", q.sizes(), ", got ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) >= 1, "artlib native: x must have L >= 1 tokens, got ", x.sizes());
  TORCH_CHECK_TYPE(q.scalar_type() == x.scalar_type(), "artlib native: q and x must share a dtype, got ",
                   q.scalar_type(), " and ", x.scalar_type());
}

std::tuple<Tensor, Tensor> core_fwd(const Tensor& q, const Tensor& x) {
  check_core_inputs(q, x);
  const auto ct = compute_type(q.scalar_type());
  const Tensor qc = as_compute(q, ct), xc = as_compute(x, ct);
  const int64_t N = q.size(0), M = q.size(1), L = x.size(1), D = q.size(2);
  Tensor a = at::empty({N, M, D}, qc.options());
  Tensor lse = at::empty({N, M}, qc.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "artlib_native_core_fwd", [&] {
    core_fwd_kernel<scalar_t>(qc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                              a.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<scalar_t>(), N, M,
                              L, D);
  });
  return {a.to(q.scalar_type()), lse};
}

std::tuple<Tensor, Tensor> core_bwd(const Tensor& da, const Tensor& q, const Tensor& x,
                                    const Tensor& a, const Tensor& lse) {
  check_core_inputs(q, x);
  check_cpu_float(da, "da");
  check_cpu_float(a, "a");
  check_cpu_float(lse, "lse");
  TORCH_CHECK_VALUE(da.sizes() == q.sizes(), "artlib native: da must have q's shape ", q.sizes(),
                    ", got ", da.sizes());
  TORCH_CHECK_VALUE(a.sizes() == q.sizes(), "artlib native: a must have q's shape ", q.sizes(),
                    ", got ", a.sizes());
  TORCH_CHECK_VALUE(lse.dim() == 2 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1),
                    "artlib native: lse must be (N, M) = (", q.size(0), ", ", q.size(1), "), got ",
                    lse.sizes());
  const auto ct = compute_type(q.scalar_type());
  const Tensor qc = as_compute(q, ct), xc = as_compute(x, ct), dac = as_compute(da, ct),
               ac = as_compute(a, ct), lsec = as_compute(lse, ct);
  // A float64 gradient given a float32 lse (e.g. from another implementation) recomputes each
  // row's logsumexp from S: P = exp(S - lse) with a float32 lse is only float32-exact.
  const bool exact_lse = ct == at::kDouble && lse.scalar_type() != at::kDouble;
  const int64_t N = q.size(0), M = q.size(1), L = x.size(1), D = q.size(2);
  Tensor dq = at::empty({N, M, D}, qc.options());
  Tensor dx = at::empty({N, L, D}, qc.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "artlib_native_core_bwd", [&] {
    core_bwd_kernel<scalar_t>(dac.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(),
                              xc.const_data_ptr<scalar_t>(), ac.const_data_ptr<scalar_t>(),
                              lsec.const_data_ptr<scalar_t>(), dq.mutable_data_ptr<scalar_t>(),
                              dx.mutable_data_ptr<scalar_t>(), N, M, L, D, exact_lse);
  });
  return {dq.to(q.scalar_type()), dx.to(x.scalar_type())};
}

}  // namespace
}  // namespace artlib_native

TORCH_LIBRARY_FRAGMENT(artlib, m) {
  m.def("native_region_attention_core_fwd(Tensor q, Tensor x) -> (Tensor, Tensor)");
  m.def(
      "native_region_attention_core_bwd(Tensor da, Tensor q, Tensor x, Tensor a, Tensor lse) -> "
      "(Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(artlib, CPU, m) {
  m.impl("native_region_attention_core_fwd", &artlib_native::core_fwd);
  m.impl("native_region_attention_core_bwd", &artlib_native::core_bwd);
}
