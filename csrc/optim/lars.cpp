#include "lars.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <utility>

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

// The norms are summed over fixed blocks of each tensor, and the block sums
// added in block order, so that the trust ratio (and with it every bit of the
// step) is the same whatever the thread count and the tile size: ranks that
// run with different thread counts still update their replicas alike.
// Example: a tensor of 20,000 elements has the blocks [0, 8192), [8192,
// 16384) and [16384, 20000), each summed alone (sum_squares), then the three
// sums added left to right.
constexpr size_t kNormBlockElements = size_t{1} << 13;

struct Block {
  size_t tensor;
  size_t begin, end;  // elements of the tensor
  size_t start;       // where it starts among all the step's elements, tensors laid end to end
};

// Every tensor's blocks in order; first_block[t] is tensor t's first (and
// first_block[t + 1] one past its last). A tensor of 0 elements has none.
std::vector<Block> make_blocks(const std::vector<size_t>& counts, std::vector<size_t>& first_block) {
  std::vector<Block> blocks;
  first_block.assign(counts.size() + 1, 0);
  size_t start = 0;
  for (size_t t = 0; t < counts.size(); ++t) {
    first_block[t] = blocks.size();
    for (size_t begin = 0; begin < counts[t]; begin += kNormBlockElements) {
      blocks.push_back({t, begin, std::min(counts[t], begin + kNormBlockElements), start + begin});
    }
    start += counts[t];
  }
  first_block[counts.size()] = blocks.size();
  return blocks;
}

// A run of consecutive tensors whose parameters, gradients and momentum
// buffers fit in `tile_bytes` together: the norm phase reads them into the
// cache and the update phase finds them there, so the tile crosses memory
// once. Its blocks are [first_block, end_block), its elements [start, end).
struct Tile {
  size_t first_block, end_block;
  size_t start, end;
};

std::vector<Tile> make_tiles(const std::vector<size_t>& counts, const std::vector<size_t>& first_block,
                             size_t bytes_per_element, size_t tile_bytes) {
  std::vector<Tile> tiles;
  size_t start = 0;
  for (size_t t = 0; t < counts.size(); ++t) {
    const bool fits =
        !tiles.empty() && (tiles.back().end - tiles.back().start + counts[t]) * bytes_per_element <= tile_bytes;
    if (!fits) tiles.push_back({first_block[t], first_block[t], start, start});
    tiles.back().end_block = first_block[t + 1];
    tiles.back().end += counts[t];
    start += counts[t];
  }
  return tiles;
}

// The blocks of `tile` that thread `thread` of `threads` works on: those
// that start in its even share of the tile's elements. Example: tensors of
// 10,000 and 6,000 elements in one tile, 2 threads: the shares are [0, 8000)
// and [8000, 16000); the blocks start at 0, 8192 (tensor 0) and 10000
// (tensor 1), so thread 0 takes the first block and thread 1 the other two.
std::pair<size_t, size_t> blocks_of_thread(const Tile& tile, const std::vector<Block>& blocks, int thread,
                                           int threads) {
  auto first_at_or_after = [&](size_t element) {
    return static_cast<size_t>(
        std::lower_bound(blocks.begin() + static_cast<std::ptrdiff_t>(tile.first_block),
                         blocks.begin() + static_cast<std::ptrdiff_t>(tile.end_block), element,
                         [](const Block& block, size_t at) { return block.start < at; }) -
        blocks.begin());
  };
  const size_t elements = tile.end - tile.start;
  return {first_at_or_after(tile.start + elements * thread / threads),
          first_at_or_after(tile.start + elements * (thread + 1) / threads)};
}

// Four doubles that GCC keeps in one AVX2 register, or two SSE2 ones in the
// baseline clone: the same four additions either way.
typedef double Doubles4 __attribute__((vector_size(32)));

// Adds the squares of x[0, 4) to `sums`. (Inlined into each clone: taking
// and giving vectors by value would need AVX in the baseline's calling
// convention.)
template <class T>
inline void add_squares(const T* x, Doubles4& sums) {
  const Doubles4 v = {static_cast<double>(x[0]), static_cast<double>(x[1]), static_cast<double>(x[2]),
                      static_cast<double>(x[3])};
  sums += v * v;
}

