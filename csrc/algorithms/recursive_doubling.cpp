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

}  // namespace pyallreduce
