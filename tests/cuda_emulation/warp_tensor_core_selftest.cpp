// Self-test for warp_tensor_core.h. Standalone program (tests/
// test_cuda_emulation.py builds and runs it):
//
//   g++ -std=c++17 -O1 [-I/usr/local/cuda/include]
//       tests/cuda_emulation/warp_tensor_core_selftest.cpp -o /tmp/wtc_selftest
//   /tmp/wtc_selftest
//
// Prints PASS/FAIL per check and exits nonzero on any failure. With
// -I/usr/local/cuda/include the fp16/bf16 helpers are also compared with
// CUDA's own host conversions (<cuda_fp16.h>, <cuda_bf16.h>).

#include "warp_tensor_core.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#if __has_include(<cuda_fp16.h>) && __has_include(<cuda_bf16.h>)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define WTC_HAVE_CUDA_HALF 1
#else
#define WTC_HAVE_CUDA_HALF 0
#endif

namespace emu = pydl::emulation;
using emu::MmaInput;

namespace {

int g_failures = 0;
int g_checks = 0;

void report(const std::string& name, bool ok, const std::string& detail = "") {
  ++g_checks;
  if (!ok) ++g_failures;
  std::printf("%s  %s%s%s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.empty() ? "" : "  -- ",
              detail.c_str());
}

// ---------------------------------------------------------------------------
// Independent fragment tables, written in the PTX spec's own element-index
// form (PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type").
// Element i of a fragment lives in register i / 2, half i % 2 (the spec lists
// elements "low to high", two .f16/.bf16 per .f16x2 register).
// ---------------------------------------------------------------------------
struct RC {
  int row, col;
};

RC spec_a(int laneid, int i) {  // multiplicand A, 16x16, (m, k)
  const int groupID = laneid >> 2;
  const int threadID_in_group = laneid % 4;
  RC rc;
  if ((0 <= i && i < 2) || (4 <= i && i < 6))
    rc.row = groupID;
  else
    rc.row = groupID + 8;
  if (i < 4)
    rc.col = (threadID_in_group * 2) + (i & 0x1);
  else
    rc.col = (threadID_in_group * 2) + (i & 0x1) + 8;
  return rc;
}

RC spec_b(int laneid, int i) {  // multiplicand B, 16x8, (k, n)
  const int groupID = laneid >> 2;
  const int threadID_in_group = laneid % 4;
  RC rc;
  if (i < 2)
    rc.row = (threadID_in_group * 2) + (i & 0x1);
  else
    rc.row = (threadID_in_group * 2) + (i & 0x1) + 8;
  rc.col = groupID;
  return rc;
}

RC spec_c(int laneid, int i) {  // accumulator C/D, 16x8, (m, n)
  const int groupID = laneid >> 2;
  const int threadID_in_group = laneid % 4;
  RC rc;
  rc.row = (i < 2) ? groupID : groupID + 8;
  rc.col = (threadID_in_group * 2) + (i & 0x1);
  return rc;
}

// The same layouts as CuTe states them (cute/atom/mma_traits_sm80.hpp,
// MMA_Traits<SM80_16x8x16_F16F16F16F16_TN>): (thread, value) -> column-major
// index into the (M,K), (N,K) or (M,N) tile, transcribed from Shape/Stride.
//   ALayout: Shape<<4,8>,<2,2,2>>, Stride<<32,1>,<16,8,128>>   (M=16)
//   BLayout: Shape<<4,8>,<2,2>>,   Stride<<16,1>,<8,64>>        (N=8)
//   CLayout: SM80_16x8_Row = Shape<<4,8>,<2,2>>, Stride<<32,1>,<16,8>> (M=16)
RC cute_a(int lane, int v) {
  const int idx = 32 * (lane % 4) + 1 * (lane / 4) + 16 * (v % 2) + 8 * ((v / 2) % 2) + 128 * (v / 4);
  return {idx % 16, idx / 16};
}
RC cute_b(int lane, int v) {  // returns (k, n)
  const int idx = 16 * (lane % 4) + 1 * (lane / 4) + 8 * (v % 2) + 64 * (v / 2);
  return {idx / 8, idx % 8};
}
RC cute_c(int lane, int v) {
  const int idx = 32 * (lane % 4) + 1 * (lane / 4) + 16 * (v % 2) + 8 * (v / 2);
  return {idx % 16, idx / 16};
}

uint16_t enc(MmaInput kind, float f) {
  return kind == MmaInput::Float16 ? emu::float_to_fp16_bits(f) : emu::float_to_bf16_bits(f);
}
float dec(MmaInput kind, uint16_t h) { return emu::mma_input_to_float(kind, h); }
const char* kind_name(MmaInput kind) { return kind == MmaInput::Float16 ? "fp16" : "bf16"; }

std::string sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

uint16_t half_of(uint32_t reg, int h) { return h ? emu::b16_hi(reg) : emu::b16_lo(reg); }

// Builds fragments straight from the spec tables (no ldmatrix involved).
void frag_a_from_spec(MmaInput kind, const float A[16][16], uint32_t a[32][4]) {
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 4; ++r) {
      const RC lo = spec_a(lane, 2 * r), hi = spec_a(lane, 2 * r + 1);
      a[lane][r] = emu::pack_b16x2(enc(kind, A[lo.row][lo.col]), enc(kind, A[hi.row][hi.col]));
    }
}
void frag_b_from_spec(MmaInput kind, const float B[16][8], uint32_t b[32][2]) {
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 2; ++r) {
      const RC lo = spec_b(lane, 2 * r), hi = spec_b(lane, 2 * r + 1);
      b[lane][r] = emu::pack_b16x2(enc(kind, B[lo.row][lo.col]), enc(kind, B[hi.row][hi.col]));
    }
}
void frag_c_from_spec(const float C[16][8], float c[32][4]) {
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const RC rc = spec_c(lane, i);
      c[lane][i] = C[rc.row][rc.col];
    }
}

