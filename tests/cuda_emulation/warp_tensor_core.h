// CPU reference for two warp-collective tensor-core instructions, evaluated
// for all 32 lanes of a warp at once. Host-only C++17; no CUDA headers.
//
// Written from the PTX ISA specification (not from any pydl kernel):
//   * "Warp-level matrix load instruction: ldmatrix" (PTX ISA 9.7.14.5.15 /
//     9.7.15.5.15 depending on the ISA version), and
//   * "Matrix Fragments for mma.m16n8k16 with floating point type"
//     (PTX ISA 9.7.14.5.8 / 9.7.15.5.8).
// Cross-checked against CuTe (cute/atom/copy_traits_sm75.hpp:
// Copy_Traits<SM75_U32x4_LDSM_N>, Copy_Traits<SM75_U16x8_LDSM_T>;
// cute/atom/mma_traits_sm80.hpp: MMA_Traits<SM80_16x8x16_F16F16F16F16_TN>,
// which SM80_16x8x16_F32{F16F16,BF16BF16}F32_TN inherit, and SM80_16x8_Row).
//
// Notation used throughout (the spec's):
//   g = groupID           = lane >> 2   (0..7)
//   t = threadID_in_group = lane % 4    (0..3)
// A 32-bit register holding two 16-bit values keeps the lower-indexed element
// ("a0" of "a0, a1") in bits 0..15 and the other in bits 16..31.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pydl {
namespace emulation {

// ---------------------------------------------------------------------------
// 16-bit float helpers (bit patterns <-> float)
// ---------------------------------------------------------------------------

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// IEEE binary16 bit pattern -> float (exact; handles subnormals, inf, NaN).
inline float fp16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) {  // inf / NaN (payload kept, quiet bit set)
    return bits_to_float(sign | 0x7F800000u | (man << 13) | (man ? 0x00400000u : 0u));
  }
  if (exp == 0) {  // +-0 and subnormals: man * 2^-24, exact in float
    const float mag = std::ldexp(static_cast<float>(man), -24);
    return bits_to_float(sign | float_to_bits(mag));
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));  // 127 - 15 = 112
}

// bfloat16 bit pattern -> float (exact: bf16 is the top half of a float).
inline float bf16_bits_to_float(uint16_t h) {
  return bits_to_float(static_cast<uint32_t>(h) << 16);
}

// float -> IEEE binary16, round to nearest, ties to even (overflow -> inf,
// gradual underflow to subnormals, NaN stays NaN).
inline uint16_t float_to_fp16_bits(float f) {
  const uint32_t x = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t exp = (x >> 23) & 0xFFu;
  const uint32_t man = x & 0x7FFFFFu;
  if (exp == 0xFF) {  // inf / NaN
    if (man == 0) return static_cast<uint16_t>(sign | 0x7C00u);
    return static_cast<uint16_t>(sign | 0x7E00u | (man >> 13));
  }
  const int e = static_cast<int>(exp) - 127;  // unbiased
  if (e > 15) return static_cast<uint16_t>(sign | 0x7C00u);
  uint32_t mant;  // 24-bit significand with implicit bit
  int shift;      // right shift that produces the fp16 significand field
  if (e >= -14) {
    mant = man | 0x800000u;
    shift = 13;
  } else {
    if (exp == 0) return sign;             // float zero/subnormal: far below fp16 range
    if (e < -25) return sign;              // below half the smallest subnormal
    mant = man | 0x800000u;
    shift = 13 + (-14 - e);                // subnormal: value = mant * 2^(e-23)
  }
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  if (e >= -14) {
    // q holds 1.mmmmmmmmmm (11 bits); a carry may bump the exponent.
    uint32_t biased = static_cast<uint32_t>(e + 15);
    if (q & 0x800u) {
      q >>= 1;
      ++biased;
    }
    if (biased >= 31) return static_cast<uint16_t>(sign | 0x7C00u);
    return static_cast<uint16_t>(sign | (biased << 10) | (q & 0x3FFu));
  }
  // Subnormal result; q == 0x400 (carry) is exactly the smallest normal.
  return static_cast<uint16_t>(sign | q);
}

// float -> bfloat16, round to nearest, ties to even (NaN stays NaN).
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_to_bits(f);
  if ((x & 0x7F800000u) == 0x7F800000u && (x & 0x7FFFFFu)) {
    return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  }
  const uint32_t rounded = x + 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

inline uint32_t pack_b16x2(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}
inline uint16_t b16_lo(uint32_t r) { return static_cast<uint16_t>(r & 0xFFFFu); }
inline uint16_t b16_hi(uint32_t r) { return static_cast<uint16_t>(r >> 16); }

// ---------------------------------------------------------------------------
// Fragment coordinates (spec formulas; used by the functions below and
// available to emulator code that builds or reads fragments directly).
// ---------------------------------------------------------------------------

struct RowCol {
  int row;
  int col;
};

// ldmatrix .m8n8 .b16: which element of the 8x8 matrix as stored in memory
// (row = which of the 8 row addresses, col = 16-bit element within that row)
// lands in half `half` (0 = bits 0..15, 1 = bits 16..31) of the lane's
// register for that matrix. PTX "ldmatrix" Figure 104 (one group of four
// threads holds one row); .trans = "loaded in column-major format", exact
// mapping confirmed from CuTe Copy_Traits<SM75_U16x8_LDSM_T>::DstLayout.
//   plain : (row, col) = (g,          2t + half)
//   .trans: (row, col) = (2t + half,  g)
inline RowCol ldmatrix_m8n8_b16_coord(int lane, int half, bool transposed) {
  const int g = lane >> 2, t = lane & 3;
  if (!transposed) return {g, 2 * t + half};
  return {2 * t + half, g};
}

