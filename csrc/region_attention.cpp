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
// one GEMM yields dx = [dS; P]^T [q; da]. The whole absorbed op (op_fwd / op_bwd below) keeps P
// from its forward instead of lse, and its backward skips S.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
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

// From the saved P: top <- dS = P * (dP - delta), bottom <- P.   (top holds dP)
template <typename T>
inline void softmax_bwd_saved(T* top, T* bottom, const T* p, int64_t n, T delta) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const Vec vdelta(delta);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const Vec pv = Vec::loadu(p + i);
    (pv * (Vec::loadu(top + i) - vdelta)).store(top + i);
    pv.store(bottom + i);
  }
  for (; i < n; ++i) {
    top[i] = p[i] * (top[i] - delta);
    bottom[i] = p[i];
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

// Where row r = (h, k) of frame n lives. The public core ops take rows (N, M, d): one head block,
// K = M. The fused op keeps q~ and A heads-major (heads, N K, d), the layout of the per-head
// projections around the core; the kernels gather a frame's M rows from it into a thread-local
// block (M x d, a few KB) and scatter the results back, so no permuted copy of q~, A or their
// gradients is ever made.
struct Rows {
  int64_t N, K, D;
  int64_t head_stride() const { return N * K * D; }
  bool contiguous(int64_t M) const { return K == M; }
  template <typename T>
  void gather(const T* base, int64_t n, int64_t M, T* out) const {
    for (int64_t h = 0; h < M / K; ++h) {
      const T* src = base + h * head_stride() + n * K * D;
      std::copy(src, src + K * D, out + h * K * D);
    }
  }
  template <typename T>
  void scatter(const T* in, int64_t n, int64_t M, T* base) const {
    for (int64_t h = 0; h < M / K; ++h) {
      std::copy(in + h * K * D, in + (h + 1) * K * D, base + h * head_stride() + n * K * D);
    }
  }
};

template <typename T>
void core_fwd_kernel(const T* q, const T* x, T* a, T* lse, int64_t N, int64_t M, int64_t L,
                     int64_t D, Rows rows) {
  const Gemms<T> mm(M);
  const bool direct = rows.contiguous(M);
  at::parallel_for(0, N, frame_grain(M, L, D), [&](int64_t begin, int64_t end) {
    std::vector<T> s(static_cast<size_t>(M * L));  // this thread's M x L block of S, then P
    std::vector<T> qb(direct ? 0 : static_cast<size_t>(M * D)), ab(qb.size());
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * L * D;
      const T* qn = q + n * M * D;
      T* an = a + n * M * D;
      if (!direct) {
        rows.gather(q, n, M, qb.data());
        qn = qb.data();
        an = ab.data();
      }
      mm.nt(M, L, D, qn, D, xn, D, s.data(), L);  // S = q x^T
      for (int64_t m = 0; m < M; ++m) {
        lse[n * M + m] = softmax_row(s.data() + m * L, L);
      }
      mm.nn(M, D, L, s.data(), L, xn, D, an, D);  // a = P x
      if (!direct) rows.scatter(ab.data(), n, M, a);
    }
  });
}

template <typename T>
void core_bwd_kernel(const T* da, const T* q, const T* x, const T* a, const T* lse, T* dq, T* dx,
                     int64_t N, int64_t M, int64_t L, int64_t D, bool exact_lse, Rows rows) {
  const Gemms<T> mm(M);
  const bool direct = rows.contiguous(M);
  at::parallel_for(0, N, frame_grain(M, L, D), [&](int64_t begin, int64_t end) {
    std::vector<T> w(static_cast<size_t>(2 * M * D));  // [q; da]   (2M x d)
    std::vector<T> y(static_cast<size_t>(2 * M * L));  // [S; dP] -> [dS; P]   (2M x L)
    std::vector<T> ab(direct ? 0 : static_cast<size_t>(M * D)), dqb(ab.size());
    std::vector<T> scratch(exact_lse ? static_cast<size_t>(L) : 0);
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = x + n * L * D;
      const T* an = a + n * M * D;
      T* dqn = dq + n * M * D;
      if (direct) {
        std::copy(q + n * M * D, q + (n + 1) * M * D, w.data());
        std::copy(da + n * M * D, da + (n + 1) * M * D, w.data() + M * D);
      } else {
        rows.gather(q, n, M, w.data());
        rows.gather(da, n, M, w.data() + M * D);
        rows.gather(a, n, M, ab.data());
        an = ab.data();
        dqn = dqb.data();
      }
      const T* dan = w.data() + M * D;
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
      mm.nn(M, D, L, y.data(), L, xn, D, dqn, D);
      if (!direct) rows.scatter(dqb.data(), n, M, dq);
      // dx = [dS; P]^T [q; da] = dS^T q + P^T da
      mm.tn(L, D, 2 * M, y.data(), L, w.data(), D, dx + n * L * D, D);
    }
  });
}