// ---------------------------------------------------------------------------
// 1. Fragment tables: header == spec == CuTe == literal figure entries, and
//    every table covers its matrix exactly once.
// ---------------------------------------------------------------------------
void test_tables() {
  bool ok = true;
  std::string why;
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      const RC s = spec_a(lane, i), c = cute_a(lane, i);
      const emu::RowCol h = emu::mma_m16n8k16_a_coord(lane, i / 2, i % 2);
      if (s.row != c.row || s.col != c.col || s.row != h.row || s.col != h.col) {
        ok = false;
        why = "A lane " + std::to_string(lane) + " a" + std::to_string(i);
      }
    }
    for (int i = 0; i < 4; ++i) {
      const RC s = spec_b(lane, i), c = cute_b(lane, i);
      const emu::RowCol h = emu::mma_m16n8k16_b_coord(lane, i / 2, i % 2);
      if (s.row != c.row || s.col != c.col || s.row != h.row || s.col != h.col) {
        ok = false;
        why = "B lane " + std::to_string(lane) + " b" + std::to_string(i);
      }
      const RC sc = spec_c(lane, i), cc = cute_c(lane, i);
      const emu::RowCol hc = emu::mma_m16n8k16_c_coord(lane, i);
      if (sc.row != cc.row || sc.col != cc.col || sc.row != hc.row || sc.col != hc.col) {
        ok = false;
        why = "C lane " + std::to_string(lane) + " c" + std::to_string(i);
      }
    }
  }
  report("fragment tables: header == PTX spec formulas == CuTe SM80_16x8x16 layouts", ok, why);

  // Literal entries read off the spec figures (lane 0 and lane 31 = g7,t3).
  struct Lit {
    char m;
    int lane, i, row, col;
  };
  const Lit lits[] = {
      {'A', 0, 0, 0, 0},   {'A', 0, 1, 0, 1},   {'A', 0, 2, 8, 0},   {'A', 0, 3, 8, 1},
      {'A', 0, 4, 0, 8},   {'A', 0, 5, 0, 9},   {'A', 0, 6, 8, 8},   {'A', 0, 7, 8, 9},
      {'A', 31, 0, 7, 6},  {'A', 31, 3, 15, 7}, {'A', 31, 4, 7, 14}, {'A', 31, 7, 15, 15},
      {'A', 6, 2, 9, 4},   {'B', 0, 0, 0, 0},   {'B', 0, 1, 1, 0},   {'B', 0, 2, 8, 0},
      {'B', 0, 3, 9, 0},   {'B', 31, 0, 6, 7},  {'B', 31, 3, 15, 7}, {'B', 6, 1, 5, 1},
      {'C', 0, 0, 0, 0},   {'C', 0, 1, 0, 1},   {'C', 0, 2, 8, 0},   {'C', 0, 3, 8, 1},
      {'C', 31, 0, 7, 6},  {'C', 31, 3, 15, 7}, {'C', 6, 2, 9, 4},
  };
  ok = true;
  why.clear();
  for (const Lit& l : lits) {
    emu::RowCol h{};
    if (l.m == 'A') h = emu::mma_m16n8k16_a_coord(l.lane, l.i / 2, l.i % 2);
    if (l.m == 'B') h = emu::mma_m16n8k16_b_coord(l.lane, l.i / 2, l.i % 2);
    if (l.m == 'C') h = emu::mma_m16n8k16_c_coord(l.lane, l.i);
    if (h.row != l.row || h.col != l.col) {
      ok = false;
      why = std::string(1, l.m) + " lane " + std::to_string(l.lane) + " i=" + std::to_string(l.i);
    }
  }
  report("fragment tables: literal entries from the spec figures", ok, why);

  int countA[16][16] = {}, countB[16][8] = {}, countC[16][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) ++countA[spec_a(lane, i).row][spec_a(lane, i).col];
    for (int i = 0; i < 4; ++i) ++countB[spec_b(lane, i).row][spec_b(lane, i).col];
    for (int i = 0; i < 4; ++i) ++countC[spec_c(lane, i).row][spec_c(lane, i).col];
  }
  ok = true;
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) ok = ok && countA[r][c] == 1;
    for (int c = 0; c < 8; ++c) ok = ok && countB[r][c] == 1 && countC[r][c] == 1;
  }
  report("fragment tables: A, B, C each cover their tile exactly once", ok);
}