// Sums of squares in sixteen lanes: element i of a run in lane i mod 16
// (lanes 0-3 in sums[0], 4-7 in sums[1], and so on), the lanes then added in
// a fixed order, so the same bits whichever clone runs and wherever the data
// starts. Four sums in flight, so that a loop does not wait on the latency of
// its additions. Example, 37 elements: 0-15 and 16-31 go through
// add_squares_16, 32-36 are the tail, added to lanes 0-4 (total_squares).
constexpr size_t kSquareLanes = 16;
typedef Doubles4 SquareSums[kSquareLanes / 4];

template <class T>
inline void add_squares_16(const T* x, SquareSums& sums) {
  for (size_t k = 0; k < kSquareLanes / 4; ++k) add_squares(x + 4 * k, sums[k]);
}

// The total of `sums` and of the squares of tail[0, n), n < 16.
template <class T>
inline double total_squares(const SquareSums& sums, const T* tail, size_t n) {
  double lane[kSquareLanes];
  for (size_t k = 0; k < kSquareLanes; ++k) lane[k] = sums[k / 4][k % 4];
  for (size_t k = 0; k < n; ++k) {
    const double x = tail[k];
    lane[k] += x * x;
  }
  // A balanced tree: (((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))) + (the same over 8-15).
  for (size_t width = 1; width < kSquareLanes; width *= 2) {
    for (size_t k = 0; k < kSquareLanes; k += 2 * width) lane[k] += lane[k + width];
  }
  return lane[0];
}

// The sum of squares of x[0, n).
template <class T>
VECTOR_CLONES double sum_squares(const T* x, size_t n) {
  SquareSums sums = {};
  size_t i = 0;
  for (; i + kSquareLanes <= n; i += kSquareLanes) add_squares_16(x + i, sums);
  return total_squares(sums, x + i, n - i);
}

// Sets w[i] = new_w(i) for i in [0, n) (new_w may also write the momentum).
// With `sum`, also returns the sum of squares of the new w, bit for bit what
// sum_squares would return for it: summed as it is written, 16 elements at a
// time, the squares need no second pass, and their arithmetic overlaps the
// wait for memory. (The new values go through `fresh` so that GCC vectorizes
// both loops.)
template <class T, class NewW>
inline double write_weights(T* w, size_t n, bool sum, const NewW& new_w) {
  if (!sum) {
#pragma omp simd
    for (size_t i = 0; i < n; ++i) w[i] = new_w(i);
    return 0.0;
  }
  SquareSums sums = {};
  size_t i = 0;
  for (; i + kSquareLanes <= n; i += kSquareLanes) {
    T fresh[kSquareLanes];
#pragma omp simd
    for (size_t k = 0; k < kSquareLanes; ++k) fresh[k] = new_w(i + k);
#pragma omp simd
    for (size_t k = 0; k < kSquareLanes; ++k) w[i + k] = fresh[k];
    add_squares_16(fresh, sums);
  }
  for (size_t k = i; k < n; ++k) w[k] = new_w(k);
  return total_squares(sums, w + i, n - i);
}

// The update of x's elements [begin, end). Returns the sum of squares of
// their new weights where x adapts (the next step's known_w_squares), else 0.
template <class T>
VECTOR_CLONES double update(const LarsTensor<T>& x, const LarsHyperparameters& hyper, double trust_ratio,
                            size_t begin, size_t end) {
  const T scale = static_cast<T>(hyper.lr * trust_ratio);
  const T decay = x.adapt ? static_cast<T>(hyper.weight_decay) : T(0);
  T* w = x.param + begin;
  const T* g = x.grad + begin;
  T* v = x.momentum_buffer == nullptr ? nullptr : x.momentum_buffer + begin;
  const size_t n = end - begin;
  if (v == nullptr) {
    return write_weights(w, n, x.adapt, [&](size_t i) { return w[i] - scale * (g[i] + decay * w[i]); });
  }
  const T carried = static_cast<T>(hyper.momentum * x.momentum_correction);
  const T momentum = static_cast<T>(hyper.momentum);
  if (hyper.nesterov) {
    return write_weights(w, n, x.adapt, [&](size_t i) {
      const T d = scale * (g[i] + decay * w[i]);
      const T vi = carried * v[i] + d;
      v[i] = vi;
      return w[i] - (momentum * vi + d);
    });
  }
  return write_weights(w, n, x.adapt, [&](size_t i) {
    const T vi = carried * v[i] + scale * (g[i] + decay * w[i]);
    v[i] = vi;
    return w[i] - vi;
  });
}

// Below this many elements per thread, more threads cost more than they save.
constexpr size_t kMinElementsPerThread = size_t{1} << 16;

}  // namespace

