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

void check_words(const at::Tensor& t, int64_t words, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, " must be on the CPU");
  TORCH_CHECK(t.is_contiguous(), what, " must be contiguous");
  TORCH_CHECK(t.element_size() * t.numel() == words * 4, what, " holds ", t.element_size() * t.numel(),
              " bytes, expected ", words * 4);
}

FloatView float_view(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4,
              "binary kernels: expected a 4-D float32 CPU tensor, got ", x.scalar_type(), " of dim ", x.dim());
  TORCH_CHECK(x.size(3) <= 1 || x.stride(3) == 1, "binary kernels: the last dimension must be contiguous");
  return {x.const_data_ptr<float>(), x.size(1), x.stride(0), x.stride(1), x.stride(2)};
}

// (data, stride between b1 indices) of a (1 or b1, length) shift.
std::pair<const float*, int64_t> shift_view(const std::optional<at::Tensor>& shift, int64_t b1, int64_t length) {
  if (!shift.has_value()) return {nullptr, 0};
  const at::Tensor& s = *shift;
  TORCH_CHECK(s.device().is_cpu() && s.scalar_type() == at::kFloat && s.dim() == 2 && s.is_contiguous(),
              "binary kernels: shift must be a contiguous 2-D float32 CPU tensor");
  TORCH_CHECK(s.size(1) == length && (s.size(0) == 1 || s.size(0) == b1), "binary kernels: shift of shape ",
              s.sizes(), " does not fit ", b1, " x ", length);
  return {s.const_data_ptr<float>(), s.size(0) == 1 ? 0 : length};
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
  const int64_t batches = x.size(0) * x.size(1), rows = x.size(2), k = x.size(3);
  TORCH_CHECK(k > 0, "binary kernels: cannot pack rows of 0 bits");
  const int64_t words = panels ? batches * panel_count(rows) * words32(k) * kPanel : batches * rows * row_words32(k);
  check_words(out, words, "packed output");
  const auto [shift_data, shift_stride] = shift_view(shift, x.size(1), k);
  const PackRowsArgs args{view, rows, k, shift_data, shift_stride, threshold(threshold_value), panels,
                          static_cast<uint32_t*>(out.mutable_data_ptr())};
  const PackRowsFn fn = active_table()->pack_rows;
  at::parallel_for(0, batches * rows, grain(k * 8), [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

void pack_cols(const at::Tensor& x, const std::optional<at::Tensor>& shift, double threshold_value,
               at::Tensor& out) {
  const FloatView view = float_view(x);
  const int64_t batches = x.size(0) * x.size(1), k = x.size(2), n = x.size(3);
  TORCH_CHECK(k > 0, "binary kernels: cannot pack columns of 0 bits");
  const int64_t units = batches * panel_count(n) * words32(k);
  check_words(out, units * kPanel, "packed output");
  const auto [shift_data, shift_stride] = shift_view(shift, x.size(1), n);
  const PackColsArgs args{view, k, n, shift_data, shift_stride, threshold(threshold_value),
                          static_cast<uint32_t*>(out.mutable_data_ptr())};
  const PackColsFn fn = active_table()->pack_cols;
  at::parallel_for(0, units, grain(32 * kPanel * 8), [&](int64_t begin, int64_t end) { fn(args, begin, end); });
}

constexpr int64_t kRowsPerUnit = 12;  // a multiple of every kernel's register-tile height (4 and 3)

void gemm(const at::Tensor& a, const at::Tensor& b, int64_t k, int64_t n, bool and_mode,
          const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias, at::Tensor& out) {
  TORCH_CHECK(k > 0 && n > 0, "binary kernels: k and n must be positive");
  TORCH_CHECK(a.dim() == 3, "binary kernels: the rows operand must be (batches, m, words)");
  const int64_t batches_a = a.size(0), m = a.size(1);
  TORCH_CHECK(out.dim() == 4 && out.size(2) == m && out.size(3) == n && out.device().is_cpu(),
              "binary kernels: out must be a (b0, b1, m, n) CPU tensor");
  TORCH_CHECK(out.size(3) <= 1 || out.stride(3) == 1, "binary kernels: out's last dimension must be contiguous");
  const int64_t batches = out.size(0) * out.size(1);
  TORCH_CHECK(batches_a == batches || batches_a == 1, "binary kernels: ", batches_a, " row batches for ", batches,
              " outputs");
  check_words(a, batches_a * m * row_words32(k), "rows operand");
  const int64_t panel_words = panel_count(n) * words32(k) * kPanel;
  TORCH_CHECK(b.numel() * b.element_size() == panel_words * 4 * batches ||
                  b.numel() * b.element_size() == panel_words * 4,
              "binary kernels: the panels operand does not hold ", n, " columns of ", k, " bits");
  check_words(b, b.numel() * b.element_size() / 4, "panels operand");
  const bool shared_b = b.numel() * b.element_size() == panel_words * 4 && batches > 1;
  for (const auto* vec : {&scale, &bias}) {
    if (vec->has_value()) {
      const at::Tensor& t = **vec;
      TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n,
                  "binary kernels: scale and bias must be contiguous float32 CPU tensors of ", n, " values");
    }
  }
  TORCH_CHECK(scale.has_value() || !bias.has_value(), "binary kernels: a bias needs a scale");
  TORCH_CHECK(out.scalar_type() == (scale.has_value() ? at::kFloat : at::kInt),
              "binary kernels: out must be float32 with a scale, int32 without");
  GemmArgs args{static_cast<const uint32_t*>(a.const_data_ptr()),
                batches_a == 1 ? 0 : m * row_words32(k),
                static_cast<const uint32_t*>(b.const_data_ptr()),
                shared_b ? 0 : panel_words,
                out.size(1),
                m,
                n,
                k,
                and_mode,
                scale.has_value() ? scale->const_data_ptr<float>() : nullptr,
                bias.has_value() ? bias->const_data_ptr<float>() : nullptr,
                scale.has_value() ? out.mutable_data_ptr<float>() : nullptr,
                scale.has_value() ? nullptr : out.mutable_data_ptr<int32_t>(),
                out.stride(0),
                out.stride(1),
                out.stride(2)};
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

}  // namespace
}  // namespace hubert_lit_bits

TORCH_LIBRARY(hubert_lit_bits, lib) {
  lib.def("pack_rows(Tensor x, Tensor? shift, float threshold, bool panels, Tensor(a!) out) -> ()",
          &hubert_lit_bits::pack_rows);
  lib.def("pack_cols(Tensor x, Tensor? shift, float threshold, Tensor(a!) out) -> ()", &hubert_lit_bits::pack_cols);
  lib.def(
      "gemm(Tensor a, Tensor b, int k, int n, bool and_mode, Tensor? scale, Tensor? bias, Tensor(a!) out) -> ()",
      &hubert_lit_bits::gemm);
  lib.def("isa() -> str", &hubert_lit_bits::isa);
  lib.def("set_isa(str name) -> str", &hubert_lit_bits::set_isa);
  lib.def("supported_isas() -> str[]", &hubert_lit_bits::supported_isas);
}