// ---------------------------------------------------------------------------
// 2. ldmatrix on its own.
// ---------------------------------------------------------------------------
void test_ldmatrix() {
  // A 64-row x 40-element buffer of distinct 16-bit patterns; row stride is 80
  // bytes (16-byte multiple), so every 8-element row start at a multiple of 8
  // elements is 16-byte aligned.
  constexpr int R = 64, W = 40;
  alignas(16) static uint16_t buf[R][W];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < W; ++c) buf[r][c] = static_cast<uint16_t>(r * 256 + c + 1);

  // Scrambled row addresses: lane l (matrix l/8, row l%8) points at a
  // pseudo-random row and 8-column block of buf.
  std::mt19937 rng(1234);
  int src_row[32], src_col[32];
  const void* addr[32];
  for (int l = 0; l < 32; ++l) {
    src_row[l] = static_cast<int>(rng() % R);
    src_col[l] = 8 * static_cast<int>(rng() % (W / 8));
    addr[l] = &buf[src_row[l]][src_col[l]];
  }

  // Plain: PTX Figure 104 -- thread 4*r + j of the warp holds row r, elements
  // 2j and 2j+1 (low half = lower index); register i <-> matrix i.
  uint32_t out[32][4];
  emu::ldmatrix_x4(addr, false, out);
  bool ok = true;
  for (int lane = 0; lane < 32; ++lane)
    for (int m = 0; m < 4; ++m) {
      const int row_lane = 8 * m + lane / 4;  // lane whose address holds that row
      const uint16_t lo = buf[src_row[row_lane]][src_col[row_lane] + 2 * (lane % 4)];
      const uint16_t hi = buf[src_row[row_lane]][src_col[row_lane] + 2 * (lane % 4) + 1];
      ok = ok && out[lane][m] == emu::pack_b16x2(lo, hi);
    }
  report("ldmatrix x4 plain: scrambled row addresses, Figure 104 ownership", ok);

  // .trans means "loaded in column-major format": the registers must equal a
  // plain load of each 8x8 matrix transposed in memory.
  alignas(16) static uint16_t tbuf[4][8][8];
  for (int m = 0; m < 4; ++m)
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) tbuf[m][c][r] = buf[src_row[8 * m + r]][src_col[8 * m + r] + c];
  const void* taddr[32];
  for (int l = 0; l < 32; ++l) taddr[l] = &tbuf[l / 8][l % 8][0];
  uint32_t out_t[32][4], out_ref[32][4];
  emu::ldmatrix_x4(addr, true, out_t);
  emu::ldmatrix_x4(taddr, false, out_ref);
  ok = std::memcmp(out_t, out_ref, sizeof out_t) == 0;
  report("ldmatrix x4 .trans == plain load of the transposed matrices", ok);

  // .trans, literal: lane 4g+t gets (row 2t, col g) low, (row 2t+1, col g) high.
  ok = true;
  for (int lane = 0; lane < 32; ++lane)
    for (int m = 0; m < 4; ++m) {
      const int g = lane / 4, t = lane % 4;
      const uint16_t lo = buf[src_row[8 * m + 2 * t]][src_col[8 * m + 2 * t] + g];
      const uint16_t hi = buf[src_row[8 * m + 2 * t + 1]][src_col[8 * m + 2 * t + 1] + g];
      ok = ok && out_t[lane][m] == emu::pack_b16x2(lo, hi);
    }
  report("ldmatrix x4 .trans: lane 4g+t holds M[2t][g] (lo), M[2t+1][g] (hi)", ok);

  // Misaligned address is rejected (hardware: undefined behaviour).
  const void* bad[32];
  for (int l = 0; l < 32; ++l) bad[l] = addr[l];
  bad[13] = &buf[3][1];  // 2-byte aligned only
  bool threw = false;
  try {
    emu::ldmatrix_x4(bad, false, out);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  report("ldmatrix x4 rejects a row address that is not 16-byte aligned", threw);
}