template <class T>
std::vector<double> lars_step(const std::vector<LarsTensor<T>>& tensors, const LarsHyperparameters& hyper,
                              int threads, size_t tile_bytes) {
  if (threads < 1) throw InvalidArgument("threads must be at least 1");
  std::vector<size_t> counts(tensors.size());
  size_t total = 0;
  for (size_t t = 0; t < tensors.size(); ++t) total += counts[t] = tensors[t].count;
  const int workers = static_cast<int>(std::clamp<size_t>(total / kMinElementsPerThread, 1, threads));

  std::vector<size_t> first_block;
  const std::vector<Block> blocks = make_blocks(counts, first_block);
  const bool has_momentum = !tensors.empty() && tensors.front().momentum_buffer != nullptr;
  const size_t bytes_per_element = sizeof(T) * (has_momentum ? 3 : 2);
  // Unless told otherwise, tiles as large as the last-level cache, which the
  // machine reports: each tile is read twice, for its norms and then for the
  // update, and the second read finds it in the cache only if it fits. A
  // tensor larger than a tile is a tile of its own, read from memory both
  // times, and smaller tiles make more of those; larger tiles spill.
  // bench/RESULTS.md ("Fused LARS step", and the tile sweep of 2026-12-03)
  // has tile sizes timed.
  const std::vector<Tile> tiles =
      make_tiles(counts, first_block, bytes_per_element, tile_bytes > 0 ? tile_bytes : last_level_cache_bytes());

  // By block: the sums of squares of w and g that this step's ratios come
  // from, and of w as this step leaves it. A tensor's sum is its blocks'
  // added in block order (sum_of_blocks), the same as the next step's when
  // it is handed on.
  std::vector<double> w_squares(blocks.size(), 0.0), g_squares(blocks.size(), 0.0), next_w_squares(blocks.size());
  auto sum_of_blocks = [&](const std::vector<double>& by_block, size_t t) {
    double sum = 0.0;
    for (size_t b = first_block[t]; b < first_block[t + 1]; ++b) sum += by_block[b];
    return sum;
  };
  auto known = [&](size_t t) { return !std::isnan(tensors[t].known_w_squares); };
  auto ratio_of = [&](size_t t) {
    if (!tensors[t].adapt) return 1.0;
    return trust_ratio(hyper, known(t) ? tensors[t].known_w_squares : sum_of_blocks(w_squares, t),
                       sum_of_blocks(g_squares, t));
  };
  SpinBarrier norms_done(workers);

  auto work = [&](int thread) {
    for (const Tile& tile : tiles) {
      const auto [first, end] = blocks_of_thread(tile, blocks, thread, workers);
      for (size_t b = first; b < end; ++b) {
        const Block& block = blocks[b];
        const LarsTensor<T>& x = tensors[block.tensor];
        if (!x.adapt) continue;
        if (!known(block.tensor)) w_squares[b] = sum_squares(x.param + block.begin, block.end - block.begin);
        g_squares[b] = sum_squares(x.grad + block.begin, block.end - block.begin);
      }
      norms_done.arrive_and_wait();
      // Block by block: each block's new w is summed as it is written.
      for (size_t b = first; b < end;) {
        const size_t t = blocks[b].tensor;
        const size_t tensor_end = std::min(end, first_block[t + 1]);  // past this thread's last block of t
        const double ratio = ratio_of(t);
        for (; b < tensor_end; ++b) {
          next_w_squares[b] = update(tensors[t], hyper, ratio, blocks[b].begin, blocks[b].end);
        }
      }
      // No barrier here: the next tile's norms go to other blocks' slots,
      // and its elements are disjoint from this tile's.
    }
  };

  std::vector<std::thread> helpers;
  helpers.reserve(workers - 1);
  for (int thread = 1; thread < workers; ++thread) helpers.emplace_back(work, thread);
  work(0);
  for (std::thread& helper : helpers) helper.join();
  std::vector<double> next(tensors.size(), std::nan(""));
  for (size_t t = 0; t < tensors.size(); ++t) {
    if (tensors[t].adapt) next[t] = sum_of_blocks(next_w_squares, t);
  }
  return next;
}

template std::vector<double> lars_step<float>(const std::vector<LarsTensor<float>>&, const LarsHyperparameters&,
                                              int, size_t);
template std::vector<double> lars_step<double>(const std::vector<LarsTensor<double>>&, const LarsHyperparameters&,
                                               int, size_t);

}  // namespace pyallreduce