// ---- the whole op's core, with the per-head projections on either side of it -------------------
//
// The stock route runs q~_h = qs_h W_k,h, c_h = A_h W_v,h^T and, in the backward, da_h = dc_h W_v,h,
// d_qs_h = dq_h W_k,h^T, d W_k,h = qs_h^T dq_h, d W_v,h = dc_h^T A_h as depth-32 or width-32
// batched GEMMs over heads-major (heads, N K, d) tensors: at N = 384, K = 16 each such tensor is
// 48 MB written and read back once. Here they run inside the core's parallel loop on blocks of G
// frames (G K >= 64 rows, so that W_k,h and W_v,h are reused from cache at small K): q~, da and dq
// never leave the thread, and each block's A, P, context and d_qs are written once. The forward
// keeps P (N M L values; q~, N M d, is recomputed by the backward instead of kept), so the
// backward computes dP = da x^T alone, not [S; dP] = [q~; da] x^T and exp(S - lse): one of the
// seven M x L x d GEMMs per frame. A and P come from the buffer cache of native.h (pooled_empty):
// on fresh pages, faulting them in costs about as much as the GEMM saved. The weight gradients
// are summed per chunk of blocks (at most 16 chunks, fixed by N and K only) and the chunks
// reduced in order, so the result does not depend on the thread count.

inline int64_t block_frames(int64_t K) { return std::max<int64_t>(1, (64 + K - 1) / K); }

// q~_h = qs_h W_k,h for R rows (one block of frames) into a block buffer (H, ld rows, d). The
// forward does not keep q~ (heads N K d values): the backward recomputes it per block, d_h / L of a
// score GEMM's work.
template <typename T>
inline void q_tilde_block(const T* qs, const T* wk, T* out, int64_t R, int64_t ld, int64_t H,
                          int64_t dh, int64_t D) {
  for (int64_t h = 0; h < H; ++h)  // (R x dh) (dh x d)
    kern::gemm_nn<T>(R, D, dh, qs + h * dh, D, wk + h * dh * D, D, out + h * ld * D, D);
}

template <typename T>
void op_core_fwd_kernel(const T* qs, const T* wk, const T* wv, const T* x, T* a, T* p, T* ctx,
                        int64_t N, int64_t K, int64_t H, int64_t L, int64_t D) {
  const int64_t M = H * K, dh = D / H, NK = N * K;
  const Gemms<T> mm(M);
  const Rows rows{N, K, D};
  const int64_t G = block_frames(K), nb = (N + G - 1) / G;
  at::parallel_for(0, nb, 1, [&](int64_t bb, int64_t be) {
    std::vector<T> qblk(static_cast<size_t>(G * M * D));  // the block's q~, (H, G K, d)
    std::vector<T> qb(static_cast<size_t>(M * D)), ab(qb.size());
    const Rows brows{G, K, D};  // the block buffer's layout
    for (int64_t b = bb; b < be; ++b) {
      const int64_t n0 = b * G, n1 = std::min(N, n0 + G), R = (n1 - n0) * K;
      q_tilde_block(qs + n0 * K * D, wk, qblk.data(), R, G * K, H, dh, D);
      for (int64_t n = n0; n < n1; ++n) {
        const T* xn = x + n * L * D;
        T* pn = p + n * M * L;  // S, then P in place: kept for the backward
        brows.gather(qblk.data(), n - n0, M, qb.data());
        mm.nt(M, L, D, qb.data(), D, xn, D, pn, L);  // S = q x^T
        for (int64_t m = 0; m < M; ++m) softmax_row(pn + m * L, L);
        mm.nn(M, D, L, pn, L, xn, D, ab.data(), D);  // a = P x
        rows.scatter(ab.data(), n, M, a);
      }
      for (int64_t h = 0; h < H; ++h)  // c_h = A_h W_v,h^T   (R x d) (d x dh)
        kern::gemm_nt<T>(R, dh, D, a + h * NK * D + n0 * K * D, D, wv + h * dh * D, D,
                         ctx + n0 * K * D + h * dh, D);
    }
  });
}

