#include "lars.h"

#include <algorithm>
#include <atomic>
#include <thread>

#include "../reduce/reduction.h"
#include "../types.h"

// The two element loops are compiled twice on x86-64, for AVX2 and for the
// baseline, and the loader picks one for the CPU it finds (GCC's function
// multiversioning): the build stays portable, and AVX2 machines get 8-wide
// loops (bench/RESULTS.md, "Fused LARS step", has what that gained). No FMA,
// so every machine rounds the same way.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

namespace pyallreduce {

namespace {

// Threads meet here between the norm phase and the update phase of a tile.
// Spins briefly, then yields: the step's threads may share cores with others.
class SpinBarrier {
 public:
  explicit SpinBarrier(int parties) : parties_(parties) {}
  void arrive_and_wait() {
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == parties_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins > 64) std::this_thread::yield();
    }
  }

 private:
  const int parties_;
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
};

// A run of consecutive tensors whose parameters, gradients and momentum
// buffers fit in the cache together: the norm phase reads them into it and
// the update phase finds them there, so the tile crosses memory once.
struct Tile {
  size_t first_tensor;
  size_t end_tensor;
  size_t elements;
};

std::vector<Tile> make_tiles(const std::vector<size_t>& counts, size_t bytes_per_element, size_t tile_bytes) {
  std::vector<Tile> tiles;
  for (size_t t = 0; t < counts.size(); ++t) {
    const bool fits = !tiles.empty() && (tiles.back().elements + counts[t]) * bytes_per_element <= tile_bytes;
    if (!fits) tiles.push_back({t, t, 0});
    tiles.back().end_tensor = t + 1;
    tiles.back().elements += counts[t];
  }
  return tiles;
}

// The elements of a tile split evenly over `threads`, as ranges of the tile's
// tensors laid end to end. Example: tensors of 10 and 6 elements, 2 threads:
// thread 0 gets [0, 8) (elements 0-7 of tensor 0), thread 1 gets [8, 16)
// (elements 8-9 of tensor 0, then 0-5 of tensor 1). `visit(tensor, begin,
// end)` is called for each piece of thread `thread`'s share.
template <class Visit>
void for_each_piece(const Tile& tile, const std::vector<size_t>& counts, int thread, int threads, Visit visit) {
  const size_t share_begin = tile.elements * thread / threads;
  const size_t share_end = tile.elements * (thread + 1) / threads;
  size_t tensor_start = 0;  // offset of tensor t within the tile
  for (size_t t = tile.first_tensor; t < tile.end_tensor && tensor_start < share_end; ++t) {
    const size_t tensor_end = tensor_start + counts[t];
    const size_t begin = std::max(share_begin, tensor_start);
    const size_t end = std::min(share_end, tensor_end);
    if (begin < end) visit(t, begin - tensor_start, end - tensor_start);
    tensor_start = tensor_end;
  }
}

template <class T>
VECTOR_CLONES void accumulate_squares(const T* w, const T* g, size_t begin, size_t end, double& w_squares,
                                      double& g_squares) {
  double w_sum = 0.0, g_sum = 0.0;
#pragma omp simd reduction(+ : w_sum, g_sum)
  for (size_t i = begin; i < end; ++i) {
    const double wi = w[i], gi = g[i];
    w_sum += wi * wi;
    g_sum += gi * gi;
  }
  w_squares += w_sum;
  g_squares += g_sum;
}

