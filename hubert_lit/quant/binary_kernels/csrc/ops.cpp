// Torch operators (namespace torch.ops.hubert_lit_bits): argument checks, ISA selection at run time and the
// split of work over the torch intra-op thread pool. Outputs are allocated by the Python wrappers.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/StringUtil.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "binary_kernels.h"

namespace hubert_lit_bits {
namespace {

bool cpu_has_avx512() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("popcnt");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
#else
  return false;
#endif
}

// Kernel tables this CPU can run, best first.
std::vector<const KernelTable*> usable_tables() {
  std::vector<const KernelTable*> tables;
  if (avx512_kernels() && cpu_has_avx512()) tables.push_back(avx512_kernels());
  if (avx2_kernels() && cpu_has_avx2()) tables.push_back(avx2_kernels());
  tables.push_back(generic_kernels());
  return tables;
}

const KernelTable*& active_table() {
  static const KernelTable* table = usable_tables().front();
  return table;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const KernelTable* t : usable_tables()) names.emplace_back(t->name);
  return names;
}

std::string isa() { return active_table()->name; }

std::string set_isa(const std::string& name) {
  for (const KernelTable* t : usable_tables()) {
    if (name == t->name) {
      active_table() = t;
      return t->name;
    }
  }
  TORCH_CHECK(false, "binary kernels: ISA '", name, "' is not available on this CPU; usable: ",
              c10::Join(", ", supported_isas()));
}

int64_t byte_count(const at::Tensor& t) { return t.element_size() * t.numel(); }

void check_words(const at::Tensor& t, int64_t words, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, " must be on the CPU");
  TORCH_CHECK(t.is_contiguous(), what, " must be contiguous");
  TORCH_CHECK(byte_count(t) == words * 4, what, " holds ", byte_count(t), " bytes, expected ", words * 4);
}

// A 1-D to 4-D tensor's size and stride along dim d of its (b0, b1, rows, cols) view (missing leading dims: 1).
int64_t size4(const at::Tensor& t, int d) {
  const int64_t missing = 4 - t.dim();
  return d < missing ? 1 : t.size(d - missing);
}

int64_t stride4(const at::Tensor& t, int d) {
  const int64_t missing = 4 - t.dim();
  return d < missing ? 0 : t.stride(d - missing);
}

// x viewed as (b0, b1, rows, cols); the Python wrappers merge any further leading dims.
FloatView float_view(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() >= 1 && x.dim() <= 4,
              "binary kernels: expected a 1-D to 4-D float32 CPU tensor, got ", x.scalar_type(), " of dim ",
              x.dim());
  TORCH_CHECK(x.size(-1) <= 1 || x.stride(-1) == 1, "binary kernels: the last dimension must be contiguous");
  return {x.const_data_ptr<float>(), size4(x, 1), stride4(x, 0), stride4(x, 1), stride4(x, 2)};
}

// (data, stride between b1 indices) of a (length,) or (1 or b1, length) shift.
std::pair<const float*, int64_t> shift_view(const std::optional<at::Tensor>& shift, int64_t b1, int64_t length) {
  if (!shift.has_value()) return {nullptr, 0};
  const at::Tensor& s = *shift;
  TORCH_CHECK(s.device().is_cpu() && s.scalar_type() == at::kFloat && (s.dim() == 1 || s.dim() == 2) &&
                  s.is_contiguous(),
              "binary kernels: shift must be a contiguous 1-D or 2-D float32 CPU tensor");
  const int64_t rows = s.dim() == 1 ? 1 : s.size(0);
  TORCH_CHECK(s.size(-1) == length && (rows == 1 || rows == b1), "binary kernels: shift must be (", length,
              ",) or (", b1, ", ", length, ") (one row per index of dim -3), got ", s.sizes());
  return {s.const_data_ptr<float>(), rows == 1 ? 0 : length};
}

Threshold threshold(double value) {
  TORCH_CHECK(std::isfinite(value), "binary kernels: the threshold must be finite, got ", value);
  return {static_cast<float>(value)};
}

// Work units per task so that a task does at least ~`target` bit operations (small problems run serially).
int64_t grain(int64_t unit_cost, int64_t target = 1 << 16) { return std::max<int64_t>(1, target / std::max<int64_t>(1, unit_cost)); }