// ---------------------------------------------------------------------------
// 3. Kernel-style pipeline: smem tiles -> ldmatrix -> mma, vs a triple loop.
// ---------------------------------------------------------------------------
// Shared-memory-like tiles (padded strides, like a real kernel would use).
struct Tiles {
  static constexpr int LDA = 40;  // A: 16 x 32 (m x k) row-major, 80-byte rows
  static constexpr int LDB = 24;  // B: 32 x 16 (k x n) row-major
  static constexpr int LDT = 40;  // Bt: 16 x 32 (n x k) row-major == B "col"
  alignas(16) uint16_t A[16][LDA];
  alignas(16) uint16_t B[32][LDB];
  alignas(16) uint16_t Bt[16][LDT];
};

// A fragment for k-block kb (16 columns): lanes 0-15 -> rows 0-15 at column
// 16*kb, lanes 16-31 -> rows 0-15 at column 16*kb + 8. Matrices 0..3 are the
// (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
// sub-blocks.
void load_a(const Tiles& s, int kb, uint32_t a[32][4]) {
  const void* addr[32];
  for (int l = 0; l < 32; ++l) addr[l] = &s.A[l % 16][16 * kb + 8 * (l / 16)];
  emu::ldmatrix_x4(addr, false, a);
}
// B from row-major (k x n) with .trans: lane l -> k row 16*kb + (l%8) + 8*((l/8)%2),
// n column 8*(l/16). r0,r1 = B fragment of n-tile 0; r2,r3 = n-tile 1.
void load_b_trans(const Tiles& s, int kb, uint32_t r[32][4]) {
  const void* addr[32];
  for (int l = 0; l < 32; ++l) addr[l] = &s.B[16 * kb + (l % 8) + 8 * ((l / 8) % 2)][8 * (l / 16)];
  emu::ldmatrix_x4(addr, true, r);
}
// B from n-major storage Bt[n][k] with plain ldmatrix: lane l -> n row
// (l%8) + 8*(l/16), k column 16*kb + 8*((l/8)%2).
void load_b_col(const Tiles& s, int kb, uint32_t r[32][4]) {
  const void* addr[32];
  for (int l = 0; l < 32; ++l) addr[l] = &s.Bt[(l % 8) + 8 * (l / 16)][16 * kb + 8 * ((l / 8) % 2)];
  emu::ldmatrix_x4(addr, false, r);
}