template <class T>
VECTOR_CLONES void update(const LarsTensor<T>& x, const LarsHyperparameters& hyper, double trust_ratio, size_t begin,
                          size_t end) {
  const T scale = static_cast<T>(hyper.lr * trust_ratio);
  const T decay = x.adapt ? static_cast<T>(hyper.weight_decay) : T(0);
  T* w = x.param;
  const T* g = x.grad;
  T* v = x.momentum_buffer;
  if (v == nullptr) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) w[i] -= scale * (g[i] + decay * w[i]);
    return;
  }
  const T carried = static_cast<T>(hyper.momentum * x.momentum_correction);
  const T momentum = static_cast<T>(hyper.momentum);
  if (hyper.nesterov) {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) {
      const T d = scale * (g[i] + decay * w[i]);
      const T vi = carried * v[i] + d;
      v[i] = vi;
      w[i] -= momentum * vi + d;
    }
  } else {
#pragma omp simd
    for (size_t i = begin; i < end; ++i) {
      const T vi = carried * v[i] + scale * (g[i] + decay * w[i]);
      v[i] = vi;
      w[i] -= vi;
    }
  }
}

// Below this many elements per thread, more threads cost more than they save.
constexpr size_t kMinElementsPerThread = size_t{1} << 16;

}  // namespace

template <class T>
void lars_step(const std::vector<LarsTensor<T>>& tensors, const LarsHyperparameters& hyper, int threads) {
  if (threads < 1) throw InvalidArgument("threads must be at least 1");
  std::vector<size_t> counts(tensors.size());
  size_t total = 0;
  for (size_t t = 0; t < tensors.size(); ++t) total += counts[t] = tensors[t].count;
  const int workers = static_cast<int>(std::clamp<size_t>(total / kMinElementsPerThread, 1, threads));

  // Tiles as large as the last-level cache, which the machine reports: each
  // tile is read twice, for its norms and then for the update, and the second
  // read finds it in the cache only if it fits. A tensor larger than a tile
  // is a tile of its own, read from memory both times, and smaller tiles make
  // more of those; larger tiles spill. bench/RESULTS.md ("Fused LARS step")
  // has tiles of half, one and two caches timed.
  const bool has_momentum = !tensors.empty() && tensors.front().momentum_buffer != nullptr;
  const size_t bytes_per_element = sizeof(T) * (has_momentum ? 3 : 2);
  const std::vector<Tile> tiles = make_tiles(counts, bytes_per_element, last_level_cache_bytes());

  // Each thread's partial sums of squares per tensor, [tensor][thread]:
  // summed in thread order, so every thread derives the same trust ratio.
  std::vector<double> w_squares(tensors.size() * workers, 0.0), g_squares(tensors.size() * workers, 0.0);
  SpinBarrier norms_done(workers);

  auto work = [&](int thread) {
    for (const Tile& tile : tiles) {
      for_each_piece(tile, counts, thread, workers, [&](size_t t, size_t begin, size_t end) {
        if (tensors[t].adapt) {
          accumulate_squares(tensors[t].param, tensors[t].grad, begin, end, w_squares[t * workers + thread],
                             g_squares[t * workers + thread]);
        }
      });
      norms_done.arrive_and_wait();
      for_each_piece(tile, counts, thread, workers, [&](size_t t, size_t begin, size_t end) {
        double ratio = 1.0;
        if (tensors[t].adapt) {
          double w_sum = 0.0, g_sum = 0.0;
          for (int k = 0; k < workers; ++k) {
            w_sum += w_squares[t * workers + k];
            g_sum += g_squares[t * workers + k];
          }
          ratio = trust_ratio(hyper, w_sum, g_sum);
        }
        update(tensors[t], hyper, ratio, begin, end);
      });
      // No barrier here: the next tile's norms go to other tensors' slots,
      // and its elements are disjoint from this tile's.
    }
  };

  std::vector<std::thread> helpers;
  helpers.reserve(workers - 1);
  for (int thread = 1; thread < workers; ++thread) helpers.emplace_back(work, thread);
  work(0);
  for (std::thread& helper : helpers) helper.join();
}

template void lars_step<float>(const std::vector<LarsTensor<float>>&, const LarsHyperparameters&, int);
template void lars_step<double>(const std::vector<LarsTensor<double>>&, const LarsHyperparameters&, int);

}  // namespace pyallreduce
