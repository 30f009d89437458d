// The emulator's versions of the inline-PTX helpers in
// csrc/attention/cuda/attention_tc_ptx.cuh (same names and signatures):
// cp.async goes through the emulator's per-thread copy groups; ldmatrix and
// mma gather the warp's 32 lanes and compute every lane's fragment with the
// layouts of warp_tensor_core.h, which were written from the PTX ISA and
// CuTe's traits, not from the kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "cuda_emulator.h"
#include "warp_tensor_core.h"

namespace pydl {
namespace attention_cuda {
namespace tc {

inline void cp_async_16(void* smem, const void* gmem, bool valid) {
  emulation::require_shared(smem, 16, "cp.async destination");
  if (reinterpret_cast<uintptr_t>(smem) % 16 != 0 ||
      (valid && reinterpret_cast<uintptr_t>(gmem) % 16 != 0)) {
    throw std::runtime_error("cp.async.cg with a 16-byte copy needs 16-byte aligned addresses");
  }
  emulation::cp_async_16(smem, gmem, valid);
}
inline void cp_async_commit() { emulation::cp_async_commit(); }
template <int kPending>
inline void cp_async_wait() {
  emulation::cp_async_wait(kPending);
}

namespace detail {
// Shared memory serves 128 bytes (32 banks x 4 bytes) per wavefront. ldmatrix
// .x4 reads one 8x8 matrix per phase, 8 rows of 16 bytes: one wavefront when
// the 8 distinct rows fall in distinct 16-byte bank groups, more otherwise.
inline void count_bank_wavefronts(const std::array<const void*, 32>& rows) {
  for (int matrix = 0; matrix < 4; ++matrix) {
    int per_group[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int r = 0; r < 8; ++r) {
      const auto addr = reinterpret_cast<uintptr_t>(rows[8 * matrix + r]);
      bool repeated = false;  // the same row twice is one read (broadcast)
      for (int earlier = 0; earlier < r; ++earlier) {
        repeated = repeated || reinterpret_cast<uintptr_t>(rows[8 * matrix + earlier]) == addr;
      }
      if (!repeated) ++per_group[(addr >> 4) & 7];
    }
    emulation::count_smem_wavefronts(1, *std::max_element(per_group, per_group + 8));
  }
}

inline void ldmatrix(uint32_t r[4], const void* smem_row, bool transposed, const char* what) {
  emulation::require_shared(smem_row, 16, what);
  if (reinterpret_cast<uintptr_t>(smem_row) % 16 != 0) {
    throw std::runtime_error(std::string(what) + ": row address not 16-byte aligned");
  }
  const auto rows = emulation::warp_gather<const void*>(smem_row, what);
  if (emulation::lane_id() == 0) count_bank_wavefronts(rows);
  uint32_t out[32][4];
  emulation::ldmatrix_x4(rows.data(), transposed, out);
  for (int i = 0; i < 4; ++i) r[i] = out[emulation::lane_id()][i];
}

struct MmaOperands {
  uint32_t a[4], b[2];
  float c[4];
};
inline void mma(emulation::MmaInput kind, float c[4], const uint32_t a[4], uint32_t b0,
                uint32_t b1) {
  MmaOperands mine{{a[0], a[1], a[2], a[3]}, {b0, b1}, {c[0], c[1], c[2], c[3]}};
  const auto all = emulation::warp_gather(mine, "mma.sync.m16n8k16");
  uint32_t wa[32][4], wb[32][2];
  float wc[32][4];
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 4; ++i) wa[l][i] = all[l].a[i], wc[l][i] = all[l].c[i];
    wb[l][0] = all[l].b[0];
    wb[l][1] = all[l].b[1];
  }
  emulation::mma_m16n8k16(kind, wa, wb, wc);
  if (emulation::lane_id() == 0) emulation::count_mma();
  for (int i = 0; i < 4; ++i) c[i] = wc[emulation::lane_id()][i];
}
}  // namespace detail

inline void ldmatrix_x4(uint32_t r[4], const void* smem_row) {
  detail::ldmatrix(r, smem_row, false, "ldmatrix.x4");
}
inline void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) {
  detail::ldmatrix(r, smem_row, true, "ldmatrix.x4.trans");
}

template <typename T>
void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1);
template <>
inline void mma_16816<__half>(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  detail::mma(emulation::MmaInput::Float16, c, a, b0, b1);
}
template <>
inline void mma_16816<__nv_bfloat16>(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  detail::mma(emulation::MmaInput::BFloat16, c, a, b0, b1);
}

// ex2.approx.ftz.f32: 2^x with results below 2^-126 flushed to 0 (the
// approximation's last-ulp error is not modelled).
inline float exp2_approx(float x) {
  const float y = std::exp2(x);
  return y < 0x1p-126f ? 0.f : y;
}

}  // namespace tc
}  // namespace attention_cuda
}  // namespace pydl
