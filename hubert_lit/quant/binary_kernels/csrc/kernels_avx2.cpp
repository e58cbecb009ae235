// AVX2 kernels (no vector popcount: nibble lookup with vpshufb, byte counts summed to 32-bit lanes every 31 words).
// Function-level target attributes only; ops.cpp calls in after checking the CPU at run time.
#include "binary_kernels.h"

#if defined(__GNUC__) && defined(__x86_64__)

#include <immintrin.h>

#include <cmath>
#include <vector>

#define HLB_TARGET __attribute__((target("avx2,popcnt")))
#define HLB_INLINE __attribute__((always_inline)) inline

namespace hubert_lit_bits {
namespace {

// Lane i is all ones when i < count (count clamped to [0, 8]).
HLB_TARGET HLB_INLINE __m256i lane_mask(int64_t count) {
  const int c = static_cast<int>(count < 0 ? 0 : (count > 8 ? 8 : count));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// All-ones lanes where the element decides to 1 (lanes outside `lanes` give 0 and are not read).
HLB_TARGET HLB_INLINE __m256 decide8(const float* x, const float* shift, __m256i lanes, const Threshold& t) {
  __m256 v = _mm256_maskload_ps(x, lanes);
  if (shift) v = _mm256_add_ps(v, _mm256_maskload_ps(shift, lanes));
  const __m256 on = _mm256_cmp_ps(v, _mm256_set1_ps(t.value), _CMP_GE_OQ);
  return _mm256_and_ps(on, _mm256_castsi256_ps(lanes));
}

HLB_TARGET void pack_rows(const PackRowsArgs& a, int64_t begin, int64_t end) {
  const int64_t kd = words32(a.k), row_words = row_words32(a.k);
  for (int64_t flat = begin; flat < end; ++flat) {
    const int64_t bb = flat / a.rows;
    const float* x = row_start(a.x, bb, flat % a.rows);
    const float* shift = a.shift ? a.shift + (bb % a.x.b1) * a.shift_stride : nullptr;
    const WordSink sink = pack_rows_sink(a, flat);
    for (int64_t j = 0; j < kd; ++j) {
      const int count = bits_in_word(a.k, j);
      uint32_t word = 0;
      for (int q = 0; q * 8 < count; ++q) {
        const int64_t i = 32 * j + 8 * q;
        const __m256 on = decide8(x + i, shift ? shift + i : nullptr, lane_mask(count - 8 * q), a.threshold);
        word |= static_cast<uint32_t>(_mm256_movemask_ps(on)) << (8 * q);
      }
      sink.first[j * sink.step] = word;
    }
    if (!a.panels) {
      for (int64_t j = kd; j < row_words; ++j) sink.first[j] = 0;
    }
  }
}

HLB_TARGET void pack_cols(const PackColsArgs& a, int64_t begin, int64_t end) {
  const int64_t kd = words32(a.k), panels = panel_count(a.n);
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t bb = unit / (panels * kd), p = (unit / kd) % panels, j = unit % kd;
    const int64_t c0 = p * kPanel;
    const __m256i lanes0 = lane_mask(a.n - c0), lanes1 = lane_mask(a.n - c0 - 8);
    const float* shift = a.shift ? a.shift + (bb % a.x.b1) * a.shift_stride + c0 : nullptr;
    const int count = bits_in_word(a.k, j);
    __m256i w0 = _mm256_setzero_si256(), w1 = _mm256_setzero_si256();
    for (int t = 0; t < count; ++t) {
      const float* x = row_start(a.x, bb, 32 * j + t) + c0;
      const __m256i bit = _mm256_set1_epi32(static_cast<int>(1u << t));
      const __m256 on0 = decide8(x, shift, lanes0, a.threshold);
      const __m256 on1 = decide8(x + 8, shift ? shift + 8 : nullptr, lanes1, a.threshold);
      w0 = _mm256_or_si256(w0, _mm256_and_si256(_mm256_castps_si256(on0), bit));
      w1 = _mm256_or_si256(w1, _mm256_and_si256(_mm256_castps_si256(on1), bit));
    }
    uint32_t* out = a.out + ((bb * panels + p) * kd + j) * kPanel;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), w0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), w1);
  }
}

// Register tile: R rows x one panel (two ymm of 8 columns).
constexpr int kRows = 3;
constexpr int64_t kByteSteps = 31;  // byte counters hold at most 8 per word: 31 * 8 = 248 < 256

struct Tile {
  const uint32_t* a;
  int64_t lda;
  const uint32_t* b;  // the panel
  int64_t kd;
  const int32_t* rowpop;
  int64_t col0;
  float* out_f;
  int32_t* out_i;
  int64_t ldo;
};

