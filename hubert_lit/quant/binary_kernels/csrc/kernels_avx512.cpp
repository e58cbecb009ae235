// AVX-512 kernels with VPOPCNTDQ. Every function carries its own target attribute (no file-wide -m flags), so
// nothing here can leak AVX-512 code into code paths other CPUs run; ops.cpp only calls in after checking the
// CPU at run time.
#include "binary_kernels.h"

#if defined(__GNUC__) && defined(__x86_64__)

#include <immintrin.h>

#include <cmath>
#include <vector>

#define HLB_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,popcnt")))
#define HLB_INLINE __attribute__((always_inline)) inline

namespace hubert_lit_bits {
namespace {

HLB_TARGET HLB_INLINE __mmask16 lane_mask(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << count) - 1u);
}

// One bit per lane of x[0..16) (lanes outside `lanes` give 0 and are not read).
HLB_TARGET HLB_INLINE __mmask16 decide16(const float* x, const float* shift, __mmask16 lanes, const Threshold& t) {
  __m512 v = _mm512_maskz_loadu_ps(lanes, x);
  if (shift) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(lanes, shift));
  return _mm512_mask_cmp_ps_mask(lanes, v, _mm512_set1_ps(t.value), _CMP_GE_OQ);
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
      const int64_t i = 32 * j;
      uint32_t word = decide16(x + i, shift ? shift + i : nullptr, lane_mask(count), a.threshold);
      if (count > 16) {
        const __mmask16 high = decide16(x + i + 16, shift ? shift + i + 16 : nullptr, lane_mask(count - 16), a.threshold);
        word |= static_cast<uint32_t>(high) << 16;
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
    const __mmask16 lanes = lane_mask(a.n - c0);
    const float* shift = a.shift ? a.shift + (bb % a.x.b1) * a.shift_stride + c0 : nullptr;
    const int count = bits_in_word(a.k, j);
    __m512i words = _mm512_setzero_si512();
    for (int t = 0; t < count; ++t) {
      const __mmask16 bits = decide16(row_start(a.x, bb, 32 * j + t) + c0, shift, lanes, a.threshold);
      words = _mm512_mask_or_epi32(words, bits, words, _mm512_set1_epi32(static_cast<int>(1u << t)));
    }
    _mm512_storeu_si512(a.out + ((bb * panels + p) * kd + j) * kPanel, words);
  }
}

// Register tile: R rows x P panels (16 columns each) of 32-bit popcount accumulators, i.e. R * P zmm registers;
// each step loads P panel vectors and broadcasts one word per row, then runs R * P (xor|and, popcnt, add).
constexpr int kRows = 4;
constexpr int kPanels = 4;

struct Tile {
  const uint32_t* a;  // first row of the tile
  int64_t lda;
  const uint32_t* b;  // first panel of the tile
  int64_t kd;
  const int32_t* rowpop;
  int64_t col0;
  float* out_f;  // row 0, column 0 of the output batch
  int32_t* out_i;
  int64_t ldo;
};

template <int R, int P, bool AND>
HLB_TARGET HLB_INLINE void gemm_tile(const GemmArgs& g, const Tile& t) {
  __m512i acc[R][P];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) acc[r][p] = _mm512_setzero_si512();
  }
  for (int64_t j = 0; j < t.kd; ++j) {
    __m512i bv[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) bv[p] = _mm512_loadu_si512(t.b + (p * t.kd + j) * kPanel);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(t.a[r * t.lda + j]));
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        const __m512i v = AND ? _mm512_and_si512(av, bv[p]) : _mm512_xor_si512(av, bv[p]);
        acc[r][p] = _mm512_add_epi32(acc[r][p], _mm512_popcnt_epi32(v));
      }
    }
  }
  const __m512i kvec = _mm512_set1_epi32(static_cast<int>(g.k));
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    const int64_t col = t.col0 + p * kPanel;
    const __mmask16 cols = lane_mask(g.n - col);
    __m512 scale = _mm512_setzero_ps(), bias = _mm512_setzero_ps();
    if (g.scale) scale = _mm512_maskz_loadu_ps(cols, g.scale + col);
    if (g.bias) bias = _mm512_maskz_loadu_ps(cols, g.bias + col);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i twice = _mm512_slli_epi32(acc[r][p], 1);
      const __m512i dot = AND ? _mm512_sub_epi32(twice, _mm512_set1_epi32(t.rowpop[r]))
                              : _mm512_sub_epi32(kvec, twice);
      const int64_t o = r * t.ldo + col;
      if (!g.scale) {
        _mm512_mask_storeu_epi32(t.out_i + o, cols, dot);
        continue;
      }
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), scale);
      if (g.bias) v = _mm512_add_ps(v, bias);
      _mm512_mask_storeu_ps(t.out_f + o, cols, v);
    }
  }
}

