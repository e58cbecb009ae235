// Bit-packed W1A1 kernels: the plain-C interface between the torch op layer (ops.cpp) and the per-ISA kernel
// translation units (kernels_generic.cpp, kernels_avx2.cpp, kernels_avx512.cpp). Nothing here includes torch, so
// the ISA units compile in a second and never instantiate a torch template with ISA-specific code.
//
// Layouts (see hubert_lit/quant/binary_kernels/packed.py):
//   rows   : left operand, one row of K bits per output row, stored as 2 * ceil(K / 64) uint32 words
//            (= ceil(K / 64) little-endian uint64 words); bit i of the row is bit (i % 32) of word i / 32.
//   panels : right operand, N columns of K bits in panels of kPanel columns: word j of column c lives at
//            [c / kPanel][j][c % kPanel], with ceil(K / 32) words per column.
// Padding bits (beyond K) and padding columns (beyond N) are zero in both layouts.
#pragma once

#include <cstdint>

namespace hubert_lit_bits {

constexpr int64_t kPanel = 16;  // columns per panel: one 512-bit vector of uint32 words
// Rows per cache block of the GEMMs: a block's output rows (<= 48 x n floats) stay in L2 while the panels are
// swept, and a panel block stays in L1 across the block's rows.
constexpr int64_t kRowBlock = 48;

inline int64_t words32(int64_t k) { return (k + 31) / 32; }
inline int64_t row_words32(int64_t k) { return 2 * ((k + 63) / 64); }
inline int64_t panel_count(int64_t n) { return (n + kPanel - 1) / kPanel; }

// A float tensor viewed as (b0, b1, rows, cols) with element strides; the innermost stride is 1.
struct FloatView {
  const float* data;
  int64_t b1;
  int64_t stride_b0, stride_b1, stride_row;
};

// Binarization of one element v (shift already added): bit = v >= threshold. Signed sites use 0 (sign(0) = +1);
// unsigned {0, a} sites use the smallest float t that the elastic quantizer maps to a (round(t / a) >= 1), found
// by the Python wrapper with the quantizer's own float ops: fl(v / a) is non-decreasing in v, so v >= t is
// exactly its decision, and a compare replaces a division per element.
struct Threshold {
  float value;
};

// Packs rows of K contiguous floats. x is (b0, b1, rows, K); shift (if not null) holds one value per K element
// for each b1 index at shift[i1 * shift_stride + kk] (shift_stride 0 = shared). Output: rows layout
// (b0 * b1 * rows, row_words32(K)) or, with panels, (b0 * b1, panel_count(rows), words32(K), kPanel).
struct PackRowsArgs {
  FloatView x;
  int64_t rows, k;
  const float* shift;
  int64_t shift_stride;
  Threshold threshold;
  bool panels;
  uint32_t* out;
};

// Packs columns: x is (b0, b1, K, N) with N contiguous (the reduction runs down the rows, as for attention
// values). shift (if not null) holds one value per column at shift[i1 * shift_stride + c]. Output: panels
// (b0 * b1, panel_count(N), words32(K), kPanel).
struct PackColsArgs {
  FloatView x;
  int64_t k, n;
  const float* shift;
  int64_t shift_stride;
  Threshold threshold;
  uint32_t* out;
};

// out[i0, i1, m, c] for a rows operand a (b0 * b1 batches, or 1 shared) and a panels operand b (b0 * b1 or 1):
//   xnor: dot = K - 2 popcount(a_m XOR b_c)              (signed x signed)
//   and : dot = 2 popcount(a_m AND b_c) - popcount(a_m)   (unsigned {0,1} x signed)
// then out = float(dot) * scale[c] (+ bias[c]), two separately rounded float operations, or the int32 dot
// itself when scale is null.
struct GemmArgs {
  const uint32_t* a;
  int64_t a_batch_stride;  // in words; 0 = shared
  const uint32_t* b;
  int64_t b_batch_stride;  // in words; 0 = shared
  int64_t b1;              // size of batch dim 1 (output addressing)
  int64_t m, n, k;
  bool and_mode;
  const float* scale;  // (n,) or null for the raw int32 dot
  const float* bias;   // (n,) or null
  float* out_f;
  int32_t* out_i;
  int64_t out_stride_b0, out_stride_b1, out_stride_row;
};

// Each kernel handles a contiguous range of units; the op layer splits units over the torch thread pool.
using PackRowsFn = void (*)(const PackRowsArgs&, int64_t row_begin, int64_t row_end);  // flat (b0, b1, row)
using PackColsFn = void (*)(const PackColsArgs&, int64_t unit_begin, int64_t unit_end);  // flat (b0, b1, panel, word)
using GemmFn = void (*)(const GemmArgs&, int64_t batch, int64_t row_begin, int64_t row_end);

struct KernelTable {
  const char* name;
  PackRowsFn pack_rows;
  PackColsFn pack_cols;
  GemmFn gemm;
};

// ------------------------------------------------------------------------------------- shared addressing
// Plain integer arithmetic only (no ISA-specific code), so every translation unit may inline these.

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// First float of row r of batch bb (= i0 * b1 + i1) of a (b0, b1, rows, cols) view.
inline const float* row_start(const FloatView& v, int64_t bb, int64_t r) {
  return v.data + (bb / v.b1) * v.stride_b0 + (bb % v.b1) * v.stride_b1 + r * v.stride_row;
}

// Where the words of row r (flat index bb * rows + r) go, and the distance between consecutive words.
struct WordSink {
  uint32_t* first;
  int64_t step;
};

inline WordSink pack_rows_sink(const PackRowsArgs& a, int64_t flat) {
  if (a.panels) {
    const int64_t bb = flat / a.rows, r = flat % a.rows;
    const int64_t panel = bb * panel_count(a.rows) + r / kPanel;
    return {a.out + panel * words32(a.k) * kPanel + r % kPanel, kPanel};
  }
  return {a.out + flat * row_words32(a.k), 1};
}

// Number of valid bits in word j of a K-bit row (0 < count <= 32).
inline int bits_in_word(int64_t k, int64_t j) { return static_cast<int>(min64(32, k - 32 * j)); }

// Each returns nullptr when the translation unit was compiled for another architecture.
const KernelTable* generic_kernels();
const KernelTable* avx2_kernels();
const KernelTable* avx512_kernels();

}  // namespace hubert_lit_bits