template <int R, bool AND>
HLB_TARGET HLB_INLINE void gemm_tile(const GemmArgs& g, const Tile& t) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                       2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256i acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (int64_t j0 = 0; j0 < t.kd; j0 += kByteSteps) {
    const int64_t j1 = min64(t.kd, j0 + kByteSteps);
    __m256i bytes[R][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) bytes[r][0] = bytes[r][1] = _mm256_setzero_si256();
    for (int64_t j = j0; j < j1; ++j) {
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.b + j * kPanel));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.b + j * kPanel + 8));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256i av = _mm256_set1_epi32(static_cast<int>(t.a[r * t.lda + j]));
        const __m256i v0 = AND ? _mm256_and_si256(av, b0) : _mm256_xor_si256(av, b0);
        const __m256i v1 = AND ? _mm256_and_si256(av, b1) : _mm256_xor_si256(av, b1);
        const __m256i c0 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v0, low)),
                                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v0, 4), low)));
        const __m256i c1 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v1, low)),
                                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v1, 4), low)));
        bytes[r][0] = _mm256_add_epi8(bytes[r][0], c0);
        bytes[r][1] = _mm256_add_epi8(bytes[r][1], c1);
      }
    }
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      for (int h = 0; h < 2; ++h) {
        const __m256i pairs = _mm256_maddubs_epi16(bytes[r][h], ones8);  // byte pairs -> int16
        acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(pairs, ones16));  // -> int32 per column
      }
    }
  }
  const __m256i kvec = _mm256_set1_epi32(static_cast<int>(g.k));
  for (int h = 0; h < 2; ++h) {
    const int64_t col = t.col0 + 8 * h;
    if (col >= g.n) break;
    const __m256i cols = lane_mask(g.n - col);
    const bool full = g.n - col >= 8;
    __m256 scale = _mm256_setzero_ps(), bias = _mm256_setzero_ps();
    if (g.scale) scale = _mm256_maskload_ps(g.scale + col, cols);
    if (g.bias) bias = _mm256_maskload_ps(g.bias + col, cols);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256i twice = _mm256_slli_epi32(acc[r][h], 1);
      const __m256i dot = AND ? _mm256_sub_epi32(twice, _mm256_set1_epi32(t.rowpop[r])) : _mm256_sub_epi32(kvec, twice);
      const int64_t o = r * t.ldo + col;
      if (!g.scale) {
        if (full) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(t.out_i + o), dot);
        } else {
          _mm256_maskstore_epi32(t.out_i + o, cols, dot);
        }
        continue;
      }
      __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), scale);
      if (g.bias) v = _mm256_add_ps(v, bias);
      if (full) {
        _mm256_storeu_ps(t.out_f + o, v);
      } else {
        _mm256_maskstore_ps(t.out_f + o, cols, v);
      }
    }
  }
}

template <bool AND>
HLB_TARGET void gemm_rows(const GemmArgs& g, int64_t batch, int64_t r0, int64_t r1) {
  const int64_t kd = words32(g.k), lda = row_words32(g.k), panels = panel_count(g.n);
  const uint32_t* a = g.a + batch * g.a_batch_stride;
  const uint32_t* b = g.b + batch * g.b_batch_stride;
  const int64_t out_offset = (batch / g.b1) * g.out_stride_b0 + (batch % g.b1) * g.out_stride_b1;
  std::vector<int32_t> rowpop(AND ? r1 - r0 : 0);
  for (int64_t r = r0; AND && r < r1; ++r) {
    int32_t count = 0;
    for (int64_t j = 0; j < kd; ++j) count += __builtin_popcount(a[r * lda + j]);
    rowpop[r - r0] = count;
  }
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    const int64_t re = min64(r1, rb + kRowBlock);
    for (int64_t p = 0; p < panels; ++p) {
      for (int64_t r = rb; r < re; r += kRows) {
        const int64_t o = out_offset + r * g.out_stride_row;
        const Tile t{a + r * lda,
                     lda,
                     b + p * kd * kPanel,
                     kd,
                     AND ? rowpop.data() + (r - r0) : nullptr,
                     p * kPanel,
                     g.out_f ? g.out_f + o : nullptr,
                     g.out_i ? g.out_i + o : nullptr,
                     g.out_stride_row};
        switch (min64(kRows, re - r)) {
          case 3: gemm_tile<3, AND>(g, t); break;
          case 2: gemm_tile<2, AND>(g, t); break;
          default: gemm_tile<1, AND>(g, t); break;
        }
      }
    }
  }
}

