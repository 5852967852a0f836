// Recursive doubling: lg p steps, each exchanging the whole vector with the
// partner whose virtual rank differs in one bit, and combining. Every rank
// ends with the full result; cheapest in messages, costliest in bytes, so it
// suits small, latency-bound vectors.
//
// Example p2 = 4: step mask=1 pairs (0,1) and (2,3); step mask=2 pairs (0,2)
// and (1,3). After step 1 ranks 0 and 1 both hold x0+x1; after step 2 every
// rank holds (x0+x1)+(x2+x3), combined with the lower ranks' part on the left
// so that every rank computes the same bits.
#include "algorithm.h"
#include "fold.h"

namespace pyallreduce {

void recursive_doubling_allreduce(const CollectiveContext& ctx, Vector vec) {
  run_folded(ctx, vec, [&](int v, const PowerOfTwoFold& fold, Vector current) {
    const size_t bytes = current.bytes(current.count);
    void* incoming = ctx.memory.reserve(bytes);
    size_t step = 0;
    for (int mask = 1; mask < fold.p2; mask <<= 1) {
      const int partner = v ^ mask;
      ctx.steps.enter("exchange", step++, fold.lg_p2);
      exchange(ctx.transport, fold.real_rank(partner), current.input, bytes, incoming, bytes);
      if (partner < v) {
        ctx.reduction.combine(incoming, current.input, current.data, current.count);
      } else {
        ctx.reduction.combine(current.input, incoming, current.data, current.count);
      }
      current = current.in_place();
    }
    current.take_input(ctx.memory);  // only when there was no step: one participant
    ctx.reduction.finalize(current.data, current.count, ctx.transport.size());
  });
}

// The allgather collective by recursive doubling: before the step across bit
// `mask`, virtual rank v holds the blocks of virtual ranks [base, base +
// mask), base = v with its bits below mask cleared, and exchanges them for
// its partner's; on any world size through the fold, on block boundaries
// (fold.h's first_stood_for). Example p = 3 (p2 = 2, extra 1): rank 0 sits
// out and hands block 0 to rank 1, so virtual 0 (rank 1) holds blocks 0-1
// and virtual 1 (rank 2) block 2; they swap them, and rank 1 sends all three
// blocks to rank 0.
void recursive_doubling_allgather_blocks(const CollectiveContext& ctx, Vector vec) {
  Transport& t = ctx.transport;
  const int p = t.size();
  const int rank = t.rank();
  const PowerOfTwoFold fold(p);
  const size_t m = vec.count / static_cast<size_t>(p);
  auto first_element = [&](int v) { return static_cast<size_t>(fold.first_stood_for(v)) * m; };
  const bool paired = rank < 2 * fold.extra;
  if (paired && rank % 2 == 0) {
    ctx.steps.enter("fold-in", 0, 1);
    t.isend(rank + 1, vec.at(static_cast<size_t>(rank) * m), vec.bytes(m))->wait();
    ctx.steps.enter("fold-out", 0, 1);
    t.irecv(rank + 1, vec.data, vec.bytes(vec.count))->wait();
    return;
  }
  if (paired) {
    ctx.steps.enter("fold-in", 0, 1);
    t.irecv(rank - 1, vec.at(static_cast<size_t>(rank - 1) * m), vec.bytes(m))->wait();
  }
  const int v = fold.virtual_rank(rank);
  size_t step = 0;
  for (int mask = 1; mask < fold.p2; mask <<= 1) {
    const int base = v & ~(mask - 1);
    const int theirs = base ^ mask;
    ctx.steps.enter("exchange", step++, fold.lg_p2);
    exchange(t, fold.real_rank(v ^ mask), vec.at(first_element(base)),
             vec.bytes(first_element(base + mask) - first_element(base)), vec.at(first_element(theirs)),
             vec.bytes(first_element(theirs + mask) - first_element(theirs)));
  }
  if (paired) {
    ctx.steps.enter("fold-out", 0, 1);
    t.isend(rank - 1, vec.data, vec.bytes(vec.count))->wait();
  }
}

}  // namespace pyallreduce
