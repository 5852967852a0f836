// Running a power-of-two algorithm on any number of ranks by folding the extra
// ranks in before and out after (the MPICH approach).
//
// With p ranks, p2 the largest power of two <= p and r = p - p2, the first 2r
// ranks pair up as (0,1), (2,3), ...: the even rank of each pair sends its
// vector to the odd one, which combines the two and takes part in the
// power-of-two algorithm on its pair's behalf; the even rank sits out and gets
// the result from its partner at the end. Ranks from 2r on take part directly.
//
// Example p = 6: p2 = 4, r = 2. Ranks 0 and 2 sit out; the participants map to
// virtual ranks 1 -> 0, 3 -> 1, 4 -> 2, 5 -> 3.
#pragma once

#include "algorithm.h"

namespace pyallreduce {

struct PowerOfTwoFold {
  explicit PowerOfTwoFold(int world_size);
  int p2;        // ranks taking part in the power-of-two algorithm
  int extra;     // r = world_size - p2
  size_t lg_p2;  // log2(p2): the steps of a pass over the participants
  // Virtual rank of `rank` among the p2 participants, or -1 if it sits out.
  int virtual_rank(int rank) const;
  // The real rank behind virtual rank v: 2v + 1 for the paired ranks, v + r after them.
  int real_rank(int v) const { return v < extra ? 2 * v + 1 : v + extra; }
  // The lowest real rank that virtual rank v stands for (2v and 2v + 1 for
  // the paired ranks, v + r after them); v = p2 gives the world size, so
  // virtual ranks [a, b) stand for real ranks [first_stood_for(a),
  // first_stood_for(b)). Example p = 6: virtual 0 stands for 0 and 1,
  // virtual 1 for 2 and 3, virtual 2 for 4, virtual 3 for 5.
  int first_stood_for(int v) const { return v < extra ? 2 * v : v + extra; }
};

// Folds the vector in, runs `core(virtual_rank, fold, folded)` on the
// participants (which must leave every participant with the finalized result
// in folded.data), and folds the result out to the ranks that sat out.
// `folded` is `vec`, or for a rank that combined its partner's data, `vec` in
// place (its input already consumed).
template <class Core>
void run_folded(const CollectiveContext& ctx, Vector vec, Core core) {
  Transport& t = ctx.transport;
  const PowerOfTwoFold fold(t.size());
  const int rank = t.rank();
  const size_t bytes = vec.bytes(vec.count);
  const bool paired = rank < 2 * fold.extra;
  if (paired && rank % 2 == 0) {
    // Sits out: hand the input to the odd partner, then receive the result.
    ctx.steps.enter("fold-in", 0, 1);
    t.isend(rank + 1, vec.input, bytes)->wait();
    ctx.steps.enter("fold-out", 0, 1);
    t.irecv(rank + 1, vec.data, bytes)->wait();
    return;
  }
  if (paired) {
    void* partner = ctx.memory.reserve(bytes);
    ctx.steps.enter("fold-in", 0, 1);
    t.irecv(rank - 1, partner, bytes)->wait();
    ctx.reduction.combine(partner, vec.input, vec.data, vec.count);  // lower rank on the left
    vec = vec.in_place();
  }
  core(fold.virtual_rank(rank), fold, vec);
  if (paired) {
    ctx.steps.enter("fold-out", 0, 1);
    t.isend(rank - 1, vec.data, bytes)->wait();
  }
}

}  // namespace pyallreduce
