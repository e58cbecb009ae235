// Portable kernels: plain C++ for any architecture (the compiler may auto-vectorize with its baseline ISA).
#include <cmath>
#include <vector>

#include "binary_kernels.h"

namespace hubert_lit_bits {
namespace {

inline int popcount32(uint32_t x) {
  // Branch-free SWAR popcount; no multiply, so it vectorizes with SSE2 as well.
  x = x - ((x >> 1) & 0x55555555u);
  x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
  x = (x + (x >> 4)) & 0x0F0F0F0Fu;
  x = x + (x >> 8);
  x = x + (x >> 16);
  return static_cast<int>(x & 0x3Fu);
}

inline bool decide(float v, const Threshold& t) { return v >= t.value; }

void pack_rows(const PackRowsArgs& a, int64_t begin, int64_t end) {
  const int64_t kd = words32(a.k), row_words = row_words32(a.k);
  for (int64_t flat = begin; flat < end; ++flat) {
    const int64_t bb = flat / a.rows;
    const float* x = row_start(a.x, bb, flat % a.rows);
    const float* shift = a.shift ? a.shift + (bb % a.x.b1) * a.shift_stride : nullptr;
    const WordSink sink = pack_rows_sink(a, flat);
    for (int64_t j = 0; j < kd; ++j) {
      uint32_t word = 0;
      const int count = bits_in_word(a.k, j);
      for (int t = 0; t < count; ++t) {
        const int64_t i = 32 * j + t;
        const float v = shift ? x[i] + shift[i] : x[i];
        word |= static_cast<uint32_t>(decide(v, a.threshold)) << t;
      }
      sink.first[j * sink.step] = word;
    }
    if (!a.panels) {
      for (int64_t j = kd; j < row_words; ++j) sink.first[j] = 0;
    }
  }
}

void pack_cols(const PackColsArgs& a, int64_t begin, int64_t end) {
  const int64_t kd = words32(a.k), panels = panel_count(a.n);
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t bb = unit / (panels * kd), p = (unit / kd) % panels, j = unit % kd;
    const float* shift = a.shift ? a.shift + (bb % a.x.b1) * a.shift_stride : nullptr;
    uint32_t words[kPanel] = {};
    const int count = bits_in_word(a.k, j);
    const int64_t c0 = p * kPanel, cols = min64(kPanel, a.n - c0);
    for (int t = 0; t < count; ++t) {
      const float* x = row_start(a.x, bb, 32 * j + t) + c0;
      for (int64_t c = 0; c < cols; ++c) {
        const float v = shift ? x[c] + shift[c0 + c] : x[c];
        words[c] |= static_cast<uint32_t>(decide(v, a.threshold)) << t;
      }
    }
    uint32_t* out = a.out + ((bb * panels + p) * kd + j) * kPanel;
    for (int64_t c = 0; c < kPanel; ++c) out[c] = words[c];
  }
}

constexpr int kRows = 4;  // rows per register tile

template <int R, bool AND>
void gemm_tile(const GemmArgs& g, const uint32_t* a, int64_t lda, const uint32_t* b, int64_t kd, const int32_t* rowpop,
               int64_t col0, float* out_f, int32_t* out_i, int64_t ldo) {
  int32_t acc[R][kPanel] = {};
  for (int64_t j = 0; j < kd; ++j) {
    const uint32_t* bw = b + j * kPanel;
    for (int r = 0; r < R; ++r) {
      const uint32_t av = a[r * lda + j];
      for (int c = 0; c < kPanel; ++c) acc[r][c] += popcount32(AND ? (av & bw[c]) : (av ^ bw[c]));
    }
  }
  const int64_t cols = min64(kPanel, g.n - col0);
  for (int r = 0; r < R; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int32_t dot = AND ? 2 * acc[r][c] - rowpop[r] : static_cast<int32_t>(g.k) - 2 * acc[r][c];
      const int64_t o = r * ldo + col0 + c;
      if (!g.scale) {
        out_i[o] = dot;
        continue;
      }
      float v = static_cast<float>(dot) * g.scale[col0 + c];
      if (g.bias) v = v + g.bias[col0 + c];
      out_f[o] = v;
    }
  }
}

