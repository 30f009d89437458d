// Column-major GEMM from the BLAS that libtorch_cpu links (MKL on x86),
// called directly: ATen's cpublas::gemm is not exported to extensions, and a
// tensor-level at::mm per small tile costs more than the tile's arithmetic.
// Inside at::parallel_for each worker must keep MKL to its own thread
// (SingleThreadedBlas): MKL does not see torch's OpenMP region and would
// otherwise start its own threads per call.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
// MKL only (weak: absent with other BLAS libraries).
// (mkl_service.h maps mkl_set_num_threads_local to this C entry point; the
// lowercase symbol is the Fortran one, which takes a pointer.)
int MKL_Set_Num_Threads_Local(int nthreads) __attribute__((weak));
// MKL's packed GEMM (weak, float32 only in libtorch_cpu's exports): pack a
// right-hand side once, reuse it for many products. MKL's enums and MKL_INT
// (LP64) are ints.
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
}

namespace pydl {

// Whether the BLAS here is MKL running its generic code: MKL dispatches its
// tuned kernels on the processor's vendor and gives others (AMD) generic
// ones. Measured on an AMD EPYC (Zen 4, 2 cores, torch 2.14.1's MKL 2024.2):
// sgemm of an LSTM step (16 x 1024) @ (1024 x 4096) at 76 GFLOP/s, against
// about 175 for pydl's register kernel and for MKL on 256 rows. False
// without MKL (MKL_Set_Num_Threads_Local absent) and off x86.
inline bool mkl_runs_generic_code() {
  static const bool generic = [] {
    if (MKL_Set_Num_Threads_Local == nullptr) return false;
#if defined(__x86_64__) || defined(__i386__)
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
    char vendor[13] = {};
    std::memcpy(vendor, &ebx, 4);
    std::memcpy(vendor + 4, &edx, 4);
    std::memcpy(vendor + 8, &ecx, 4);
    return std::strcmp(vendor, "GenuineIntel") != 0;
#else
    return false;
#endif
  }();
  return generic;
}

// RAII: BLAS calls on this thread run single-threaded until destruction.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_;
};

// C[m x n] = alpha * op(A)[m x k] * B[k x n] + beta * C, column-major;
// op(A) = A^T when trans_a (A stored k x m).
inline void gemm(bool trans_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const char no = 'N', ta = trans_a ? 'T' : 'N';
  const int m_ = static_cast<int>(m), n_ = static_cast<int>(n), k_ = static_cast<int>(k);
  const int lda_ = static_cast<int>(lda), ldb_ = static_cast<int>(ldb), ldc_ = static_cast<int>(ldc);
  sgemm_(&ta, &no, &m_, &n_, &k_, &alpha, a, &lda_, b, &ldb_, &beta, c, &ldc_);
}

inline void gemm(bool trans_a, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                 int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  const char no = 'N', ta = trans_a ? 'T' : 'N';
  const int m_ = static_cast<int>(m), n_ = static_cast<int>(n), k_ = static_cast<int>(k);
  const int lda_ = static_cast<int>(lda), ldb_ = static_cast<int>(ldb), ldc_ = static_cast<int>(ldc);
  dgemm_(&ta, &no, &m_, &n_, &k_, &alpha, a, &lda_, b, &ldb_, &beta, c, &ldc_);
}

// B (k x n, row-major products c = a @ B) packed by MKL once and reused:
// an LSTM multiplies every time step by the same w_hh^T, and plain sgemm
// repacks it on every call (measured at 64 x 2048 x 512, 2 threads: 465 us
// plain, 345 us packed). Float32, where MKL's packed GEMM is exported. The
// pack is made for the most rows a product will have and serves any fewer
// (MKL's pack size does not depend on the row count; the tests check the
// products at several row counts).
class PackedRhs {
 public:
  static bool available() {
    return cblas_sgemm_pack_get_size && cblas_sgemm_pack && cblas_sgemm_compute;
  }

  PackedRhs() = default;

  // Whether a (k x n) view with these strides is B or B^T in row-major form,
  // as the pack routine reads it (a dimension of size 1 may have any stride).
  static bool row_major(int64_t k, int64_t n, int64_t stride_k, int64_t stride_n) {
    return stride_n == 1 && (k == 1 || stride_k >= n);
  }
  static bool can_pack(int64_t k, int64_t n, int64_t stride_k, int64_t stride_n) {
    return row_major(k, n, stride_k, stride_n) ||
           row_major(n, k, stride_n, stride_k);  // B^T row-major
  }

  // b: the (k x n) operand as a strided view that can_pack accepts;
  // max_rows: the most rows any product will have. dest: at least
  // bytes(...) bytes, kept alive by the caller.
  PackedRhs(const float* b, int64_t k, int64_t n, int64_t stride_k, int64_t stride_n,
            int64_t max_rows, void* dest)
      : k_(static_cast<int>(k)), n_(static_cast<int>(n)), packed_(static_cast<float*>(dest)) {
    const bool no_trans = row_major(k, n, stride_k, stride_n);
    const int64_t ld = no_trans ? std::max(stride_k, n) : std::max(stride_n, k);
    cblas_sgemm_pack(kRowMajor, kBMatrix, no_trans ? kNoTrans : kTrans,
                     static_cast<int>(max_rows), n_, k_, 1.0f, b, static_cast<int>(ld), packed_);
  }

  static size_t bytes(int64_t k, int64_t n, int64_t max_rows) {
    return cblas_sgemm_pack_get_size(kBMatrix, static_cast<int>(max_rows), static_cast<int>(n),
                                     static_cast<int>(k));
  }

  bool defined() const { return packed_ != nullptr; }

  // c (rows x n) = a (rows x k, row-major) @ B (+ c when accumulate).
  void multiply(int64_t rows, const float* a, float* c, bool accumulate) const {
    cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, static_cast<int>(rows), n_, k_, a, k_,
                        packed_, n_, accumulate ? 1.0f : 0.0f, c, n_);
  }

 private:
  // CBLAS_LAYOUT / CBLAS_TRANSPOSE / CBLAS_IDENTIFIER / CBLAS_STORAGE values.
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kBMatrix = 162,
                       kPacked = 151;
  int k_ = 0, n_ = 0;
  float* packed_ = nullptr;
};

}  // namespace pydl
