// kdlab's kernels under the SIMT emulator: C entry points (called through ctypes from
// tools/simt/emulate.py) that launch the very kernel templates the CUDA build uses, with the
// same launch configuration, on float32 buffers guarded against out-of-bounds accesses.
#define KDLAB_SIMT_EMULATOR 1
#include "attention_kernel.cuh"  // kdlab/kernels/, on the include path
#include "kl_kernel.cuh"
#include "launch.hpp"

#include <cstdint>
#include <cstring>
#include <string>

namespace {

// Copies `n` floats into a guarded buffer (inputs) or fills it with NaN (outputs).
struct Arg {
  simt::Buffer buffer;
  Arg(const float* src, size_t n, const char* name) : buffer(n * sizeof(float), name) {
    if (src) std::memcpy(buffer.data, src, n * sizeof(float));
  }
  float* ptr() { return reinterpret_cast<float*>(buffer.data); }
};

int report(const std::string& message, char* error, int error_size) {
  std::snprintf(error, static_cast<size_t>(error_size), "%s", message.c_str());
  return 1;
}

int finish(const std::string& launch_error, Arg& s, Arg& t, Arg& loss, Arg& grad, float* loss_out, float* grad_out,
           size_t n_loss, size_t n_grad, char* error, int error_size) {
  std::string message = launch_error;
  for (const Arg* arg : {&s, &t, &loss, &grad})
    if (message.empty() && !arg->buffer.canaries_intact()) message = "a write outside " + arg->buffer.name;
  if (!message.empty()) return report(message, error, error_size);
  std::memcpy(loss_out, loss.ptr(), n_loss * sizeof(float));
  std::memcpy(grad_out, grad.ptr(), n_grad * sizeof(float));
  return 0;
}

}  // namespace

