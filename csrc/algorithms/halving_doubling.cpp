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

#include <algorithm>

#include "algorithm.h"
#include "fold.h"

namespace pyallreduce {

void halving_doubling_allreduce(const CollectiveContext& ctx, Vector vec) {
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

// The reduce-scatter collective by recursive halving: the halving above, cut
// on block boundaries so that each participant ends with the blocks of the
// ranks it stands for (fold.h), reduced. Virtual ranks [a, b) hold elements
// from block first_stood_for(a) to block first_stood_for(b), and each step
// splits its range of virtual ranks in two. Example p = 6 (p2 = 4, extra 2),
// blocks of m elements: virtual 0 stands for ranks 0-1, so for blocks 0-1;
// virtual 1 for blocks 2-3; 2 for block 4; 3 for block 5. Step mask=2 splits
// virtual [0, 4) into [0, 2) (blocks 0-3) and [2, 4) (blocks 4-5); mask=1
// leaves virtual 0 with blocks 0-1, of which rank 1 (its real rank) sends
// block 0 to rank 0, which sat out.
void halving_reduce_scatter_blocks(const CollectiveContext& ctx, Vector vec) {
  Transport& t = ctx.transport;
  const int p = t.size();
  const int rank = t.rank();
  const PowerOfTwoFold fold(p);
  const size_t m = vec.count / static_cast<size_t>(p);
  auto block_begin = [&](int real) { return static_cast<size_t>(real) * m; };
  auto first_element = [&](int v) { return block_begin(fold.first_stood_for(v)); };
  const bool paired = rank < 2 * fold.extra;
  if (paired && rank % 2 == 0) {
    // Sits out: hand the whole input to the odd partner, then receive this
    // rank's block, reduced and finalized.
    ctx.steps.enter("fold-in", 0, 1);
    t.isend(rank + 1, vec.input, vec.bytes(vec.count))->wait();
    ctx.steps.enter("fold-out", 0, 1);
    t.irecv(rank + 1, vec.at(block_begin(rank)), vec.bytes(m))->wait();
    return;
  }
  Vector current = vec;
  const int v = fold.virtual_rank(rank);
  // The most a step receives: the partner's whole vector in the fold, else
  // the larger side of the first split.
  const size_t first_mid = fold.p2 > 1 ? first_element(fold.p2 / 2) : 0;
  const size_t largest = paired ? vec.count : std::max(first_mid, vec.count - first_mid);
  void* incoming = ctx.memory.reserve(vec.bytes(largest));
  if (paired) {
    ctx.steps.enter("fold-in", 0, 1);
    t.irecv(rank - 1, incoming, vec.bytes(vec.count))->wait();
    ctx.reduction.combine(incoming, current.input, current.data, current.count);  // lower rank on the left
    current = current.in_place();
  }
  int lo = 0, hi = fold.p2;  // the virtual ranks whose blocks this rank holds partial sums of
  size_t step = 0;
  for (int mask = fold.p2 / 2; mask >= 1; mask >>= 1) {
    const int mid = lo + mask;
    const bool keep_lower = (v & mask) == 0;
    const size_t keep_lo = first_element(keep_lower ? lo : mid), keep_hi = first_element(keep_lower ? mid : hi);
    const size_t give_lo = first_element(keep_lower ? mid : lo), give_hi = first_element(keep_lower ? hi : mid);
    ctx.steps.enter("reduce-scatter", step++, fold.lg_p2);
    exchange(t, fold.real_rank(v ^ mask), current.input_at(give_lo), current.bytes(give_hi - give_lo), incoming,
             current.bytes(keep_hi - keep_lo));
    if (keep_lower) {
      ctx.reduction.combine(current.input_at(keep_lo), incoming, current.at(keep_lo), keep_hi - keep_lo);
    } else {
      ctx.reduction.combine(incoming, current.input_at(keep_lo), current.at(keep_lo), keep_hi - keep_lo);
    }
    current = current.in_place();
    if (keep_lower) hi = mid; else lo = mid;
  }
  // Now lo = v: this rank holds the blocks of the real ranks v stands for.
  const size_t mine_lo = first_element(v), mine_hi = first_element(v + 1);
  if (fold.p2 == 1) current.take_input(ctx.memory);  // one rank: nothing was combined
  ctx.reduction.finalize(current.at(mine_lo), mine_hi - mine_lo, p);
  if (paired) {
    ctx.steps.enter("fold-out", 0, 1);
    t.isend(rank - 1, current.at(block_begin(rank - 1)), vec.bytes(m))->wait();
  }
}

}  // namespace pyallreduce