void pack_rows(const at::Tensor& x, const std::optional<at::Tensor>& shift, double threshold_value,
               bool panels, at::Tensor& out) {
  const FloatView view = float_view(x);
  const int64_t batches = size4(x, 0) * size4(x, 1), rows = size4(x, 2), k = size4(x, 3);
  TORCH_CHECK(k > 0, "binary kernels: cannot pack rows of 0 bits");
  const int64_t words = panels ? batches * panel_count(rows) * words32(k) * kPanel : batches * rows * row_words32(k);
  check_words(out, words, "packed output");
  const auto [shift_data, shift_stride] = shift_view(shift, size4(x, 1), k);
  const PackRowsArgs args{view, rows, k, shift_data, shift_stride, threshold(threshold_value), panels,
                          static_cast<uint32_t*>(out.mutable_data_ptr())};
  const PackRowsFn fn = active_table()->pack_rows;
  at::parallel_for(0, batches * rows, grain(k * 8), [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

void pack_cols(const at::Tensor& x, const std::optional<at::Tensor>& shift, double threshold_value,
               at::Tensor& out) {
  const FloatView view = float_view(x);
  const int64_t batches = size4(x, 0) * size4(x, 1), k = size4(x, 2), n = size4(x, 3);
  TORCH_CHECK(k > 0, "binary kernels: cannot pack columns of 0 bits");
  const int64_t units = batches * panel_count(n) * words32(k);
  check_words(out, units * kPanel, "packed output");
  const auto [shift_data, shift_stride] = shift_view(shift, size4(x, 1), n);
  const PackColsArgs args{view, k, n, shift_data, shift_stride, threshold(threshold_value),
                          static_cast<uint32_t*>(out.mutable_data_ptr())};
  const PackColsFn fn = active_table()->pack_cols;
  at::parallel_for(0, units, grain(32 * kPanel * 8), [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

constexpr int64_t kRowsPerUnit = 12;  // a multiple of every kernel's register-tile height (4 and 3)

void check_vector(const std::optional<at::Tensor>& t, int64_t n) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == n,
              "binary kernels: scale and bias must be contiguous float32 CPU tensors of ", n, " values");
}

// a: rows words of (1 or b0 * b1) batches of m rows (any shape); b: panels of 1 or b0 * b1 batches; out: 2-D to
// 4-D (b0, b1, m, n), any strides but a contiguous last dim.
void gemm(const at::Tensor& a, const at::Tensor& b, int64_t k, int64_t n, bool and_mode,
          const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias, at::Tensor& out) {
  TORCH_CHECK(k > 0 && n > 0, "binary kernels: k and n must be positive");
  TORCH_CHECK(out.device().is_cpu() && out.dim() >= 2 && out.dim() <= 4 && out.size(-1) == n,
              "binary kernels: out must be a 2-D to 4-D (..., m, ", n, ") CPU tensor");
  TORCH_CHECK(n <= 1 || out.stride(-1) == 1, "binary kernels: out's last dimension must be contiguous");
  TORCH_CHECK(scale.has_value() || !bias.has_value(), "binary kernels: a bias needs a scale");
  TORCH_CHECK(out.scalar_type() == (scale.has_value() ? at::kFloat : at::kInt),
              "binary kernels: out must be float32 with a scale, int32 without");
  check_vector(scale, n);
  check_vector(bias, n);
  const int64_t m = out.size(-2), batches = size4(out, 0) * size4(out, 1);
  const int64_t a_words = m * row_words32(k), b_words = panel_count(n) * words32(k) * kPanel;
  TORCH_CHECK(byte_count(a) == 4 * a_words * batches || byte_count(a) == 4 * a_words,
              "binary kernels: the rows operand does not hold 1 or ", batches, " batches of ", m, " rows of ", k,
              " bits");
  TORCH_CHECK(byte_count(b) == 4 * b_words * batches || byte_count(b) == 4 * b_words,
              "binary kernels: the panels operand does not hold 1 or ", batches, " batches of ", n,
              " columns of ", k, " bits");
  check_words(a, byte_count(a) / 4, "rows operand");
  check_words(b, byte_count(b) / 4, "panels operand");
  const GemmArgs args{static_cast<const uint32_t*>(a.const_data_ptr()),
                      byte_count(a) == 4 * a_words ? 0 : a_words,
                      static_cast<const uint32_t*>(b.const_data_ptr()),
                      byte_count(b) == 4 * b_words ? 0 : b_words,
                      size4(out, 1),
                      m,
                      n,
                      k,
                      and_mode,
                      scale.has_value() ? scale->const_data_ptr<float>() : nullptr,
                      bias.has_value() ? bias->const_data_ptr<float>() : nullptr,
                      scale.has_value() ? out.mutable_data_ptr<float>() : nullptr,
                      scale.has_value() ? nullptr : out.mutable_data_ptr<int32_t>(),
                      stride4(out, 0),
                      stride4(out, 1),
                      stride4(out, 2)};
  const GemmFn fn = active_table()->gemm;
  const int64_t units_per_batch = (m + kRowsPerUnit - 1) / kRowsPerUnit;
  const int64_t unit_cost = kRowsPerUnit * n * words32(k) * 32;
  at::parallel_for(0, batches * units_per_batch, grain(unit_cost, 1 << 20), [&](int64_t begin, int64_t end) {
    // a task's units may span several batches: one kernel call per batch
    for (int64_t u = begin; u < end;) {
      const int64_t batch = u / units_per_batch, first = u % units_per_batch;
      const int64_t last = std::min(units_per_batch, first + (end - u));
      fn(args, batch, first * kRowsPerUnit, std::min(m, last * kRowsPerUnit));
      u += last - first;
    }
  });
}

// scores: contiguous 1-D to 4-D float32 (b0, b1, rows, n); allowed: null or contiguous bool/uint8 (b0, 1 or b1, rows,
// n); out: rows words (b0 * b1 * rows, row_words32(n)).
void softmax_pack(const at::Tensor& scores, const std::optional<at::Tensor>& allowed, double threshold_value,
                  at::Tensor& out) {
  TORCH_CHECK(scores.device().is_cpu() && scores.scalar_type() == at::kFloat && scores.dim() >= 1 &&
                  scores.dim() <= 4 && scores.is_contiguous(),
              "binary kernels: softmax scores must be a contiguous 1-D to 4-D float32 CPU tensor");
  const int64_t b0 = size4(scores, 0), b1 = size4(scores, 1), rows = size4(scores, 2), n = size4(scores, 3);
  TORCH_CHECK(n > 0, "binary kernels: cannot take the softmax of rows of 0 entries");
  check_words(out, b0 * b1 * rows * row_words32(n), "packed output");
  int64_t mask_b1 = 1;
  const uint8_t* mask = nullptr;
  if (allowed.has_value()) {
    const at::Tensor& m = *allowed;
    TORCH_CHECK(m.device().is_cpu() && (m.scalar_type() == at::kBool || m.scalar_type() == at::kByte) &&
                    m.is_contiguous() && m.dim() == scores.dim(),
                "binary kernels: the softmax mask must be a contiguous bool tensor with the scores' dims");
    mask_b1 = size4(m, 1);
    TORCH_CHECK(size4(m, 0) == b0 && (mask_b1 == 1 || mask_b1 == b1) && size4(m, 2) == rows && size4(m, 3) == n,
                "binary kernels: the softmax mask must be (b0, 1 or b1, rows, n) for scores ", scores.sizes(),
                ", got ", m.sizes());
    mask = static_cast<const uint8_t*>(m.const_data_ptr());
  }
  TORCH_CHECK(threshold_value > 0, "binary kernels: the probability threshold must be positive");
  const SoftmaxPackArgs args{scores.const_data_ptr<float>(), mask, b1, mask_b1, rows, n,
                             threshold(threshold_value), static_cast<uint32_t*>(out.mutable_data_ptr())};
  const SoftmaxPackFn fn = active_table()->softmax_pack;
  at::parallel_for(0, b0 * b1 * rows, grain(n * 16), [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

}  // namespace
}  // namespace hubert_lit_bits

TORCH_LIBRARY(hubert_lit_bits, lib) {
  lib.def("pack_rows(Tensor x, Tensor? shift, float threshold, bool panels, Tensor(a!) out) -> ()",
          &hubert_lit_bits::pack_rows);
  lib.def("pack_cols(Tensor x, Tensor? shift, float threshold, Tensor(a!) out) -> ()", &hubert_lit_bits::pack_cols);
  lib.def(
      "gemm(Tensor a, Tensor b, int k, int n, bool and_mode, Tensor? scale, Tensor? bias, Tensor(a!) out) -> ()",
      &hubert_lit_bits::gemm);
  lib.def("softmax_pack(Tensor scores, Tensor? allowed, float threshold, Tensor(a!) out) -> ()",
          &hubert_lit_bits::softmax_pack);
  lib.def("isa() -> str", &hubert_lit_bits::isa);
  lib.def("set_isa(str name) -> str", &hubert_lit_bits::set_isa);
  lib.def("supported_isas() -> str[]", &hubert_lit_bits::supported_isas);
}
