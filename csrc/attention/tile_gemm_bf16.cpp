// The bf16 tile GEMM of the CPU attention kernels (declared in
// attention/cpu/tile_gemm.h): MKL's cblas_gemm_bf16bf16f32, which libtorch
// exports where it links MKL. Weak, so that a torch without MKL still loads
// pydl; Python then leaves CPU bf16 attention to torch.
#include <c10/util/Exception.h>

#include <cstdint>

#include "attention/cpu/tile_gemm.h"

extern "C" {
// CBLAS enums (row-major 101, no-trans 111, trans 112) are passed as ints.
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                            const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                            float* c, int ldc) __attribute__((weak));
}

namespace pydl {
namespace attention_cpu {

bool bf16_gemm_available() { return cblas_gemm_bf16bf16f32 != nullptr; }

void gemm_rm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
             const c10::BFloat16* a, int64_t lda, const c10::BFloat16* b, int64_t ldb, float beta,
             float* c, int64_t ldc) {
  TORCH_CHECK(bf16_gemm_available(), "pydl.attention: this torch has no MKL bf16 GEMM");
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // BLAS would scale C by beta; only beta = 0 and 1 occur here
    if (beta == 0.f) {
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t col = 0; col < n; ++col) c[r * ldc + col] = 0.f;
      }
    }
    return;
  }
  constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
  const auto ld = [](int64_t x) { return static_cast<int>(x < 1 ? 1 : x); };
  cblas_gemm_bf16bf16f32(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans,
                         static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha,
                         reinterpret_cast<const uint16_t*>(a), ld(lda),
                         reinterpret_cast<const uint16_t*>(b), ld(ldb), beta, c, ld(ldc));
}

}  // namespace attention_cpu
}  // namespace pydl
