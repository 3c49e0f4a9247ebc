// Shared helpers for artlib's native CPU kernels (csrc/*.cpp): argument checks, dtype handling and a
// row-major GEMM that calls the BLAS inside libtorch_cpu directly.
//
// Why a direct BLAS call: the region-attention core runs five small GEMMs per frame (e.g. 16 x 196 x
// 256) inside at::parallel_for. at::mm on from_blob slices costs a few microseconds of dispatch and
// TensorImpl construction per call; the Fortran symbols sgemm_/dgemm_ that libtorch_cpu exports (MKL
// on x86 wheels) cost nothing extra. They are declared weak and checked once against at::mm on a
// small problem; when missing or wrong (e.g. an ILP64 BLAS) the micro-kernels of gemm.h run instead.
#pragma once

// Only the headers the kernels use (not <ATen/ATen.h> or <torch/extension.h>, which pull in every
// operator's declaration): the build parses them once per translation unit, one unit per op.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace artlib_native {

// ---- argument checks: errors name the argument, what was expected and what was given -------------

inline void check_cpu_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "artlib native: ", name, " must be a CPU tensor, got ",
                    t.device());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "artlib native: ", name,
                   " must be floating point (float32/float64; float16/bfloat16 run in float32), got ",
                   t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == dim, "artlib native: ", name, " must be ", layout, " (", dim,
                    "-d), got shape ", t.sizes());
}

// float64 stays float64; float32, float16 and bfloat16 are computed in float32.
inline at::ScalarType compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline at::Tensor as_compute(const at::Tensor& t, at::ScalarType ct) {
  return t.to(ct).contiguous();
}

// ---- a cache of large internal buffers ----------------------------------------------------------
//
// A fresh allocation of tens of MB is mmap'd by malloc, and every page of it faults on first touch
// and is zeroed by the kernel: on a 2-core AMD EPYC VM, filling a fresh 50 MB tensor took 52 ms, an
// existing one 7 ms. The residuals that an op keeps for its backward (region attention: A and P,
// 88 MB at N = 384, K = 16) and its backward's scratch are never seen by the caller, are freed when
// the backward ends, and are asked for again with the same sizes by the next step: pooled_empty()
// keeps freed buffers of 1 MB and more (reused for exactly the same byte size, at most
// ARTLIB_NATIVE_POOL_MB MiB in all, default 512, read once; 0 turns the cache off). Only for
// tensors that stay inside artlib: the caller's outputs come from at::empty.
class BufferPool {
 public:
  static BufferPool& get() {
    static BufferPool* pool = new BufferPool();  // never destroyed: deleters may run at exit
    return *pool;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
    int64_t numel = 1;
    for (const int64_t s : sizes) numel *= s;
    const size_t n = static_cast<size_t>(numel) * c10::elementSize(opts.dtype().toScalarType());
    if (limit_ == 0 || n < (size_t{1} << 20)) return at::empty(sizes, opts);  // small: malloc is fine
    void* ptr = take(n);
    if (ptr == nullptr) {
      ptr = std::aligned_alloc(64, (n + 63) / 64 * 64);
      TORCH_CHECK(ptr != nullptr, "artlib native: out of memory allocating ", n, " bytes");
    }
    return at::from_blob(ptr, sizes, [n](void* p) { BufferPool::get().give(p, n); }, opts);
  }

 private:
  BufferPool() {
    const char* env = std::getenv("ARTLIB_NATIVE_POOL_MB");
    limit_ = (env ? std::strtoull(env, nullptr, 10) : 512ull) << 20;
  }
  void* take(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < free_.size(); ++i) {
      if (free_[i].first == n) {
        void* p = free_[i].second;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        cached_ -= n;
        return p;
      }
    }
    return nullptr;
  }
  void give(void* p, size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + n <= limit_) {
        free_.emplace_back(n, p);
        cached_ += n;
        return;
      }
    }
    std::free(p);
  }

  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> free_;
  size_t cached_ = 0, limit_ = 0;
};