extern "C" {

// student, teacher: [N, K, HW] float32, or with rows != 0 rows [N, K] (HW = 1: the layout of [N, K]
// and channels-last logits); loss_out: [N HW] (per position); grad_out: like student, the gradient of
// the loss reduced with `reduction` (0 none, 1 mean, 2 sum); guard: 0 buffers end at a guard page, 1
// start after one; weight, and *weight_value unless it is null (in a guarded one-float buffer, as the
// kernel reads it on a GPU): the factor of loss and gradient. The plan (kernel, block size, classes per
// load) is the CUDA launcher's, with stream_threads threads a streaming row (kl.cu's
// KDLAB_KL_STREAM_THREADS). Returns 0, or 1 with a message.
int kdlab_emulate_kl(const float* student, const float* teacher, float* loss_out, float* grad_out, int64_t N, int K,
                     int64_t HW, float temperature, int reverse, int reduction, int rows, float weight,
                     const float* weight_value, int stream_threads, int order, uint64_t seed, int guard, char* error,
                     int error_size) try {
  simt::set_guard(static_cast<simt::Guard>(guard));
  const size_t n = static_cast<size_t>(N * K * HW), positions = static_cast<size_t>(N * HW);
  Arg s(student, n, "student logits"), t(teacher, n, "teacher logits"), loss(nullptr, positions, "loss"),
      grad(nullptr, n, "gradient"), w(weight_value, 1, "weight tensor");
  const auto aligned = [](Arg& a) { return reinterpret_cast<uintptr_t>(a.ptr()) % 16 == 0; };
  const int vec = K % 4 == 0 && aligned(s) && aligned(t) && aligned(grad) ? 4 : 1;  // as kl.cu for float32
  const bool as_rows = rows != 0 || HW == 1;
  const kdlab::KlPlan plan =
      as_rows ? kdlab::kl_rows_plan(N * HW, K, vec, stream_threads) : kdlab::kl_columns_plan(N, K, HW);
  const kdlab::KlArgs args{as_rows ? N * HW : N, K, as_rows ? 1 : HW, plan.group, 1.f / temperature, temperature,
                           kdlab::kl_grad_scale(temperature, reduction, N * HW), weight,
                           weight_value ? w.ptr() : nullptr};
  const float* ps = s.ptr();
  const float* pt = t.ptr();
  float* pl = loss.ptr();
  float* pg = grad.ptr();
  std::string message;
  kdlab::kl_dispatch<float>(reverse != 0, as_rows, plan, [&](auto kernel, const kdlab::KlPlan& p) {
    message = simt::launch(static_cast<unsigned>(p.blocks), static_cast<unsigned>(p.threads), p.shared,
                           static_cast<simt::Order>(order), seed, [&] { kernel(ps, pt, pl, pg, args); });
  });
  return finish(message, s, t, loss, grad, loss_out, grad_out, positions, n, error, error_size);
} catch (const std::exception& e) {
  return report(std::string("emulator: ") + e.what(), error, error_size);
}

// fs: [N, Cs, HW], ft: [N, Ct, HW] float32; loss_out: [N]; grad_out: [N, Cs, HW] (of the reduced loss).
// The three launches of attention.cu, with the maps and per-sample statistics in guarded buffers.
int kdlab_emulate_attention(const float* fs, const float* ft, float* loss_out, float* grad_out, int64_t N, int Cs,
                            int Ct, int HW, float p, int reduction, float weight, const float* weight_value, int order,
                            uint64_t seed, int guard, char* error, int error_size) try {
  simt::set_guard(static_cast<simt::Guard>(guard));
  const size_t ns = static_cast<size_t>(N * Cs * HW), nt = static_cast<size_t>(N * Ct * HW);
  Arg s(fs, ns, "student features"), t(ft, nt, "teacher features"), loss(nullptr, static_cast<size_t>(N), "loss"),
      grad(nullptr, ns, "gradient"), maps(nullptr, static_cast<size_t>(2 * N * HW), "maps"),
      stats(nullptr, static_cast<size_t>(3 * N), "stats"), w(weight_value, 1, "weight tensor");
  const float* pw = weight_value ? w.ptr() : nullptr;
  const float gscale = kdlab::attention_grad_scale(reduction, N);
  const auto blocks = static_cast<unsigned>(kdlab::attention_blocks(N, HW));
  const auto threads = static_cast<unsigned>(kdlab::kAtWarps * 32);
  const float* ps = s.ptr();
  const float* pt = t.ptr();
  float *pl = loss.ptr(), *pg = grad.ptr(), *pm = maps.ptr(), *pst = stats.ptr();
  const auto o = static_cast<simt::Order>(order);
  std::string message = simt::launch(blocks, threads, 2 * threads * sizeof(float), o, seed, [&] {
    kdlab::attention_maps_kernel<float>(ps, pt, pm, N, Cs, Ct, HW, p);
  });
  if (message.empty())
    message = simt::launch(static_cast<unsigned>(N), static_cast<unsigned>(kdlab::attention_stats_threads(HW)),
                           32 * sizeof(float), o, seed, [&] { kdlab::attention_stats_kernel(pm, pl, pst, N, HW, weight, pw); });
  if (message.empty())
    message = simt::launch(blocks, threads, 0, o, seed, [&] {
      kdlab::attention_grad_kernel<float>(ps, pm, pst, pg, N, Cs, HW, p, gscale, weight, pw);
    });
  for (const Arg* arg : {&maps, &stats})
    if (message.empty() && !arg->buffer.canaries_intact()) message = "a write outside " + arg->buffer.name;
  return finish(message, s, t, loss, grad, loss_out, grad_out, static_cast<size_t>(N), ns, error, error_size);
} catch (const std::exception& e) {
  return report(std::string("emulator: ") + e.what(), error, error_size);
}

// The CUDA launcher's KL plan for logits [N, K, HW] (rows != 0: the class axis innermost), `vec` classes
// per load: out = {blocks, threads, shared bytes, threads per row, values per thread in registers
// (0: streaming), classes per load, one row per block, every columns thread holding `per` classes}.
void kdlab_kl_plan(int64_t N, int K, int64_t HW, int rows, int vec, int64_t* out) {
  const kdlab::KlPlan p = rows ? kdlab::kl_rows_plan(N * HW, K, vec) : kdlab::kl_columns_plan(N, K, HW);
  const int64_t values[] = {p.blocks, p.threads, static_cast<int64_t>(p.shared), p.group, p.per, p.vec, p.block_row, p.full};
  for (int i = 0; i < 8; ++i) out[i] = values[i];
}

}  // extern "C"