void fill_tiles(MmaInput kind, const float A[16][32], const float B[32][16], Tiles& s) {
  std::memset(&s, 0xFF, sizeof s);  // padding = NaN patterns; must never be read
  for (int m = 0; m < 16; ++m)
    for (int k = 0; k < 32; ++k) s.A[m][k] = enc(kind, A[m][k]);
  for (int k = 0; k < 32; ++k)
    for (int n = 0; n < 16; ++n) {
      s.B[k][n] = enc(kind, B[k][n]);
      s.Bt[n][k] = enc(kind, B[k][n]);
    }
}

// D(16x16) = A(16x32) * B(32x16) + C through 2 k-blocks x 2 n-tiles of mma.
// Returns the max abs difference to a double triple loop.
double run_pipeline(MmaInput kind, const float A[16][32], const float B[32][16], const float C[16][16],
                    bool b_from_col, int ksteps, float D[16][16]) {
  static Tiles s;
  fill_tiles(kind, A, B, s);
  float acc[2][32][4];
  for (int nt = 0; nt < 2; ++nt)
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) {
        const RC rc = spec_c(lane, i);
        acc[nt][lane][i] = C[rc.row][8 * nt + rc.col];
      }
  for (int kb = 0; kb < ksteps; ++kb) {
    uint32_t a[32][4], r[32][4];
    load_a(s, kb, a);
    if (b_from_col)
      load_b_col(s, kb, r);
    else
      load_b_trans(s, kb, r);
    for (int nt = 0; nt < 2; ++nt) {
      uint32_t b[32][2];
      for (int lane = 0; lane < 32; ++lane) {
        b[lane][0] = r[lane][2 * nt];
        b[lane][1] = r[lane][2 * nt + 1];
      }
      emu::mma_m16n8k16(kind, a, b, acc[nt]);
    }
  }
  double maxdiff = 0;
  for (int nt = 0; nt < 2; ++nt)
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) {
        const RC rc = spec_c(lane, i);
        D[rc.row][8 * nt + rc.col] = acc[nt][lane][i];
      }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      double ref = C[m][n];
      for (int k = 0; k < 16 * ksteps; ++k) ref += static_cast<double>(A[m][k]) * B[k][n];
      maxdiff = std::fmax(maxdiff, std::fabs(ref - D[m][n]));
    }
  return maxdiff;
}

void test_pipeline() {
  std::mt19937 rng(42);
  for (MmaInput kind : {MmaInput::Float16, MmaInput::BFloat16}) {
    for (int ksteps : {1, 2}) {
      for (bool b_col : {false, true}) {
        static float A[16][32], B[32][16], C[16][16], D[16][16];
        for (auto& row : A)
          for (float& v : row) v = static_cast<float>(static_cast<int>(rng() % 9) - 4);
        for (auto& row : B)
          for (float& v : row) v = static_cast<float>(static_cast<int>(rng() % 9) - 4);
        for (auto& row : C)
          for (float& v : row) v = static_cast<float>(static_cast<int>(rng() % 101) - 50);
        const double diff = run_pipeline(kind, A, B, C, b_col, ksteps, D);
        char name[200];
        std::snprintf(name, sizeof name,
                      "pipeline %s: ldmatrix A + ldmatrix B (%s) -> mma, K=%d, nonzero C, exact",
                      kind_name(kind), b_col ? "n-major, plain" : "k x n row-major, .trans", 16 * ksteps);
        report(name, diff == 0.0, "max |diff| = " + sci(diff));
      }
    }
  }

  // Both B paths give bit-identical registers.
  static float A[16][32], B[32][16];
  for (auto& row : A)
    for (float& v : row) v = static_cast<float>(static_cast<int>(rng() % 9) - 4);
  for (auto& row : B)
    for (float& v : row) v = static_cast<float>(static_cast<int>(rng() % 9) - 4);
  static Tiles s;
  fill_tiles(MmaInput::Float16, A, B, s);
  bool ok = true;
  for (int kb = 0; kb < 2; ++kb) {
    uint32_t r1[32][4], r2[32][4];
    load_b_trans(s, kb, r1);
    load_b_col(s, kb, r2);
    ok = ok && std::memcmp(r1, r2, sizeof r1) == 0;
  }
  report("B via .trans from k x n row-major == B via plain from n-major", ok);
}