inline at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return BufferPool::get().empty(sizes, opts);
}

// ---- BLAS ----------------------------------------------------------------------------------------

// Declared weak: when libtorch_cpu does not export them the pointers are null and the kernels use
// the micro-kernels of gemm.h instead. Only on ELF platforms (Linux); elsewhere no BLAS is used.
#if defined(__GNUC__) && defined(__ELF__)
#define ARTLIB_BLAS_SYMBOLS 1
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}
#else
#define ARTLIB_BLAS_SYMBOLS 0
#endif

template <typename T>
using blas_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const T*,
                         const T*, const int*, const T*, const int*, const T*, T*, const int*);

template <typename T>
struct Blas;
template <>
struct Blas<float> {
  static blas_fn<float> fn() {
#if ARTLIB_BLAS_SYMBOLS
    return &sgemm_;
#else
    return nullptr;
#endif
  }
};
template <>
struct Blas<double> {
  static blas_fn<double> fn() {
#if ARTLIB_BLAS_SYMBOLS
    return &dgemm_;
#else
    return nullptr;
#endif
  }
};

// at::mm on views of raw row-major buffers; the fallback when the BLAS symbols are missing or wrong.
template <typename T>
void gemm_aten(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const at::TensorOptions opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor A = ta ? at::from_blob(const_cast<T*>(a), {m, k}, {1, lda}, opts)
              : at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts);
  const at::Tensor B = tb ? at::from_blob(const_cast<T*>(b), {k, n}, {1, ldb}, opts)
              : at::from_blob(const_cast<T*>(b), {k, n}, {ldb, 1}, opts);
  at::Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (beta == T(0)) {
    if (k == 0) {
      C.zero_();
    } else {
      at::mm_out(C, A, B);
      if (alpha != T(1)) C.mul_(alpha);
    }
  } else {
    C.addmm_(A, B, beta, alpha);
  }
}

template <typename T>
void gemm_blas(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(lda), ildb = static_cast<int>(ldb), ildc = static_cast<int>(ldc);
  Blas<T>::fn()(&ctb, &cta, &in, &im, &ik, &alpha, b, &ildb, a, &ilda, &beta, c, &ildc);
}

// Checks the BLAS symbol once against at::mm on a small odd-shaped product (all four transpose
// combinations, leading dimensions larger than the rows); true when it is present and agrees.
template <typename T>
bool blas_ok_check() {
  if (Blas<T>::fn() == nullptr) return false;
  const int64_t m = 5, n = 7, k = 3, ld = 9;
  const at::TensorOptions opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor gen = at::arange(0, 2 * ld * ld, opts).sin();
  const T* a = gen.data_ptr<T>();
  const T* b = a + ld * ld;
  for (int t = 0; t < 4; ++t) {
    bool ta = t & 1, tb = t & 2;
    at::Tensor c1 = at::zeros({m, ld}, opts), c2 = at::zeros({m, ld}, opts);
    gemm_blas<T>(ta, tb, m, n, k, T(1), a, ld, b, ld, T(0), c1.data_ptr<T>(), ld);
    gemm_aten<T>(ta, tb, m, n, k, T(1), a, ld, b, ld, T(0), c2.data_ptr<T>(), ld);
    if (!at::allclose(c1, c2, 1e-4, 1e-5)) return false;
  }
  return true;
}

template <typename T>
bool blas_ok() {
  // Decided once, on the first call (outside any parallel region: the kernels call it before
  // at::parallel_for).
  static const bool ok = blas_ok_check<T>();
  return ok;
}

// C (m x n, row stride ldc) = alpha * op(A) op(B) + beta * C, all row-major; op(A) is m x k.
template <typename T>
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                 int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, bool use_blas) {
  if (m == 0 || n == 0) return;
  if (use_blas && k > 0) {
    gemm_blas<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    gemm_aten<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

}  // namespace artlib_native
