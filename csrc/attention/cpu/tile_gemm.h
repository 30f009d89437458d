// Row-major tile GEMM on top of common/blas.h's BLAS symbols, with both
// operands transposable: the attention tiles need Q K^T, P V, P^T dO, dO V^T,
// dS^T Q and dS K, and spelling each in column-major terms at the call site
// invites mistakes. Single-threaded BLAS is the caller's job (SingleThreadedBlas).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include <c10/util/BFloat16.h>

#include "common/blas.h"

namespace pydl {
namespace attention_cpu {

// C[m x n] = alpha * op(A) op(B) + beta * C, all row-major; op(A) is m x k,
// op(B) is k x n; lda/ldb/ldc are the row strides of A, B, C as stored.
template <typename T>
inline void gemm_rm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                    const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // BLAS would scale C by beta; only beta = 0 and 1 occur here
    if (beta == T(0)) {
      for (int64_t r = 0; r < m; ++r) std::memset(c + r * ldc, 0, sizeof(T) * n);
    }
    return;
  }
  // A row-major X is the column-major X^T, so C^T = op(B)^T op(A)^T in
  // column-major terms: B goes first, and each transpose flag stays with its operand.
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int m_ = static_cast<int>(n), n_ = static_cast<int>(m), k_ = static_cast<int>(k);
  const int lda_ = static_cast<int>(std::max<int64_t>(ldb, 1));
  const int ldb_ = static_cast<int>(std::max<int64_t>(lda, 1));
  const int ldc_ = static_cast<int>(std::max<int64_t>(ldc, 1));
  if constexpr (sizeof(T) == 4) {
    sgemm_(&ta, &tb, &m_, &n_, &k_, &alpha, b, &lda_, a, &ldb_, &beta, c, &ldc_);
  } else {
    dgemm_(&ta, &tb, &m_, &n_, &k_, &alpha, b, &lda_, a, &ldb_, &beta, c, &ldc_);
  }
}

// bf16 operands, float32 C: MKL's cblas_gemm_bf16bf16f32 (row-major
// directly). Only called when bf16_gemm_available().
void gemm_rm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
             const c10::BFloat16* a, int64_t lda, const c10::BFloat16* b, int64_t ldb, float beta,
             float* c, int64_t ldc);

// Whether the BLAS that libtorch links has a bf16 GEMM (MKL does).
bool bf16_gemm_available();

}  // namespace attention_cpu
}  // namespace pydl
