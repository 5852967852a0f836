// Rabenseifner's allreduce: a reduce-scatter by recursive vector halving, then
// an allgather by recursive doubling that retraces the halving in reverse.
// Each rank sends and receives about 2n(p2-1)/p2 bytes in 2 lg p2 messages.
//
// Reduce-scatter, worked for p2 = 4 and a vector of 10 elements [0,10):
//   mask=2: ranks with bit 2 clear (0,1) keep the lower half [0,5) and send
//           [5,10) to their partner (2,3), which keeps [5,10). Both combine.
//   mask=1: the range is halved again: rank 0 keeps [0,2) and rank 1 [2,5);
//           rank 2 keeps [5,7) and rank 3 [7,10).
// Virtual rank v ends owning block v in natural order (its bits chose lower or
// upper half from the top bit down), fully reduced, and finalizes it once.
// The allgather walks the same levels back up (mask=1, then 2): at each level
// a rank sends the half it holds and receives its partner's other half.
// Odd lengths split with the smaller half below (mid = lo + len/2), and any
// length works, including fewer elements than ranks (some blocks are empty).
#include <utility>
#include <vector>

#include "algorithm.h"
#include "fold.h"

namespace pyallreduce {

void halving_doubling_allreduce(const AllreduceContext& ctx, Vector vec) {
  run_folded(ctx, vec, [&](int v, const PowerOfTwoFold& fold, Vector current) {
    Transport& t = ctx.transport;
    // The largest half received is the upper half of the whole vector.
    void* incoming = ctx.memory.reserve(current.bytes(current.count - current.count / 2));
    size_t lo = 0, hi = current.count;
    std::vector<std::pair<size_t, size_t>> levels;  // the range split at each halving step

    for (int mask = fold.p2 / 2; mask >= 1; mask >>= 1) {
      const size_t mid = lo + (hi - lo) / 2;
      const bool keep_lower = (v & mask) == 0;
      const size_t keep_lo = keep_lower ? lo : mid, keep_hi = keep_lower ? mid : hi;
      const size_t give_lo = keep_lower ? mid : lo, give_hi = keep_lower ? hi : mid;
      ctx.steps.enter("reduce-scatter", levels.size(), fold.lg_p2);
      exchange(t, fold.real_rank(v ^ mask), current.input_at(give_lo), current.bytes(give_hi - give_lo), incoming,
               current.bytes(keep_hi - keep_lo));
      const char* mine = current.input_at(keep_lo);
      char* kept = current.at(keep_lo);
      if (keep_lower) {  // this rank is the lower one of the pair: its data goes on the left
        ctx.reduction.combine(mine, incoming, kept, keep_hi - keep_lo);
      } else {
        ctx.reduction.combine(incoming, mine, kept, keep_hi - keep_lo);
      }
      // The half given away is never read from the input again; it arrives
      // final in the allgather.
      current = current.in_place();
      levels.emplace_back(lo, hi);
      lo = keep_lo;
      hi = keep_hi;
    }

    current.take_input(ctx.memory);  // only when there was no step: one participant
    ctx.reduction.finalize(current.at(lo), hi - lo, t.size());

    for (int mask = 1; mask < fold.p2; mask <<= 1) {
      const auto [level_lo, level_hi] = levels.back();
      levels.pop_back();
      // This rank holds [lo, hi), one half of [level_lo, level_hi); the partner
      // holds the other half.
      const bool holds_lower = (v & mask) == 0;
      const size_t other_lo = holds_lower ? hi : level_lo;
      const size_t other_hi = holds_lower ? level_hi : lo;
      ctx.steps.enter("allgather", fold.lg_p2 - 1 - levels.size(), fold.lg_p2);
      exchange(t, fold.real_rank(v ^ mask), current.at(lo), current.bytes(hi - lo), current.at(other_lo),
               current.bytes(other_hi - other_lo));
      lo = level_lo;
      hi = level_hi;
    }
  });
}

}  // namespace pyallreduce