template <bool AND>
void gemm_rows(const GemmArgs& g, int64_t batch, int64_t r0, int64_t r1) {
  const int64_t kd = words32(g.k), lda = row_words32(g.k), panels = panel_count(g.n);
  const uint32_t* a = g.a + batch * g.a_batch_stride;
  const uint32_t* b = g.b + batch * g.b_batch_stride;
  const int64_t out_offset = (batch / g.b1) * g.out_stride_b0 + (batch % g.b1) * g.out_stride_b1;
  std::vector<int32_t> rowpop(AND ? r1 - r0 : 0);
  for (int64_t r = r0; AND && r < r1; ++r) {
    int32_t count = 0;
    for (int64_t j = 0; j < kd; ++j) count += popcount32(a[r * lda + j]);
    rowpop[r - r0] = count;
  }
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    const int64_t re = min64(r1, rb + kRowBlock);
    for (int64_t p = 0; p < panels; ++p) {
      for (int64_t r = rb; r < re; r += kRows) {
        const uint32_t* ar = a + r * lda;
        const uint32_t* bp = b + p * kd * kPanel;
        const int32_t* pop = AND ? rowpop.data() + (r - r0) : nullptr;
        const int64_t o = out_offset + r * g.out_stride_row;
        float* of = g.out_f ? g.out_f + o : nullptr;
        int32_t* oi = g.out_i ? g.out_i + o : nullptr;
        switch (min64(kRows, re - r)) {
          case 4: gemm_tile<4, AND>(g, ar, lda, bp, kd, pop, p * kPanel, of, oi, g.out_stride_row); break;
          case 3: gemm_tile<3, AND>(g, ar, lda, bp, kd, pop, p * kPanel, of, oi, g.out_stride_row); break;
          case 2: gemm_tile<2, AND>(g, ar, lda, bp, kd, pop, p * kPanel, of, oi, g.out_stride_row); break;
          default: gemm_tile<1, AND>(g, ar, lda, bp, kd, pop, p * kPanel, of, oi, g.out_stride_row); break;
        }
      }
    }
  }
}

void gemm(const GemmArgs& g, int64_t batch, int64_t r0, int64_t r1) {
  if (g.and_mode) {
    gemm_rows<true>(g, batch, r0, r1);
  } else {
    gemm_rows<false>(g, batch, r0, r1);
  }
}

void softmax_pack(const SoftmaxPackArgs& a, int64_t begin, int64_t end) {
  const int64_t n = a.n, row_words = row_words32(n), chunks = (n + kSumLanes - 1) / kSumLanes;
  std::vector<float> e(kSumLanes * chunks, 0.0f);
  for (int64_t flat = begin; flat < end; ++flat) {
    const float* s = softmax_row(a, flat);
    const uint8_t* ok = allowed_row(a, flat);
    uint32_t* out = a.out + flat * row_words;
    for (int64_t j = 0; j < row_words; ++j) out[j] = 0;
    float m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      if (!ok || ok[j]) m = s[j] > m ? s[j] : m;
    }
    if (m == -INFINITY) continue;  // nothing allowed (or all -inf): every probability is 0
    float lanes[kSumLanes] = {};
    for (int64_t c = 0; c < chunks; ++c) {  // 16 independent lanes per chunk, as in the vector paths
      float* chunk = e.data() + c * kSumLanes;
      float x[kSumLanes];
      bool keep[kSumLanes];
      for (int l = 0; l < kSumLanes; ++l) {
        const int64_t j = c * kSumLanes + l;
        const float v = j < n ? s[j] - m : kExpMin - 1.0f;
        keep[l] = j < n && (!ok || ok[j]) && v >= kExpMin;
        x[l] = keep[l] ? v : 0.0f;  // in exp_poly's domain
      }
      // exp of every lane, then the mask: branch-free, so the compiler vectorizes it
      for (int l = 0; l < kSumLanes; ++l) chunk[l] = exp_poly(x[l]);
      for (int l = 0; l < kSumLanes; ++l) chunk[l] = keep[l] ? chunk[l] : 0.0f;
      for (int l = 0; l < kSumLanes; ++l) lanes[l] = lanes[l] + chunk[l];
    }
    const float inv = 1.0f / sum_lanes(lanes);
    for (int64_t j = 0; j < n; ++j) {
      if (e[j] * inv >= a.threshold.value) out[j / 32] |= 1u << (j % 32);
    }
  }
}

const KernelTable kTable{"generic", pack_rows, pack_cols, gemm, softmax_pack};

}  // namespace

const KernelTable* generic_kernels() { return &kTable; }

}  // namespace hubert_lit_bits
