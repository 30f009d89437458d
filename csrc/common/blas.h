// Column-major GEMM from the BLAS that libtorch_cpu links (MKL on x86),
// called directly: ATen's cpublas::gemm is not exported to extensions, and a
// tensor-level at::mm per small tile costs more than the tile's arithmetic.
// Inside at::parallel_for each worker must keep MKL to its own thread
// (SingleThreadedBlas): MKL does not see torch's OpenMP region and would
// otherwise start its own threads per call.
#pragma once

#include <cstdint>

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
}

namespace pydl {

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

}  // namespace pydl