template <int R, bool AND>
HLB_TARGET void gemm_tile_rows(const GemmArgs& g, const Tile& t, int64_t panels) {
  switch (panels) {
    case 4: gemm_tile<R, 4, AND>(g, t); break;
    case 3: gemm_tile<R, 3, AND>(g, t); break;
    case 2: gemm_tile<R, 2, AND>(g, t); break;
    default: gemm_tile<R, 1, AND>(g, t); break;
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
    for (int64_t p = 0; p < panels; p += kPanels) {
      const int64_t block = min64(kPanels, panels - p);
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
          case 4: gemm_tile_rows<4, AND>(g, t, block); break;
          case 3: gemm_tile_rows<3, AND>(g, t, block); break;
          case 2: gemm_tile_rows<2, AND>(g, t, block); break;
          default: gemm_tile_rows<1, AND>(g, t, block); break;
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

// exp_poly() on 16 lanes, x in [kExpMin, 0]: the same float32 operations in the same order.
HLB_TARGET HLB_INLINE __m512 exp16(__m512 x) {
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(kLn2Hi)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(kLn2Lo)));
  __m512 p = _mm512_set1_ps(kExpCoeff[7]);
  for (int i = 6; i >= 0; --i) p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kExpCoeff[i]));
  // p * 2^n in one instruction: the same correctly rounded product as multiplying by the exact float 2^n
  return _mm512_scalef_ps(p, n);
}

// `lanes` restricted to the entries the mask row allows (all of them without a mask).
HLB_TARGET HLB_INLINE __mmask16 allowed16(const uint8_t* ok, __mmask16 lanes) {
  if (!ok) return lanes;
  return _mm_mask_cmpneq_epi8_mask(lanes, _mm_maskz_loadu_epi8(lanes, ok), _mm_setzero_si128());
}

HLB_TARGET void softmax_pack(const SoftmaxPackArgs& a, int64_t begin, int64_t end) {
  const int64_t n = a.n, row_words = row_words32(n), chunks = (n + 15) / 16;
  std::vector<float> e(16 * chunks);
  const __m512 lo = _mm512_set1_ps(kExpMin), threshold = _mm512_set1_ps(a.threshold.value);
  for (int64_t flat = begin; flat < end; ++flat) {
    const float* s = softmax_row(a, flat);
    const uint8_t* ok = allowed_row(a, flat);
    uint32_t* out = a.out + flat * row_words;
    for (int64_t j = 0; j < row_words; ++j) out[j] = 0;
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t c = 0; c < chunks; ++c) {
      const __mmask16 lanes = allowed16(ok ? ok + 16 * c : nullptr, lane_mask(n - 16 * c));
      vmax = _mm512_mask_max_ps(vmax, lanes, vmax, _mm512_maskz_loadu_ps(lanes, s + 16 * c));
    }
    const float m = _mm512_reduce_max_ps(vmax);
    if (m == -INFINITY) continue;  // nothing allowed: every probability is 0
    const __m512 vm = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      __mmask16 lanes = allowed16(ok ? ok + 16 * c : nullptr, lane_mask(n - 16 * c));
      const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, s + 16 * c), vm);
      lanes &= _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
      const __m512 v = _mm512_maskz_mov_ps(lanes, exp16(_mm512_max_ps(x, lo)));
      _mm512_storeu_ps(e.data() + 16 * c, v);
      acc = _mm512_add_ps(acc, v);
    }
    float lane_sums[kSumLanes];
    _mm512_storeu_ps(lane_sums, acc);
    const __m512 inv = _mm512_set1_ps(1.0f / sum_lanes(lane_sums));
    for (int64_t c = 0; c < chunks; ++c) {
      const __m512 prob = _mm512_mul_ps(_mm512_loadu_ps(e.data() + 16 * c), inv);
      const __mmask16 on = _mm512_cmp_ps_mask(prob, threshold, _CMP_GE_OQ);
      out[c / 2] |= static_cast<uint32_t>(on) << (16 * (c % 2));
    }
  }
}

const KernelTable kTable{"avx512", pack_rows, pack_cols, gemm, softmax_pack};

}  // namespace

const KernelTable* avx512_kernels() { return &kTable; }

}  // namespace hubert_lit_bits

#else

namespace hubert_lit_bits {
const KernelTable* avx512_kernels() { return nullptr; }
}  // namespace hubert_lit_bits

#endif
