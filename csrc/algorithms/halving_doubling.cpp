// Rabenseifner's allreduce: a reduce-scatter by recursive vector halving, then
// an allgather by recursive doubling that retraces the halving in reverse.
// Each rank sends and receives about 2n(p2-1)/p2 bytes in 2 lg p2 messages.
// The two halves are also the reduce-scatter and allgather collectives (on
// block boundaries), on any world size through the fold (fold.h).
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
#include <algorithm>

#include "algorithm.h"
#include "fold.h"

namespace pyallreduce {
namespace {

// Where virtual rank v's piece of an n-element vector starts when recursive
// halving splits every range in the middle (mid = lo + len/2, the smaller
// half below); v = p2 gives n. Example p2 = 4, n = 10: 0, 2, 5, 7, 10, the
// pieces of the worked example above.
size_t halving_boundary(size_t n, int p2, int v) {
  if (v == p2) return n;
  size_t lo = 0, hi = n;
  for (int mask = p2 / 2; mask >= 1; mask >>= 1) {
    const size_t mid = lo + (hi - lo) / 2;
    if (v & mask) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The halving among the fold's participants, virtual rank v of them: virtual
// ranks [lo, hi) hold partial results of elements [piece(lo), piece(hi)),
// and the step across bit `mask` splits that range at lo + mask, keeps v's
// side and sends the other to the partner v ^ mask, which keeps that one.
// Afterwards piece v of the returned vector (current in place, its input
// consumed) is reduced over every rank, not finalized. `piece` is
// nondecreasing, piece(0) = 0 and piece(p2) = current.count.
template <class Piece>
Vector halving_reduce_scatter(const CollectiveContext& ctx, const PowerOfTwoFold& fold, int v, Vector current,
                              Piece piece) {
  Transport& t = ctx.transport;
  if (fold.p2 == 1) {  // one participant: nothing to combine
    current.take_input(ctx.memory);
    return current.in_place();
  }
  // The most a step receives: the larger side of the first split.
  const size_t first_mid = piece(fold.p2 / 2);
  void* incoming = ctx.memory.reserve(current.bytes(std::max(first_mid, current.count - first_mid)));
  int lo = 0, hi = fold.p2;
  size_t step = 0;
  for (int mask = fold.p2 / 2; mask >= 1; mask >>= 1) {
    const int mid = lo + mask;
    const bool keep_lower = (v & mask) == 0;
    const size_t keep_lo = piece(keep_lower ? lo : mid), keep_hi = piece(keep_lower ? mid : hi);
    const size_t give_lo = piece(keep_lower ? mid : lo), give_hi = piece(keep_lower ? hi : mid);
    ctx.steps.enter("reduce-scatter", step++, fold.lg_p2);
    exchange(t, fold.real_rank(v ^ mask), current.input_at(give_lo), current.bytes(give_hi - give_lo), incoming,
             current.bytes(keep_hi - keep_lo));
    const char* mine = current.input_at(keep_lo);
    char* kept = current.at(keep_lo);
    if (keep_lower) {  // this rank is the lower one of the pair: its data goes on the left
      ctx.reduction.combine(mine, incoming, kept, keep_hi - keep_lo);
    } else {
      ctx.reduction.combine(incoming, mine, kept, keep_hi - keep_lo);
    }
    // The half given away is never read from the input again: the allgather
    // (or the rank it went to) has the rest.
    current = current.in_place();
    if (keep_lower) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return current;
}

// The doubling among the fold's participants, the halving retraced: before
// the step across bit `mask`, virtual rank v holds pieces [base, base + mask)
// (base: v with its bits below mask cleared) and swaps them for its
// partner's, [base ^ mask, (base ^ mask) + mask). Example p2 = 4, v = 2:
// mask=1 sends piece 2 and receives piece 3; mask=2 sends pieces 2-3 and
// receives 0-1. `vec` is in place; `piece` as for halving_reduce_scatter.
template <class Piece>
void doubling_allgather(const CollectiveContext& ctx, const PowerOfTwoFold& fold, int v, Vector vec, Piece piece) {
  size_t step = 0;
  for (int mask = 1; mask < fold.p2; mask <<= 1) {
    const int base = v & ~(mask - 1);
    const int theirs = base ^ mask;
    ctx.steps.enter("allgather", step++, fold.lg_p2);
    exchange(ctx.transport, fold.real_rank(v ^ mask), vec.at(piece(base)), vec.bytes(piece(base + mask) - piece(base)),
             vec.at(piece(theirs)), vec.bytes(piece(theirs + mask) - piece(theirs)));
  }
}

}  // namespace

void halving_doubling_allreduce(const CollectiveContext& ctx, Vector vec) {
  run_folded(ctx, vec, [&](int v, const PowerOfTwoFold& fold, Vector current) {
    const size_t n = current.count;
    auto piece = [n, &fold](int u) { return halving_boundary(n, fold.p2, u); };
    current = halving_reduce_scatter(ctx, fold, v, current, piece);
    ctx.reduction.finalize(current.at(piece(v)), piece(v + 1) - piece(v), ctx.transport.size());
    doubling_allgather(ctx, fold, v, current, piece);
  });
}

// The collectives cut the halving on block boundaries, so that each
// participant's piece is the blocks of the ranks it stands for (fold.h's
// first_stood_for). Example p = 6 (p2 = 4, extra 2), blocks of m elements:
// virtual 0 stands for ranks 0-1, so its piece is blocks 0-1; virtual 1's
// blocks 2-3; 2's block 4; 3's block 5.

// The reduce-scatter: the halving, then each participant hands the rank that
// sat out its block. In the example step mask=2 splits virtual [0, 4) into
// [0, 2) (blocks 0-3) and [2, 4) (blocks 4-5); mask=1 leaves virtual 0 with
// blocks 0-1, of which rank 1 (its real rank) sends block 0 to rank 0.
void halving_reduce_scatter_blocks(const CollectiveContext& ctx, Vector vec) {
  Transport& t = ctx.transport;
  const int p = t.size();
  const int rank = t.rank();
  const PowerOfTwoFold fold(p);
  const size_t m = vec.count / static_cast<size_t>(p);
  auto block_begin = [&](int real) { return static_cast<size_t>(real) * m; };
  auto piece = [&](int v) { return block_begin(fold.first_stood_for(v)); };
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
  if (paired) {
    void* partner = ctx.memory.reserve(vec.bytes(vec.count));
    ctx.steps.enter("fold-in", 0, 1);
    t.irecv(rank - 1, partner, vec.bytes(vec.count))->wait();
    ctx.reduction.combine(partner, current.input, current.data, current.count);  // lower rank on the left
    current = current.in_place();
  }
  const int v = fold.virtual_rank(rank);
  current = halving_reduce_scatter(ctx, fold, v, current, piece);
  ctx.reduction.finalize(current.at(piece(v)), piece(v + 1) - piece(v), p);
  if (paired) {
    ctx.steps.enter("fold-out", 0, 1);
    t.isend(rank - 1, current.at(block_begin(rank - 1)), vec.bytes(m))->wait();
  }
}

// The allgather: the doubling, after each rank that sits out has handed its
// partner its block. Example p = 3 (p2 = 2, extra 1): rank 0 sits out and
// hands block 0 to rank 1, so virtual 0 (rank 1) holds blocks 0-1 and
// virtual 1 (rank 2) block 2; they swap them, and rank 1 sends all three
// blocks to rank 0.
void recursive_doubling_allgather_blocks(const CollectiveContext& ctx, Vector vec) {
  Transport& t = ctx.transport;
  const int p = t.size();
  const int rank = t.rank();
  const PowerOfTwoFold fold(p);
  const size_t m = vec.count / static_cast<size_t>(p);
  auto piece = [&](int v) { return static_cast<size_t>(fold.first_stood_for(v)) * m; };
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
  doubling_allgather(ctx, fold, fold.virtual_rank(rank), vec, piece);
  if (paired) {
    ctx.steps.enter("fold-out", 0, 1);
    t.isend(rank - 1, vec.data, vec.bytes(vec.count))->wait();
  }
}

}  // namespace pyallreduce