// ---------------------------------------------------------------------------
// 4. Fragment ownership with distinct values, through the kernel-style loads.
// ---------------------------------------------------------------------------
void test_ownership() {
  for (MmaInput kind : {MmaInput::Float16, MmaInput::BFloat16}) {
    // Distinct values 0..255 (exact in fp16 and bf16): A = 16*m + k, B = 16*k + n.
    static float A[16][32], B[32][16];
    for (int m = 0; m < 16; ++m)
      for (int k = 0; k < 32; ++k) A[m][k] = (k < 16) ? float(16 * m + k) : 0.f;
    for (int k = 0; k < 32; ++k)
      for (int n = 0; n < 16; ++n) B[k][n] = (k < 16) ? float(16 * k + n) : 0.f;
    static Tiles s;
    fill_tiles(kind, A, B, s);
    uint32_t a[32][4], rt[32][4], rc[32][4];
    load_a(s, 0, a);
    load_b_trans(s, 0, rt);
    load_b_col(s, 0, rc);
    bool okA = true, okB = true;
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < 8; ++i) {
        const int v = static_cast<int>(dec(kind, half_of(a[lane][i / 2], i % 2)));
        const RC e = spec_a(lane, i);
        okA = okA && v / 16 == e.row && v % 16 == e.col;
      }
      for (int nt = 0; nt < 2; ++nt)
        for (int i = 0; i < 4; ++i) {
          const RC e = spec_b(lane, i);
          for (auto* r : {rt, rc}) {
            const int v = static_cast<int>(dec(kind, half_of(r[lane][2 * nt + i / 2], i % 2)));
            okB = okB && v / 16 == e.row && v % 16 == 8 * nt + e.col;
          }
        }
    }
    report(std::string("ownership ") + kind_name(kind) + ": ldmatrix'd A registers hold spec (row, col)", okA);
    report(std::string("ownership ") + kind_name(kind) +
               ": ldmatrix'd B registers (.trans and n-major) hold spec (k, n)",
           okB);

    // D ownership: A[m][0] = m, A[m][1] = 1, B[0][n] = 16, B[1][n] = n, rest 0,
    // so D[m][n] = 16*m + n; fragments built from the spec table, C = 0.
    float A16[16][16] = {}, B16[16][8] = {}, C0[16][8] = {};
    for (int m = 0; m < 16; ++m) A16[m][0] = float(m), A16[m][1] = 1.f;
    for (int n = 0; n < 8; ++n) B16[0][n] = 16.f, B16[1][n] = float(n);
    uint32_t fa[32][4], fb[32][2];
    float fc[32][4];
    frag_a_from_spec(kind, A16, fa);
    frag_b_from_spec(kind, B16, fb);
    frag_c_from_spec(C0, fc);
    emu::mma_m16n8k16(kind, fa, fb, fc);
    bool okD = true;
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) {
        const RC e = spec_c(lane, i);
        okD = okD && fc[lane][i] == float(16 * e.row + e.col);
      }
    report(std::string("ownership ") + kind_name(kind) + ": D register i of each lane holds spec (row, col)", okD);

    // C ownership / accumulation: C[m][n] = 1000 + 16*m + n placed per spec,
    // A = B = 0 except the product above -> D = C + 16*m + n.
    float Cd[16][8];
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) Cd[m][n] = float(1000 + 16 * m + n);
    frag_c_from_spec(Cd, fc);
    emu::mma_m16n8k16(kind, fa, fb, fc);
    bool okC = true;
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) {
        const RC e = spec_c(lane, i);
        okC = okC && fc[lane][i] == float(1000 + 32 * e.row + 2 * e.col);
      }
    report(std::string("ownership ") + kind_name(kind) + ": nonzero C accumulates in place (D = AB + C)", okC);

    // One-hot sweeps: mma reads A element (m0,k0) and B element (k0,n0) from
    // exactly the spec positions.
    bool okHotA = true, okHotB = true;
    for (int m0 = 0; m0 < 16; ++m0)
      for (int k0 = 0; k0 < 16; ++k0) {
        float Ah[16][16] = {}, Bv[16][8];
        Ah[m0][k0] = 1.f;
        for (int k = 0; k < 16; ++k)
          for (int n = 0; n < 8; ++n) Bv[k][n] = float(8 * k + n + 1);
        frag_a_from_spec(kind, Ah, fa);
        frag_b_from_spec(kind, Bv, fb);
        frag_c_from_spec(C0, fc);
        emu::mma_m16n8k16(kind, fa, fb, fc);
        for (int lane = 0; lane < 32; ++lane)
          for (int i = 0; i < 4; ++i) {
            const RC e = spec_c(lane, i);
            okHotA = okHotA && fc[lane][i] == (e.row == m0 ? Bv[k0][e.col] : 0.f);
          }
      }
    for (int k0 = 0; k0 < 16; ++k0)
      for (int n0 = 0; n0 < 8; ++n0) {
        float Av[16][16], Bh[16][8] = {};
        Bh[k0][n0] = 1.f;
        for (int m = 0; m < 16; ++m)
          for (int k = 0; k < 16; ++k) Av[m][k] = float(16 * m + k);
        frag_a_from_spec(kind, Av, fa);
        frag_b_from_spec(kind, Bh, fb);
        frag_c_from_spec(C0, fc);
        emu::mma_m16n8k16(kind, fa, fb, fc);
        for (int lane = 0; lane < 32; ++lane)
          for (int i = 0; i < 4; ++i) {
            const RC e = spec_c(lane, i);
            okHotB = okHotB && fc[lane][i] == (e.col == n0 ? Av[e.row][k0] : 0.f);
          }
      }
    report(std::string("ownership ") + kind_name(kind) + ": one-hot A sweep (256 positions)", okHotA);
    report(std::string("ownership ") + kind_name(kind) + ": one-hot B sweep (128 positions)", okHotB);
  }
}