template <typename T>
void op_core_bwd_kernel(const T* dc, const T* wv, const T* wk, const T* qs, const T* x, const T* a,
                        const T* p, T* d_qs, T* dx, T* d_wk, T* d_wv, int64_t N, int64_t K,
                        int64_t H, int64_t L, int64_t D) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t M = H * K, dh = D / H, NK = N * K;
  const Gemms<T> mm(M);
  const int64_t G = block_frames(K), nb = (N + G - 1) / G;
  const int64_t nch = std::min<int64_t>(nb, 16), per = (nb + nch - 1) / nch;  // blocks per chunk
  // d W_k, d W_v per chunk; each zeroes its own
  const Tensor part_t =
      pooled_empty({2 * nch * D * D}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  T* const part = part_t.mutable_data_ptr<T>();
  at::parallel_for(0, nch, 1, [&](int64_t cb, int64_t ce) {
    std::vector<T> w(static_cast<size_t>(2 * M * D));  // [q; da]   (2M x d)
    std::vector<T> y(static_cast<size_t>(2 * M * L));  // [dP; -] -> [dS; P]   (2M x L)
    // per block, (H, G K, d): da, dq and q~ (recomputed from qs, not saved by the forward)
    std::vector<T> dab(static_cast<size_t>(G * M * D)), dqb(dab.size()), qblk(dab.size());
    std::vector<T> dqf(static_cast<size_t>(M * D)), tmp(static_cast<size_t>(dh * D));
    const Rows brows{G, K, D};  // the block buffers' layout
    auto acc = [&](T* dst) {
      at::vec::map2([](Vec u, Vec v) { return u + v; }, dst, dst, tmp.data(), dh * D);
    };
    for (int64_t c = cb; c < ce; ++c) {
      T* pk = part + 2 * c * D * D;
      T* pv = pk + D * D;
      std::fill(pk, pk + 2 * D * D, T(0));
      for (int64_t b = c * per; b < std::min(nb, (c + 1) * per); ++b) {
        const int64_t n0 = b * G, n1 = std::min(N, n0 + G), R = (n1 - n0) * K;
        q_tilde_block(qs + n0 * K * D, wk, qblk.data(), R, G * K, H, dh, D);
        for (int64_t h = 0; h < H; ++h) {
          const T* dch = dc + n0 * K * D + h * dh;
          // da_h = dc_h W_v,h   (R x dh) (dh x d);   d W_v,h += dc_h^T A_h   (dh x R) (R x d)
          kern::gemm_nn<T>(R, D, dh, dch, D, wv + h * dh * D, D, dab.data() + h * G * K * D, D);
          kern::gemm_tn<T>(dh, D, R, dch, D, a + h * NK * D + n0 * K * D, D, tmp.data(), D);
          acc(pv + h * dh * D);
        }
        for (int64_t n = n0; n < n1; ++n) {
          const T* xn = x + n * L * D;
          T* dan = w.data() + M * D;
          brows.gather(qblk.data(), n - n0, M, w.data());
          brows.gather(dab.data(), n - n0, M, dan);
          mm.nt(M, L, D, dan, D, xn, D, y.data(), L);  // dP = da x^T (P is saved: no S)
          for (int64_t m = 0; m < M; ++m) {
            const T* am = a + (m / K) * NK * D + (n * K + m % K) * D;
            softmax_bwd_saved(y.data() + m * L, y.data() + (M + m) * L, p + (n * M + m) * L, L,
                              dot(dan + m * D, am, D));
          }
          // dq = dS x, into the block buffer;  dx = [dS; P]^T [q; da]
          mm.nn(M, D, L, y.data(), L, xn, D, dqf.data(), D);
          brows.scatter(dqf.data(), n - n0, M, dqb.data());
          mm.tn(L, D, 2 * M, y.data(), L, w.data(), D, dx + n * L * D, D);
        }
        for (int64_t h = 0; h < H; ++h) {
          const T* dqh = dqb.data() + h * G * K * D;
          const T* qsh = qs + n0 * K * D + h * dh;
          // d_qs_h = dq_h W_k,h^T   (R x d) (d x dh);   d W_k,h += qs_h^T dq_h   (dh x R) (R x d)
          kern::gemm_nt<T>(R, dh, D, dqh, D, wk + h * dh * D, D, d_qs + n0 * K * D + h * dh, D);
          kern::gemm_tn<T>(dh, D, R, qsh, D, dqh, D, tmp.data(), D);
          acc(pk + h * dh * D);
        }
      }
    }
  });
  std::fill(d_wk, d_wk + D * D, T(0));
  std::fill(d_wv, d_wv + D * D, T(0));
  for (int64_t c = 0; c < nch; ++c) {
    const T* pk = part + 2 * c * D * D;
    at::vec::map2([](Vec u, Vec v) { return u + v; }, d_wk, d_wk, pk, D * D);
    at::vec::map2([](Vec u, Vec v) { return u + v; }, d_wv, d_wv, pk + D * D, D * D);
  }
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

// The core on q~ in either layout: rows (N, M, d), K = M, or heads-major (heads, N K, d). A and dq
// come back in q~'s layout, lse as (N, M), dx as (N, L, d).
std::tuple<Tensor, Tensor> core_fwd_impl(const Tensor& q, const Tensor& x, int64_t K) {
  const auto ct = compute_type(q.scalar_type());
  const Tensor qc = as_compute(q, ct), xc = as_compute(x, ct);
  const int64_t N = x.size(0), L = x.size(1), D = x.size(2), M = q.numel() / (N * D);
  Tensor a = at::empty_like(qc);
  Tensor lse = at::empty({N, M}, qc.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "artlib_native_core_fwd", [&] {
    core_fwd_kernel<scalar_t>(qc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                              a.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<scalar_t>(), N, M,
                              L, D, Rows{N, K, D});
  });
  return {a.to(q.scalar_type()), lse};
}

std::tuple<Tensor, Tensor> core_bwd_impl(const Tensor& da, const Tensor& q, const Tensor& x,
                                         const Tensor& a, const Tensor& lse, int64_t K) {
  const auto ct = compute_type(q.scalar_type());
  const Tensor qc = as_compute(q, ct), xc = as_compute(x, ct), dac = as_compute(da, ct),
               ac = as_compute(a, ct), lsec = as_compute(lse, ct);
  // A float64 gradient given a float32 lse (e.g. from another implementation) recomputes each
  // row's logsumexp from S: P = exp(S - lse) with a float32 lse is only float32-exact.
  const bool exact_lse = ct == at::kDouble && lse.scalar_type() != at::kDouble;
  const int64_t N = x.size(0), L = x.size(1), D = x.size(2), M = q.numel() / (N * D);
  Tensor dq = at::empty_like(qc);
  Tensor dx = at::empty({N, L, D}, qc.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "artlib_native_core_bwd", [&] {
    core_bwd_kernel<scalar_t>(dac.const_data_ptr<scalar_t>(), qc.const_data_ptr<scalar_t>(),
                              xc.const_data_ptr<scalar_t>(), ac.const_data_ptr<scalar_t>(),
                              lsec.const_data_ptr<scalar_t>(), dq.mutable_data_ptr<scalar_t>(),
                              dx.mutable_data_ptr<scalar_t>(), N, M, L, D, exact_lse,
                              Rows{N, K, D});
  });
  return {dq.to(q.scalar_type()), dx.to(x.scalar_type())};
}

std::tuple<Tensor, Tensor> core_fwd(const Tensor& q, const Tensor& x) {
  check_core_inputs(q, x);
  return core_fwd_impl(q, x, q.size(1));
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
  return core_bwd_impl(da, q, x, a, lse, q.size(1));
}

// ---- the whole absorbed op: the projections around the core, in one call ----------------------
//
// The same computation as artlib.ops.region_attention.op (``_forward`` / ``_backward``), written
// with ATen calls in C++: at the paper's K = 2 the op is a dozen small GEMMs around the core, and
// from Python each costs several microseconds of interpreter and dispatch time, more than its
// arithmetic at small N. One call here pays that once. q~ and A stay heads-major (heads, N K, d),
// the layout the per-head projections produce and consume; the core kernels read and write it
// directly (Rows above), so there is no permuted copy either way.

void check_op_inputs(const Tensor& query, const Tensor& x, const Tensor& w_in, const Tensor& w_out,
                     int64_t heads) {
  check_cpu_float(query, "query");
  check_cpu_float(x, "x");
  check_dim(query, 3, "query", "(N, K, d)");
  check_dim(x, 3, "x", "(N, L, d)");
  const int64_t N = query.size(0), D = query.size(2);
  TORCH_CHECK_VALUE(x.size(0) == N && x.size(2) == D && x.size(1) >= 1,
                    "artlib native: x must be (N, L, d) = (", N, ", L >= 1, ", D,
                    ") to match query ", query.sizes(), ", got ", x.sizes());
  TORCH_CHECK_VALUE(heads >= 1 && D % heads == 0, "artlib native: d = ", D,
                    " must be divisible by num_heads = ", heads);
  TORCH_CHECK_VALUE(w_in.dim() == 2 && w_in.size(0) == 3 * D && w_in.size(1) == D,
                    "artlib native: in_proj_weight must be (3d, d) = (", 3 * D, ", ", D, "), got ",
                    w_in.sizes());
  TORCH_CHECK_VALUE(w_out.dim() == 2 && w_out.size(0) == D && w_out.size(1) == D,
                    "artlib native: out_proj_weight must be (d, d) = (", D, ", ", D, "), got ",
                    w_out.sizes());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> op_fwd(
    const Tensor& query, const Tensor& x, const Tensor& w_in, const c10::optional<Tensor>& b_in,
    const Tensor& w_out, const c10::optional<Tensor>& b_out, int64_t heads) {
  check_op_inputs(query, x, w_in, w_out, heads);
  const int64_t N = query.size(0), K = query.size(1), D = query.size(2), NK = N * K;
  const int64_t dh = D / heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  const Tensor w_q = w_in.narrow(0, 0, D), w_k = w_in.narrow(0, D, D), w_v = w_in.narrow(0, 2 * D, D);
  const Tensor q2 = query.reshape({NK, D});
  // qs = (query W_q^T + b_q) / sqrt(d_h);  q~_h = qs_h W_k,h  (the key bias cancels)
  Tensor qs = b_in.has_value() ? at::addmm(b_in->narrow(0, 0, D), q2, w_q.t(), scale, scale)
                               : at::mm(q2, w_q.t()).mul_(scale);
  const auto ct = compute_type(query.scalar_type());
  const Tensor qsc = as_compute(qs, ct), wkc = as_compute(w_k, ct), wvc = as_compute(w_v, ct),
               xc = as_compute(x, ct);
  Tensor a_hm = pooled_empty({heads, NK, D}, qsc.options());
  // Kept for the backward: A heads-major and P (N, heads K, L), rows (h k), the softmax weights,
  // so that the backward computes dP = da x^T but not S = q~ x^T again (P is N M L values, less
  // than the N M d of q~, which is not kept: the backward recomputes it per block from qs)
  Tensor p = pooled_empty({N, heads * K, x.size(1)}, qsc.options());
  Tensor context = at::empty({NK, D}, qsc.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "artlib_native_op_fwd", [&] {
    op_core_fwd_kernel<scalar_t>(
        qsc.const_data_ptr<scalar_t>(), wkc.const_data_ptr<scalar_t>(),
        wvc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
        a_hm.mutable_data_ptr<scalar_t>(),
        p.mutable_data_ptr<scalar_t>(), context.mutable_data_ptr<scalar_t>(), N, K, heads,
        x.size(1), D);
  });
  // context = [c_h + b_v,h over heads];  out = context W_o^T + b_o
  if (b_in.has_value()) context.add_(b_in->narrow(0, 2 * D, D));
  const auto dt = query.scalar_type();
  a_hm = a_hm.to(dt);
  context = context.to(dt);
  Tensor out = at::linear(context, w_out, b_out).view({N, K, D});
  return {out, a_hm, p, qs, context};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> op_bwd(
    const Tensor& d_out, const Tensor& query, const Tensor& x, const Tensor& w_in,
    const Tensor& w_out, const Tensor& a_hm, const Tensor& p,
    const Tensor& qs, const Tensor& context, int64_t heads) {
  check_op_inputs(query, x, w_in, w_out, heads);
  const int64_t N = query.size(0), K = query.size(1), D = query.size(2), NK = N * K;
  const int64_t dh = D / heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  TORCH_CHECK_VALUE(p.dim() == 3 && p.size(0) == N && p.size(1) == heads * K &&
                        p.size(2) == x.size(1),
                    "artlib native: p (the forward's softmax weights) must be (N, heads K, L) = (",
                    N, ", ", heads * K, ", ", x.size(1), "), got ", p.sizes());
  const Tensor w_q = w_in.narrow(0, 0, D), w_k = w_in.narrow(0, D, D).view({heads, dh, D}),
               w_v = w_in.narrow(0, 2 * D, D).view({heads, dh, D});
  // d in_proj_weight = [d W_q; d W_k; d W_v], each written in place (no concatenation)
  Tensor d_w_in = at::empty({3 * D, D}, w_in.options());
  // out = context W_o^T + b_o;  context_h = A_h W_v,h^T + b_v,h
  const Tensor g = d_out.reshape({NK, D});
  Tensor d_w_out = g.t().mm(context);
  Tensor d_b_out = g.sum(0);
  Tensor d_context = g.mm(w_out);
  // the core, with da = dc W_v and d W_v = dc^T A before it, d_qs = dq W_k^T and d W_k = qs^T dq
  // after it
  const auto ct = compute_type(query.scalar_type());
  const Tensor dcc = as_compute(d_context, ct), wvc = as_compute(w_v, ct),
               wkc = as_compute(w_k, ct), qsc = as_compute(qs, ct),
               xc = as_compute(x, ct), ac = as_compute(a_hm, ct), pc = as_compute(p, ct);
  Tensor d_qs = at::empty({NK, D}, qsc.options());
  Tensor dx = at::empty({N, x.size(1), D}, qsc.options());
  Tensor d_wk = at::empty({2, D, D}, qsc.options());  // d W_k, d W_v
  AT_DISPATCH_FLOATING_TYPES(ct, "artlib_native_op_bwd", [&] {
    op_core_bwd_kernel<scalar_t>(
        dcc.const_data_ptr<scalar_t>(), wvc.const_data_ptr<scalar_t>(),
        wkc.const_data_ptr<scalar_t>(), qsc.const_data_ptr<scalar_t>(),
        xc.const_data_ptr<scalar_t>(),
        ac.const_data_ptr<scalar_t>(), pc.const_data_ptr<scalar_t>(),
        d_qs.mutable_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
        d_wk.mutable_data_ptr<scalar_t>(), d_wk.mutable_data_ptr<scalar_t>() + D * D, N, K,
        heads, x.size(1), D);
  });
  d_w_in.narrow(0, D, 2 * D).copy_(d_wk.view({2 * D, D}));
  Tensor d_qp = d_qs.mul_(scale).to(query.scalar_type());
  Tensor d_w_q = d_w_in.narrow(0, 0, D);
  at::mm_out(d_w_q, d_qp.t(), query.reshape({NK, D}));
  Tensor d_query = d_qp.mm(w_q).view({N, K, D});
  // the key bias cancels in the softmax: its gradient is exactly 0
  Tensor d_b_in = at::empty({3 * D}, d_qp.options());
  Tensor d_b_q = d_b_in.narrow(0, 0, D), d_b_v = d_b_in.narrow(0, 2 * D, D);
  at::sum_out(d_b_q, d_qp, {0});
  d_b_in.narrow(0, D, D).zero_();
  at::sum_out(d_b_v, d_context, {0});
  return {d_query, dx.to(x.scalar_type()), d_w_in, d_b_in, d_w_out, d_b_out};
}

}  // namespace
}  // namespace artlib_native

TORCH_LIBRARY_FRAGMENT(artlib, m) {
  m.def("native_region_attention_core_fwd(Tensor q, Tensor x) -> (Tensor, Tensor)");
  m.def(
      "native_region_attention_core_bwd(Tensor da, Tensor q, Tensor x, Tensor a, Tensor lse) -> "
      "(Tensor, Tensor)");
  m.def(
      "native_region_attention_fwd(Tensor query, Tensor x, Tensor in_proj_weight, "
      "Tensor? in_proj_bias, Tensor out_proj_weight, Tensor? out_proj_bias, int num_heads) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "native_region_attention_bwd(Tensor d_out, Tensor query, Tensor x, Tensor in_proj_weight, "
      "Tensor out_proj_weight, Tensor a_hm, Tensor p, Tensor qs, Tensor context, "
      "int num_heads) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(artlib, CPU, m) {
  m.impl("native_region_attention_core_fwd", &artlib_native::core_fwd);
  m.impl("native_region_attention_core_bwd", &artlib_native::core_bwd);
  m.impl("native_region_attention_fwd", &artlib_native::op_fwd);
  m.impl("native_region_attention_bwd", &artlib_native::op_bwd);
}