HLB_TARGET void gemm(const GemmArgs& g, int64_t batch, int64_t r0, int64_t r1) {
  if (g.and_mode) {
    gemm_rows<true>(g, batch, r0, r1);
  } else {
    gemm_rows<false>(g, batch, r0, r1);
  }
}

// exp_poly() on 8 lanes, x in [kExpMin, 0]: the same float32 operations in the same order.
HLB_TARGET HLB_INLINE __m256 exp8(__m256 x) {
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(kLn2Hi)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(kLn2Lo)));
  __m256 p = _mm256_set1_ps(kExpCoeff[7]);
  for (int i = 6; i >= 0; --i) p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kExpCoeff[i]));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// All-ones lanes for entries j .. j + 7 that exist (j + i < n) and the mask row allows.
HLB_TARGET HLB_INLINE __m256i allowed8(const uint8_t* ok, int64_t j, int64_t n) {
  const __m256i lanes = lane_mask(n - j);
  if (!ok) return lanes;
  uint8_t bytes[8] = {};
  for (int64_t i = 0; i < 8 && j + i < n; ++i) bytes[i] = ok[j + i];
  const __m256i wide = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes)));
  return _mm256_andnot_si256(_mm256_cmpeq_epi32(wide, _mm256_setzero_si256()), lanes);
}

HLB_TARGET void softmax_pack(const SoftmaxPackArgs& a, int64_t begin, int64_t end) {
  const int64_t n = a.n, row_words = row_words32(n), chunks = (n + 15) / 16;
  std::vector<float> e(16 * chunks);
  const __m256 lo = _mm256_set1_ps(kExpMin), threshold = _mm256_set1_ps(a.threshold.value);
  const __m256 minus_inf = _mm256_set1_ps(-INFINITY);
  for (int64_t flat = begin; flat < end; ++flat) {
    const float* s = softmax_row(a, flat);
    const uint8_t* ok = allowed_row(a, flat);
    uint32_t* out = a.out + flat * row_words;
    for (int64_t j = 0; j < row_words; ++j) out[j] = 0;
    __m256 vmax = minus_inf;
    for (int64_t j = 0; j < 16 * chunks; j += 8) {
      const __m256i lanes = allowed8(ok, j, n);
      const __m256 v = _mm256_blendv_ps(minus_inf, _mm256_maskload_ps(s + j, lanes), _mm256_castsi256_ps(lanes));
      vmax = _mm256_max_ps(vmax, v);
    }
    float maxima[8];
    _mm256_storeu_ps(maxima, vmax);
    float m = maxima[0];
    for (int i = 1; i < 8; ++i) m = maxima[i] > m ? maxima[i] : m;
    if (m == -INFINITY) continue;  // nothing allowed: every probability is 0
    const __m256 vm = _mm256_set1_ps(m);
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};  // lanes 0-7 and 8-15 of the 16 partial sums
    for (int64_t j = 0; j < 16 * chunks; j += 8) {
      __m256i lanes = allowed8(ok, j, n);
      const __m256 x = _mm256_sub_ps(_mm256_maskload_ps(s + j, lanes), vm);
      lanes = _mm256_and_si256(lanes, _mm256_castps_si256(_mm256_cmp_ps(x, lo, _CMP_GE_OQ)));
      const __m256 v = _mm256_and_ps(exp8(_mm256_max_ps(x, lo)), _mm256_castsi256_ps(lanes));
      _mm256_storeu_ps(e.data() + j, v);
      acc[(j / 8) % 2] = _mm256_add_ps(acc[(j / 8) % 2], v);
    }
    float lane_sums[kSumLanes];
    _mm256_storeu_ps(lane_sums, acc[0]);
    _mm256_storeu_ps(lane_sums + 8, acc[1]);
    const __m256 inv = _mm256_set1_ps(1.0f / sum_lanes(lane_sums));
    for (int64_t j = 0; j < 16 * chunks; j += 8) {
      const __m256 prob = _mm256_mul_ps(_mm256_loadu_ps(e.data() + j), inv);
      const uint32_t on = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(prob, threshold, _CMP_GE_OQ)));
      out[j / 32] |= on << (j % 32);
    }
  }
}

const KernelTable kTable{"avx2", pack_rows, pack_cols, gemm, softmax_pack};

}  // namespace

const KernelTable* avx2_kernels() { return &kTable; }

}  // namespace hubert_lit_bits

#else

namespace hubert_lit_bits {
const KernelTable* avx2_kernels() { return nullptr; }
}  // namespace hubert_lit_bits

#endif
