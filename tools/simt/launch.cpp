// kdlab's kernels under the SIMT emulator: C entry points (called through ctypes from
// kdlab/kernels/emulate.py) that launch the very kernel templates the CUDA build uses, with the
// same launch configuration, on float32 buffers guarded against out-of-bounds accesses.
#define KDLAB_SIMT_EMULATOR 1
#include "attention_kernel.cuh"  // kdlab/kernels/, on the include path
#include "kl_kernel.cuh"
#include "launch.hpp"

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

// student, teacher: [N, K, HW] float32; loss_out: [N HW] (per position); grad_out: [N, K, HW], the
// gradient of the loss reduced with `reduction` (0 none, 1 mean, 2 sum); tile: positions per block
// as KDLAB_KL_TILE sets them (0: the default); guard: 0 buffers end at a guard page, 1 start after one.
// Returns 0, or 1 with a message.
int kdlab_emulate_kl(const float* student, const float* teacher, float* loss_out, float* grad_out, int64_t N, int K,
                     int64_t HW, float temperature, int reverse, int reduction, int tile, int order, uint64_t seed,
                     int guard, char* error, int error_size) try {
  simt::set_guard(static_cast<simt::Guard>(guard));
  const size_t n = static_cast<size_t>(N * K * HW), positions = static_cast<size_t>(N * HW);
  Arg s(student, n, "student logits"), t(teacher, n, "teacher logits"), loss(nullptr, positions, "loss"),
      grad(nullptr, n, "gradient");
  const kdlab::KlLaunch cfg = kdlab::kl_launch_config(N, K, HW, tile);
  const float inv_temp = 1.f / temperature, gtemp = kdlab::kl_grad_scale(temperature, reduction, N * HW);
  const float* ps = s.ptr();
  const float* pt = t.ptr();
  float* pl = loss.ptr();
  float* pg = grad.ptr();
  std::string message;
  kdlab::kl_dispatch<float>(reverse != 0, HW, K, [&](auto kernel) {
    message = simt::launch(static_cast<unsigned>(cfg.blocks), kdlab::kThreads, cfg.shared, static_cast<simt::Order>(order),
                           seed, [&] { kernel(ps, pt, pl, pg, N, K, HW, cfg.tile, inv_temp, temperature, gtemp); });
  });
  return finish(message, s, t, loss, grad, loss_out, grad_out, positions, n, error, error_size);
} catch (const std::exception& e) {
  return report(std::string("emulator: ") + e.what(), error, error_size);
}

// fs: [N, Cs, HW], ft: [N, Ct, HW] float32; loss_out: [N]; grad_out: [N, Cs, HW] (of the reduced loss).
int kdlab_emulate_attention(const float* fs, const float* ft, float* loss_out, float* grad_out, int64_t N, int Cs,
                            int Ct, int HW, float p, int reduction, int order, uint64_t seed, int guard,
                            char* error, int error_size) try {
  simt::set_guard(static_cast<simt::Guard>(guard));
  const size_t ns = static_cast<size_t>(N * Cs * HW), nt = static_cast<size_t>(N * Ct * HW);
  Arg s(fs, ns, "student features"), t(ft, nt, "teacher features"), loss(nullptr, static_cast<size_t>(N), "loss"),
      grad(nullptr, ns, "gradient");
  const kdlab::AtLaunch cfg = kdlab::attention_launch_config(HW);
  const float gscale = kdlab::attention_grad_scale(reduction, N);
  const float* ps = s.ptr();
  const float* pt = t.ptr();
  float* pl = loss.ptr();
  float* pg = grad.ptr();
  const std::string message = simt::launch(
      static_cast<unsigned>(N), static_cast<unsigned>(cfg.threads), cfg.shared, static_cast<simt::Order>(order), seed,
      [&] { kdlab::attention_fused_kernel<float>(ps, pt, pl, pg, Cs, Ct, HW, p, gscale); });
  return finish(message, s, t, loss, grad, loss_out, grad_out, static_cast<size_t>(N), ns, error, error_size);
} catch (const std::exception& e) {
  return report(std::string("emulator: ") + e.what(), error, error_size);
}

// kl_launch_config as the CUDA launcher calls it (tile: KDLAB_KL_TILE, 0 for the default): the tile in
// positions per block and the dynamic shared memory in bytes.
void kdlab_kl_launch_config(int64_t N, int K, int64_t HW, int tile, int* tile_out, int64_t* shared_out) {
  const kdlab::KlLaunch cfg = kdlab::kl_launch_config(N, K, HW, tile);
  *tile_out = cfg.tile;
  *shared_out = static_cast<int64_t>(cfg.shared);
}

// The kernels' shape limits for `max_shared` bytes of shared memory per block, as the CUDA launchers
// compute them: the largest K of kl_fused and the largest H W of attention_fused.
void kdlab_kernel_limits(int max_shared, int64_t* max_classes, int* max_positions) {
  *max_classes = kdlab::kl_max_classes(max_shared);
  *max_positions = kdlab::attention_max_positions(max_shared);
}

}  // extern "C"