// ---------------------------------------------------------------------------
// 5. Non-integer data, with a tolerance (hardware order/rounding unspecified).
// ---------------------------------------------------------------------------
void test_random_tolerance() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (MmaInput kind : {MmaInput::Float16, MmaInput::BFloat16}) {
    double worst = 0;
    for (int trial = 0; trial < 200; ++trial) {
      float A[16][16], B[16][8], C[16][8];
      for (auto& r : A)
        for (float& v : r) v = dec(kind, enc(kind, nd(rng)));
      for (auto& r : B)
        for (float& v : r) v = dec(kind, enc(kind, nd(rng)));
      for (auto& r : C)
        for (float& v : r) v = nd(rng);
      uint32_t fa[32][4], fb[32][2];
      float fc[32][4];
      frag_a_from_spec(kind, A, fa);
      frag_b_from_spec(kind, B, fb);
      frag_c_from_spec(C, fc);
      emu::mma_m16n8k16(kind, fa, fb, fc);
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
          const RC e = spec_c(lane, i);
          float ref = C[e.row][e.col];  // plain float accumulation, k order
          double mag = std::fabs(C[e.row][e.col]);
          for (int k = 0; k < 16; ++k) {
            ref += A[e.row][k] * B[k][e.col];
            mag += std::fabs(double(A[e.row][k]) * B[k][e.col]);
          }
          worst = std::fmax(worst, std::fabs(double(fc[lane][i]) - ref) / (mag + 1e-30));
        }
    }
    report(std::string("random ") + kind_name(kind) + " mma vs float-accumulated loop, rel err <= 1e-6",
           worst <= 1e-6, "worst rel err = " + sci(worst));
  }
}

