// Host side of the fused KL distillation op (torch.ops.kdlab.kl_fused): argument checks, launch
// configuration and dtype dispatch. The kernel itself is in kl_kernel.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch_v2.h>
#include <cstdint>
#include <cstdlib>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "kl_kernel.cuh"
#include "op_args.h"

namespace kdlab {

// Threads per row of the streaming rows kernel: KDLAB_KL_STREAM_THREADS, read at each call that streams (a
// multiple of 32 from 64 to 1,024; default 512, two rows an SM). A knob for measuring: 1,024 threads keep half
// as many rows in flight (on an H200, 132 rows of a 32k vocabulary, 33 MB), so the second read may come from L2.
static int kl_stream_threads() {
  const char* value = std::getenv("KDLAB_KL_STREAM_THREADS");
  if (value == nullptr || *value == '\0') return kRowStreamThreads;
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  TORCH_CHECK(*end == '\0' && n >= 64 && n <= kRowStreamMaxThreads && n % 32 == 0, "KDLAB_KL_STREAM_THREADS=", value,
              " is not valid; expected a multiple of 32 from 64 to ", kRowStreamMaxThreads);
  return static_cast<int>(n);
}

// reduction: 0 = none (loss per position), 1 = mean, 2 = sum; the gradient is that of the reduced loss.
// Both are multiplied by weight and by weight_tensor's value when given (read on the device).
std::tuple<at::Tensor, at::Tensor> kl_fused_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                 double temperature, bool reverse, int64_t reduction, double weight,
                                                 const std::optional<at::Tensor>& weight_tensor) {
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "kl_fused: reduction must be 0 (none), 1 (mean) or 2 (sum)");
  TORCH_CHECK(student.is_cuda() && teacher.is_cuda(), "kl_fused: expected CUDA tensors");
  TORCH_CHECK(student.sizes() == teacher.sizes(), "kl_fused: student and teacher shapes differ");
  TORCH_CHECK(student.device() == teacher.device(), "kl_fused: student and teacher are on different devices");
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "kl_fused: student and teacher dtypes differ");
  TORCH_CHECK(student.dim() >= 2 && student.size(1) >= 2, "kl_fused: expected logits [N, K, *spatial], K >= 2");
  TORCH_CHECK(student.scalar_type() != at::kDouble, "kl_fused: float64 logits use the reference implementation");
  TORCH_CHECK(student.size(1) < (1LL << 31), "kl_fused: too many classes");
  c10::cuda::CUDAGuard guard(student.device());
  // class axis innermost without a copy: [N, K] and channels-last [N, K, H, W] (memory [N, H, W, K])
  const bool channels_last = student.dim() == 4 && !student.is_contiguous() &&
                             student.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                             teacher.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor s = channels_last ? student : student.contiguous();
  const at::Tensor t = channels_last ? teacher : teacher.contiguous();
  const int64_t N = s.size(0);
  const int K = static_cast<int>(s.size(1));
  int64_t HW = 1;  // product of the spatial sizes (not numel / (N K): N may be 0)
  std::vector<int64_t> loss_shape{N};
  for (int64_t d = 2; d < s.dim(); ++d) {
    loss_shape.push_back(s.size(d));
    HW *= s.size(d);
  }
  at::Tensor loss = at::empty(loss_shape, s.options().dtype(at::kFloat));
  at::Tensor grad = at::empty_like(s);  // same layout as s (channels-last stays channels-last)
  if (s.numel() == 0) return {reduction == 0 ? loss : reduction == 1 ? loss.mean() : loss.sum(), grad};
  const bool rows = HW == 1 || channels_last;
  const int64_t n_rows = N * HW;
  const int wide = 16 / static_cast<int>(s.element_size());
  const auto aligned = [&](const at::Tensor& x) { return reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0; };
  const int vec = K % wide == 0 && aligned(s) && aligned(t) && aligned(grad) ? wide : 1;
  TORCH_CHECK(rows || (static_cast<int64_t>(K) + kColumnOffsetSlack) * HW < (1LL << 31),
              "kl_fused: ", K, " classes x ", HW, " positions per sample are too many for the kernel's 32-bit offsets "
              "(at most 2^31 logits per sample; the public losses use the formula there)");
  KlPlan plan = rows ? kl_rows_plan(n_rows, K, vec) : kl_columns_plan(N, K, HW);
  if (rows && plan.per == 0) plan = kl_rows_plan(n_rows, K, vec, kl_stream_threads());  // read only where it applies
  TORCH_CHECK(plan.blocks < (1LL << 31), "kl_fused: too many positions for one launch");
  const float temp = static_cast<float>(temperature);
  const KlArgs args{rows ? n_rows : N, K, rows ? 1 : HW, plan.group, 1.f / temp, temp,
                    kl_grad_scale(temp, reduction, N * HW), static_cast<float>(weight),
                    weight_pointer(weight_tensor, s, "kl_fused")};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_V2(s.scalar_type(), "kl_fused", AT_WRAP([&] {
    kl_dispatch<scalar_t>(reverse, rows, plan, [&](auto kernel, const KlPlan& p) {
      kernel<<<static_cast<unsigned>(p.blocks), p.threads, p.shared, stream>>>(
          s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), loss.data_ptr<float>(), grad.data_ptr<scalar_t>(), args);
    });
  }), at::kFloat, at::kHalf, at::kBFloat16);
  C10_CUDA_CHECK(cudaGetLastError());
  if (reduction == 1) return {loss.mean(), grad};  // torch reductions: deterministic, no atomics
  if (reduction == 2) return {loss.sum(), grad};
  return {loss, grad};
}

}  // namespace kdlab
