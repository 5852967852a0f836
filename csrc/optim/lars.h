// The fused LARS step on the CPU (You, Gitman and Ginsburg 2017, Algorithm 1):
// every tensor of a parameter group updated in one call, the per-tensor norms
// and the update in one pass over memory for tensors that fit in the cache
// together (for larger ones a second read of the gradient, and of the weights
// unless the previous step handed their norm on), the work split across
// threads.
#pragma once

#include <math.h>

#include <cstddef>
#include <vector>

#include "../host_device.h"

namespace pyallreduce {

// One parameter tensor, its gradient and its momentum buffer (null when
// momentum is 0), all `count` contiguous elements of T (float or double).
template <class T>
struct LarsTensor {
  T* param;
  const T* grad;
  T* momentum_buffer;
  size_t count;
  // false: skip the trust ratio and weight decay (biases, BatchNorm).
  bool adapt;
  // lr / (the lr the buffer was last updated with): Goyal et al.'s momentum
  // correction when the learning rate changes; 1 otherwise.
  double momentum_correction;
  // The sum of squares of `param` as the previous step left it (what that
  // step returned for it), if nothing has written `param` since; NaN when
  // unknown. Known, the step reads only the gradient for the norms.
  double known_w_squares;
};

struct LarsHyperparameters {
  double lr;
  double momentum;
  double weight_decay;
  double trust_coefficient;
  double eps;
  bool nesterov;
  bool trust_clip;  // LARC's clip mode: the rate is min(trust ratio, lr)
};

// trust_ratio is compiled for the host and, in the CUDA step (csrc/cuda/lars.cu), the device.
// trust_coefficient * |w| / (|g| + weight_decay * |w| + eps) from the sums of
// squares of w and g: 1 where either norm is 0. With trust_clip, LARC's clip:
// min(ratio / lr, 1), so that the rate lr * result is min(ratio, lr). Example:
// lr 0.5 and ratio 0.2 give 0.4 (a rate of 0.2); ratio 2 gives 1 (a rate of 0.5).
PYALLREDUCE_HOST_DEVICE inline double trust_ratio(const LarsHyperparameters& hyper, double w_squares,
                                                  double g_squares) {
  const double w_norm = sqrt(w_squares), g_norm = sqrt(g_squares);
  if (w_norm == 0.0 || g_norm == 0.0) return 1.0;
  const double ratio = hyper.trust_coefficient * w_norm / (g_norm + hyper.weight_decay * w_norm + hyper.eps);
  if (!hyper.trust_clip || hyper.lr <= 0.0) return ratio;  // at lr 0 the step is 0 either way
  return ratio < hyper.lr ? ratio / hyper.lr : 1.0;
}

// For each tensor, with w = param, g = grad, v = momentum_buffer:
//   ratio = trust_coefficient * |w| / (|g| + weight_decay * |w| + eps)
//           (1 where |w| or |g| is 0, or the tensor does not adapt;
//            min(ratio / lr, 1) with trust_clip, see trust_ratio)
//   d = lr * ratio * (g + weight_decay * w)      (d = lr * g without adapt)
//   v = momentum * momentum_correction * v + d
//   w -= v   (nesterov: w -= momentum * v + d; without momentum: w -= d)
// Norms are accumulated in double. `threads` >= 1 split the work, in tiles
// of `tile_bytes` (0: the last-level cache); every bit of the result is the same
// whatever the thread count and the tile size, and whether |w|^2 was known.
// Returns, for each adapted tensor, the sum of squares of its updated
// parameters, summed as the next step would sum them (NaN for the others):
// passed back as known_w_squares, it spares that step a read of w.
template <class T>
std::vector<double> lars_step(const std::vector<LarsTensor<T>>& tensors, const LarsHyperparameters& hyper,
                              int threads, size_t tile_bytes = 0);

}  // namespace pyallreduce