// ---------------------------------------------------------------------------
// 6. fp16 / bf16 helpers.
// ---------------------------------------------------------------------------
void test_conversions() {
  bool ok16 = true, okbf = true;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f16 = emu::fp16_bits_to_float(static_cast<uint16_t>(h));
    const float fbf = emu::bf16_bits_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f16))
      ok16 = ok16 && std::isnan(emu::fp16_bits_to_float(emu::float_to_fp16_bits(f16)));
    else
      ok16 = ok16 && emu::float_to_fp16_bits(f16) == h;
    if (std::isnan(fbf))
      okbf = okbf && std::isnan(emu::bf16_bits_to_float(emu::float_to_bf16_bits(fbf)));
    else
      okbf = okbf && emu::float_to_bf16_bits(fbf) == h;
  }
  report("fp16: all 65536 patterns decode -> encode round-trip", ok16);
  report("bf16: all 65536 patterns decode -> encode round-trip", okbf);

  struct Case {
    float in;
    uint16_t fp16;
  };
  const Case cases16[] = {
      {1.0f, 0x3C00},          {-2.0f, 0xC000},          {65504.f, 0x7BFF},       {65519.f, 0x7BFF},
      {65520.f, 0x7C00},       {2049.f, 0x6800},         {2051.f, 0x6802},        {2050.f, 0x6801},
      {0x1p-24f, 0x0001},      {0x1p-25f, 0x0000},       {0x1.8p-25f, 0x0001},    {0x1.8p-24f, 0x0002},
      {0x1p-14f, 0x0400},      {0x1.ffcp-15f, 0x0400},   {-0.0f, 0x8000},         {1e-30f, 0x0000},
  };
  bool ok = true;
  std::string why;
  for (const Case& c : cases16)
    if (emu::float_to_fp16_bits(c.in) != c.fp16) {
      ok = false;
      why = "input " + std::to_string(c.in);
    }
  report("fp16 encode: round-to-nearest-even, subnormals, overflow", ok, why);
  ok = emu::float_to_bf16_bits(257.f) == 0x4380 && emu::float_to_bf16_bits(259.f) == 0x4382 &&
       emu::float_to_bf16_bits(1.0f) == 0x3F80 && emu::float_to_bf16_bits(-3.0f) == 0xC040 &&
       emu::float_to_bf16_bits(0x1.01p0f) == 0x3F80 && emu::float_to_bf16_bits(0x1.03p0f) == 0x3F82;
  report("bf16 encode: round-to-nearest-even", ok);

#if WTC_HAVE_CUDA_HALF
  std::mt19937 rng(99);
  bool okc = true;
  for (uint32_t h = 0; h < 65536 && okc; ++h) {
    __half_raw hr;
    hr.x = static_cast<unsigned short>(h);
    __nv_bfloat16_raw br;
    br.x = static_cast<unsigned short>(h);
    const float a = __half2float(__half(hr)), b = emu::fp16_bits_to_float(static_cast<uint16_t>(h));
    const float c = __bfloat162float(__nv_bfloat16(br)), d = emu::bf16_bits_to_float(static_cast<uint16_t>(h));
    okc = okc && ((std::isnan(a) && std::isnan(b)) || emu::float_to_bits(a) == emu::float_to_bits(b));
    okc = okc && ((std::isnan(c) && std::isnan(d)) || emu::float_to_bits(c) == emu::float_to_bits(d));
  }
  for (int i = 0; i < 2000000 && okc; ++i) {
    const float f = emu::bits_to_float(static_cast<uint32_t>(rng()));
    if (std::isnan(f)) continue;
    const __half_raw hr = __float2half_rn(f);
    const __nv_bfloat16_raw br = __float2bfloat16_rn(f);
    okc = okc && hr.x == emu::float_to_fp16_bits(f) && br.x == emu::float_to_bf16_bits(f);
  }
  report("fp16/bf16 helpers agree with CUDA's host conversions (all decodes, 2M random encodes)", okc);
#else
  std::printf("SKIP  CUDA host conversion cross-check (<cuda_fp16.h> not on the include path)\n");
#endif
}

}  // namespace

int main() {
  test_tables();
  test_ldmatrix();
  test_pipeline();
  test_ownership();
  test_random_tolerance();
  test_conversions();
  std::printf("%s: %d of %d checks passed\n", g_failures ? "FAIL" : "PASS", g_checks - g_failures, g_checks);
  return g_failures ? 1 : 0;
}
