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

#include <cmath>
#include <cstdint>
#include <cstring>

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

// Softmax rows binarized by the unsigned {0, a} quantizer, without writing the probabilities: for each row of n
// scores (flat index over (b0, b1, rows)), with entries where `allowed` is 0 left out (probability 0),
//   m = max s_j,  e_j = exp(s_j - m),  Z = sum e_j,  bit j = e_j * (1 / Z) >= threshold   (allowed j only)
// in float32. exp is the polynomial of exp_poly() below with the same operations on every path, and Z is summed in
// kSumLanes lanes (lane l takes entries l, l + 16, l + 32, ... in order) reduced by sum_lanes(), so every path
// makes identical decisions (torch's softmax rounds differently, so a probability within an ulp or two of the
// threshold may fall the other way there). Output: rows layout (b0 * b1 * rows, row_words32(n)).
struct SoftmaxPackArgs {
  const float* scores;     // contiguous (b0 * b1 * rows, n)
  const uint8_t* allowed;  // null, or contiguous (b0, mask_b1, rows, n) with mask_b1 = 1 (shared) or b1
  int64_t b1, mask_b1, rows, n;
  Threshold threshold;
  uint32_t* out;
};

// Each kernel handles a contiguous range of units; the op layer splits units over the torch thread pool.
using PackRowsFn = void (*)(const PackRowsArgs&, int64_t row_begin, int64_t row_end);  // flat (b0, b1, row)
using PackColsFn = void (*)(const PackColsArgs&, int64_t unit_begin, int64_t unit_end);  // flat (b0, b1, panel, word)
using GemmFn = void (*)(const GemmArgs&, int64_t batch, int64_t row_begin, int64_t row_end);
using SoftmaxPackFn = void (*)(const SoftmaxPackArgs&, int64_t row_begin, int64_t row_end);  // flat (b0, b1, row)

struct KernelTable {
  const char* name;
  PackRowsFn pack_rows;
  PackColsFn pack_cols;
  GemmFn gemm;
  SoftmaxPackFn softmax_pack;
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

// ----------------------------------------------------------------------------------- softmax: shared arithmetic
// exp(x) for x in [kExpMin, 0]: n = nearest(x log2 e), r = (x - n ln2_hi) - n ln2_lo (n ln2_hi exact: ln2_hi has 11
// significant bits), e^r by Horner on the Taylor series to r^7 (|r| <= ln2 / 2: truncation 5e-9, below float32
// rounding), times 2^n built in the exponent bits (n >= -126: normal). Below kExpMin the entry counts as 0 (it is
// < 1.7e-38, invisible next to the row maximum's e^0 = 1, and its probability is below any threshold). Every
// path computes exactly these float32 operations, in this order, without fused multiply-add (-ffp-contract=off).
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kExpMin = -87.0f;
constexpr float kExpCoeff[8] = {1.0f, 1.0f, 0.5f, 1.0f / 6, 1.0f / 24, 1.0f / 120, 1.0f / 720, 1.0f / 5040};
constexpr int kSumLanes = 16;

constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: (v + magic) - magic rounds |v| < 2^22 half to even

inline float exp_poly(float x) {  // x in [kExpMin, 0]
  const float n = (x * kLog2e + kRoundMagic) - kRoundMagic;  // = nearbyint(x log2 e), the vector paths' rounding
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = kExpCoeff[7];  // Horner, written out (a loop here keeps compilers from vectorizing callers)
  p = p * r + kExpCoeff[6];
  p = p * r + kExpCoeff[5];
  p = p * r + kExpCoeff[4];
  p = p * r + kExpCoeff[3];
  p = p * r + kExpCoeff[2];
  p = p * r + kExpCoeff[1];
  p = p * r + kExpCoeff[0];
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Fixed pairwise reduction of the kSumLanes partial sums: (l, l + 8), then (l, l + 4), (l, l + 2), (l, l + 1).
inline float sum_lanes(float lanes[kSumLanes]) {
  for (int width = kSumLanes / 2; width >= 1; width /= 2) {
    for (int l = 0; l < width; ++l) lanes[l] = lanes[l] + lanes[l + width];
  }
  return lanes[0];
}

// First score and first mask byte (or null) of row `flat` (over (b0, b1, rows)).
inline const float* softmax_row(const SoftmaxPackArgs& a, int64_t flat) { return a.scores + flat * a.n; }
inline const uint8_t* allowed_row(const SoftmaxPackArgs& a, int64_t flat) {
  if (!a.allowed) return nullptr;
  const int64_t bb = flat / a.rows, r = flat % a.rows;
  const int64_t mask_batch = (bb / a.b1) * a.mask_b1 + (a.mask_b1 == 1 ? 0 : bb % a.b1);
  return a.allowed + (mask_batch * a.rows + r) * a.n;
}

// Each returns nullptr when the translation unit was compiled for another architecture.
const KernelTable* generic_kernels();
const KernelTable* avx2_kernels();
const KernelTable* avx512_kernels();

}  // namespace hubert_lit_bits
