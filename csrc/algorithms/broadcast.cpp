// Broadcasts: a binomial tree, latency-bound (ceil(lg p) steps of the whole
// vector), and a scatter followed by a ring allgather (van de Geijn's),
// bandwidth-bound: every rank receives about 2n(p-1)/p bytes instead of n at
// each of lg p levels. Ranks are counted relative to the root: relative rank
// q is real rank (q + root) mod p.
//
// Binomial tree, worked for p = 6, root 0: relative rank q receives from q
// with its lowest set bit cleared (1 <- 0, 2 <- 0, 3 <- 2, 4 <- 0, 5 <- 4)
// and then sends to q + 2^k for every 2^k below that bit, largest first, that
// is a rank (0 sends to 4, 2, 1; 2 to 3; 4 to 5). Those sends go out
// together: each child's subtree is disjoint from the others'.
//
// Scatter + allgather, worked for n = 10, p = 4, root 1: the vector's ring
// chunks are 3, 3, 2, 2 elements; the root sends chunk q to relative rank q
// (real rank q + 1), keeping chunk 0, and the ring allgather (rank r owning
// chunk r - root) gives every rank every chunk.
#include <vector>

#include "algorithm.h"

namespace pyallreduce {

namespace {

int mod(int a, int p) { return ((a % p) + p) % p; }

}  // namespace

void binomial_tree_broadcast(const CollectiveContext& ctx, Vector vec, int root) {
  Transport& t = ctx.transport;
  const int p = t.size();
  const int q = mod(t.rank() - root, p);
  const size_t bytes = vec.bytes(vec.count);
  int mask = 1;
  for (; mask < p; mask <<= 1) {
    if ((q & mask) != 0) {
      ctx.steps.enter("receive", 0, 1);
      t.irecv(mod(q - mask + root, p), vec.data, bytes)->wait();
      break;
    }
  }
  std::vector<RequestPtr> sends;
  for (mask >>= 1; mask > 0; mask >>= 1) {
    if (q + mask < p) sends.push_back(t.isend(mod(q + mask + root, p), vec.data, bytes));
  }
  ctx.steps.enter("send", 0, 1);
  wait_all(sends);
}

void scatter_allgather_broadcast(const CollectiveContext& ctx, Vector vec, int root) {
  Transport& t = ctx.transport;
  const int p = t.size();
  const int q = mod(t.rank() - root, p);
  ctx.steps.enter("scatter", 0, 1);
  if (q == 0) {
    std::vector<RequestPtr> sends;
    for (int to = 1; to < p; ++to) {
      const ElementRange chunk = ring_chunk(vec.count, p, to);
      sends.push_back(t.isend(mod(to + root, p), vec.at(chunk.begin), vec.bytes(chunk.end - chunk.begin)));
    }
    wait_all(sends);
  } else {
    const ElementRange chunk = ring_chunk(vec.count, p, q);
    t.irecv(root, vec.at(chunk.begin), vec.bytes(chunk.end - chunk.begin))->wait();
  }
  ring_allgather(ctx, vec, q);
}

}  // namespace pyallreduce
