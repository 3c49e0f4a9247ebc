// Register-blocked GEMM micro-kernels (at::vec, so AVX2/AVX512/NEON or plain C++) for the small
// per-frame products of the region-attention core, all row-major, C overwritten (no beta):
//
//   gemm_nt:  C (m x n) = A (m x k) B (n x k)^T    dot-product form: S = q x^T, [S; dP] = [q; da] x^T
//   gemm_nn:  C (m x n) = A (m x k) B (k x n)      outer-product form: a = P x, dq = dS x
//   gemm_tn:  C (m x n) = A (k x m)^T B (k x n)    outer-product form: dx = [dS; P]^T [q; da]
//
// Why not only BLAS: with M = 16 query rows, MKL's sgemm for S = q x^T (x used transposed) ran at
// 24-27 GFLOPS on one core of a 2-core AMD EPYC (AVX2), against ~60 for these kernels;
// at M = 128 both are near the core's peak. The kernel choice is made per call in region_attention.cpp.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace artlib_native {
namespace kern {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// ---- dot-product form: C[i, j] = A[i, :] . B[j, :] -------------------------------------------------

// An MR x NR block of C: MR rows of A and NR rows of B stay in registers while k streams by; the
// MR*NR vector accumulators are reduced across lanes once at the end.
template <typename T, int MR, int NR>
inline void nt_block(int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                     int64_t ldc) {
  constexpr int64_t W = Vec<T>::size();
  Vec<T> acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) acc[r][c] = Vec<T>(T(0));
  int64_t kk = 0;
  for (; kk + W <= k; kk += W) {
    Vec<T> a[MR];
    for (int r = 0; r < MR; ++r) a[r] = Vec<T>::loadu(A + r * lda + kk);
    for (int c = 0; c < NR; ++c) {
      const Vec<T> b = Vec<T>::loadu(B + c * ldb + kk);
      for (int r = 0; r < MR; ++r) acc[r][c] = at::vec::fmadd(a[r], b, acc[r][c]);
    }
  }
  if (kk < k) {  // k tail: zero-filled partial loads add nothing
    const int64_t rem = k - kk;
    Vec<T> a[MR];
    for (int r = 0; r < MR; ++r) a[r] = Vec<T>::loadu(A + r * lda + kk, rem);
    for (int c = 0; c < NR; ++c) {
      const Vec<T> b = Vec<T>::loadu(B + c * ldb + kk, rem);
      for (int r = 0; r < MR; ++r) acc[r][c] = at::vec::fmadd(a[r], b, acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c)
      C[r * ldc + c] = at::vec::vec_reduce_all<T>(
          [](Vec<T>& x, Vec<T>& y) { return x + y; }, acc[r][c]);
}

template <typename T>
void gemm_nt(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc) {
  constexpr int MR = 2, NR = 4;  // 8 accumulators + 2 + 1 loads: fits 16 AVX2 registers
  // Rows of A in chunks of ~16 KB that stay in L1 while all of B streams past in NR-row groups
  // (at M = 128 without the chunks, A (256 KB) streamed from L2 once per 4 rows of x: 30% slower).
  const int64_t ib = std::max<int64_t>(MR, (16384 / (std::max<int64_t>(k, 1) * sizeof(T))) / MR * MR);
  for (int64_t i0 = 0; i0 < m; i0 += ib) {
    const int64_t i1 = std::min(m, i0 + ib);
    int64_t j = 0;
    for (; j + NR <= n; j += NR) {
      const T* b = B + j * ldb;
      int64_t i = i0;
      for (; i + MR <= i1; i += MR) nt_block<T, MR, NR>(k, A + i * lda, lda, b, ldb, C + i * ldc + j, ldc);
      for (; i < i1; ++i) nt_block<T, 1, NR>(k, A + i * lda, lda, b, ldb, C + i * ldc + j, ldc);
    }
    for (; j < n; ++j) {
      const T* b = B + j * ldb;
      int64_t i = i0;
      for (; i + MR <= i1; i += MR) nt_block<T, MR, 1>(k, A + i * lda, lda, b, ldb, C + i * ldc + j, ldc);
      for (; i < i1; ++i) nt_block<T, 1, 1>(k, A + i * lda, lda, b, ldb, C + i * ldc + j, ldc);
    }
  }
}

// ---- outer-product form: C[i, :] = sum_kk A(i, kk) B[kk, :], A(i, kk) = A[i * sai + kk * sak] ----

// An MR x (NV vectors) block of C in registers; each step broadcasts MR elements of A and loads NV
// vectors of a row of B (the 6 x 16 float shape of BLIS's Haswell kernel: 12 accumulators).
// PARTIAL: the last vector covers only `last` columns.
template <typename T, int MR, int NV, bool PARTIAL>
inline void nn_block(int64_t k, const T* A, int64_t sai, int64_t sak, const T* B, int64_t ldb,
                     T* C, int64_t ldc, int64_t last) {
  constexpr int64_t W = Vec<T>::size();
  Vec<T> acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = Vec<T>(T(0));
  for (int64_t kk = 0; kk < k; ++kk) {
    const T* brow = B + kk * ldb;
    Vec<T> b[NV];
    for (int c = 0; c < NV; ++c)
      b[c] = (PARTIAL && c == NV - 1) ? Vec<T>::loadu(brow + c * W, last) : Vec<T>::loadu(brow + c * W);
    const T* acol = A + kk * sak;
    for (int r = 0; r < MR; ++r) {
      const Vec<T> a(acol[r * sai]);
      for (int c = 0; c < NV; ++c) acc[r][c] = at::vec::fmadd(a, b[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NV; ++c) {
      if (PARTIAL && c == NV - 1) {
        acc[r][c].store(C + r * ldc + c * W, last);
      } else {
        acc[r][c].store(C + r * ldc + c * W);
      }
    }
}

template <typename T, int NV, bool PARTIAL>
inline void nn_column_strip(int64_t m, int64_t k, const T* A, int64_t sai, int64_t sak, const T* B,
                            int64_t ldb, T* C, int64_t ldc, int64_t last) {
  constexpr int MR = 6;
  int64_t i = 0;
  for (; i + MR <= m; i += MR)
    nn_block<T, MR, NV, PARTIAL>(k, A + i * sai, sai, sak, B, ldb, C + i * ldc, ldc, last);
  const T* a = A + i * sai;
  T* c = C + i * ldc;
  switch (m - i) {
    case 5: nn_block<T, 5, NV, PARTIAL>(k, a, sai, sak, B, ldb, c, ldc, last); break;
    case 4: nn_block<T, 4, NV, PARTIAL>(k, a, sai, sak, B, ldb, c, ldc, last); break;
    case 3: nn_block<T, 3, NV, PARTIAL>(k, a, sai, sak, B, ldb, c, ldc, last); break;
    case 2: nn_block<T, 2, NV, PARTIAL>(k, a, sai, sak, B, ldb, c, ldc, last); break;
    case 1: nn_block<T, 1, NV, PARTIAL>(k, a, sai, sak, B, ldb, c, ldc, last); break;
    default: break;
  }
}

// C (m x n) = A(i, kk) B (k x n); columns outer, so a strip of B (k x 16 floats) stays in L1.
template <typename T>
void gemm_outer(int64_t m, int64_t n, int64_t k, const T* A, int64_t sai, int64_t sak, const T* B,
                int64_t ldb, T* C, int64_t ldc) {
  constexpr int64_t W = Vec<T>::size();
  constexpr int NV = 2;
  int64_t j = 0;
  for (; j + NV * W <= n; j += NV * W)
    nn_column_strip<T, NV, false>(m, k, A, sai, sak, B + j, ldb, C + j, ldc, W);
  for (; j + W <= n; j += W) nn_column_strip<T, 1, false>(m, k, A, sai, sak, B + j, ldb, C + j, ldc, W);
  if (j < n) nn_column_strip<T, 1, true>(m, k, A, sai, sak, B + j, ldb, C + j, ldc, n - j);
}

template <typename T>
inline void gemm_nn(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                    int64_t ldb, T* C, int64_t ldc) {
  gemm_outer<T>(m, n, k, A, lda, 1, B, ldb, C, ldc);
}

template <typename T>
inline void gemm_tn(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                    int64_t ldb, T* C, int64_t ldc) {
  gemm_outer<T>(m, n, k, A, 1, lda, B, ldb, C, ldc);
}

}  // namespace kern
}  // namespace artlib_native