// mma.m16n8k16 .f16/.bf16 multiplicand A (16x16, row = m, col = k), element
// a_i with i = 2*reg + half (reg 0..3):
//   row = g      for i in {0,1,4,5},  g + 8 otherwise
//   col = 2t + (i & 1)      for i < 4,  2t + (i & 1) + 8 for i >= 4
// i.e. reg0 (g, 2t+h), reg1 (g+8, 2t+h), reg2 (g, 2t+8+h), reg3 (g+8, 2t+8+h).
inline RowCol mma_m16n8k16_a_coord(int lane, int reg, int half) {
  const int g = lane >> 2, t = lane & 3;
  return {g + 8 * (reg & 1), 2 * t + half + 8 * (reg >> 1)};
}

// Multiplicand B (16x8, row = k, col = n), element b_i with i = 2*reg + half:
//   row = 2t + (i & 1) for i < 2,  2t + (i & 1) + 8 for i >= 2;   col = g
inline RowCol mma_m16n8k16_b_coord(int lane, int reg, int half) {
  const int g = lane >> 2, t = lane & 3;
  return {2 * t + half + 8 * reg, g};
}

// Accumulator C / D (16x8, row = m, col = n), element c_i (i = 0..3):
//   row = g for i < 2, g + 8 for i >= 2;   col = 2t + (i & 1)
inline RowCol mma_m16n8k16_c_coord(int lane, int i) {
  const int g = lane >> 2, t = lane & 3;
  return {g + 8 * (i >> 1), 2 * t + (i & 1)};
}

// ---------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 {r0,r1,r2,r3}, [addr]
// ---------------------------------------------------------------------------
// row_addr[8*i + j] is the address lane 8*i + j supplies: row j of matrix i
// (8 contiguous 16-bit elements = 16 bytes). out[lane][i] is register r_i of
// that lane, filled per ldmatrix_m8n8_b16_coord. Like the hardware, row
// addresses must be 16-byte aligned; a null or misaligned one throws
// std::invalid_argument (the hardware's behaviour there is undefined).
inline void ldmatrix_x4(const void* const row_addr[32], bool transposed, uint32_t out[32][4]) {
  for (int lane = 0; lane < 32; ++lane) {
    const void* p = row_addr[lane];
    if (p == nullptr || (reinterpret_cast<std::uintptr_t>(p) & 15u) != 0) {
      throw std::invalid_argument("ldmatrix_x4: row address of lane " + std::to_string(lane) +
                                  " is null or not 16-byte aligned");
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    for (int m = 0; m < 4; ++m) {
      uint16_t v[2];
      for (int h = 0; h < 2; ++h) {
        const RowCol rc = ldmatrix_m8n8_b16_coord(lane, h, transposed);
        const unsigned char* row = static_cast<const unsigned char*>(row_addr[8 * m + rc.row]);
        std::memcpy(&v[h], row + 2 * rc.col, sizeof(uint16_t));
      }
      out[lane][m] = pack_b16x2(v[0], v[1]);
    }
  }
}

// ---------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 c, a, b, c
// ---------------------------------------------------------------------------
// D(16x8) = A(16x16) * B(16x8) + C, written back into c (d aliases c).
// Fragment layouts: mma_m16n8k16_{a,b,c}_coord above.
//
// Numerics: every fp16/bf16 product is exact in float; each output is summed
// in double (16 products + C) and rounded to float once. The hardware's
// internal accumulation order and intermediate rounding are not specified by
// PTX, so this is a model of the result, not a bit-exact replica: tests on
// non-integer data must compare with a tolerance.
enum class MmaInput { Float16, BFloat16 };

inline float mma_input_to_float(MmaInput kind, uint16_t bits) {
  return kind == MmaInput::Float16 ? fp16_bits_to_float(bits) : bf16_bits_to_float(bits);
}

inline void mma_m16n8k16(MmaInput kind, const uint32_t a[32][4], const uint32_t b[32][2],
                         float c[32][4]) {
  float A[16][16], B[16][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < 4; ++reg) {
      for (int h = 0; h < 2; ++h) {
        const RowCol rc = mma_m16n8k16_a_coord(lane, reg, h);
        A[rc.row][rc.col] = mma_input_to_float(kind, h ? b16_hi(a[lane][reg]) : b16_lo(a[lane][reg]));
      }
    }
    for (int reg = 0; reg < 2; ++reg) {
      for (int h = 0; h < 2; ++h) {
        const RowCol rc = mma_m16n8k16_b_coord(lane, reg, h);
        B[rc.row][rc.col] = mma_input_to_float(kind, h ? b16_hi(b[lane][reg]) : b16_lo(b[lane][reg]));
      }
    }
    for (int i = 0; i < 4; ++i) {
      const RowCol rc = mma_m16n8k16_c_coord(lane, i);
      C[rc.row][rc.col] = c[lane][i];
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const RowCol rc = mma_m16n8k16_c_coord(lane, i);
      double acc = static_cast<double>(C[rc.row][rc.col]);
      for (int k = 0; k < 16; ++k) {
        acc += static_cast<double>(A[rc.row][k] * B[k][rc.col]);  // product exact in float
      }
      c[lane][i] = static_cast<float>(acc);
    }
  }
}

}  // namespace emulation
}  // namespace pydl
