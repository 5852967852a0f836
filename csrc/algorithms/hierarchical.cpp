// Hierarchical allreduce, for ranks spread over hosts: the bytes that cross
// the network are a host's share, not each rank's, and every rank of a host
// uses the network at once, each for its own slice (Horovod's hierarchical
// allreduce; Goyal et al.'s scheme with NCCL inside a server).
//
// With H hosts of which the smallest has S ranks, each host's first S ranks
// ("its core") take part directly, and ranks from local index S on fold in:
//   1. fold-in: a rank of local index i >= S sends its input to local index
//      i mod S of its host, which combines it (lowest local index first);
//   2. a ring reduce-scatter inside each host's core: local index i ends
//      with chunk c = ring_owned_chunk(i, S) of n / S elements, reduced over
//      its host;
//   3. between hosts: the ranks of local index i on every host (one per
//      host, all holding chunk c) allreduce that chunk with the algorithm
//      chosen for the level, then finalize it once, over all P ranks;
//   4. a ring allgather inside each core: every core rank has the result;
//   5. fold-out: each folded rank receives it from the rank it folded into.
// Each host's link carries 2n(H-1)/H bytes out with the ring between hosts,
// where a flat ring over host-major ranks carries that per rank of the host.
//
// Worked example, 2 hosts with 3 and 2 ranks: ranks {0, 1, 2} and {3, 4},
// so S = 2, and rank 2 (local index 2) folds into rank 0 (2 mod 2 = 0).
// Cores {0, 1} and {3, 4} each reduce-scatter into 2 chunks: local index 0
// (ranks 0, 3) holds chunk 1, local index 1 (ranks 1, 4) chunk 0. Ranks 0
// and 3 allreduce chunk 1, ranks 1 and 4 chunk 0, at the same time over the
// network; the cores allgather, and rank 0 sends the result to rank 2.
//
// Every element's final value is computed by one flat allreduce (bitwise
// identical on its ranks) and copied from there, so every rank gets the same
// bits. A single host is the ring; one rank per host is the flat algorithm.
#include <vector>

#include "algorithm.h"

namespace pyallreduce {

namespace {

// Where the hierarchical reduce-scatter and allgather run as the ring: hosts
// of different sizes, one host, one rank per host, or nothing to move.
bool hierarchical_blocks_are_the_ring(const HostLayout& layout, const Vector& vec) {
  const int per_host = layout.fewest_ranks_per_host();
  return layout.hosts() == 1 || per_host == 1 || per_host != layout.most_ranks_per_host() || vec.count == 0;
}

// The rank of local index `local` on every host, in host order.
std::vector<int> local_index_on_every_host(const HostLayout& layout, int local) {
  std::vector<int> ranks;
  for (int h = 0; h < layout.hosts(); ++h) ranks.push_back(layout.ranks_on(h)[static_cast<size_t>(local)]);
  return ranks;
}

// A vector of p equal blocks laid out by local index, then host, from
// `base`: super-block j holds the blocks of local index j on hosts 0..H-1
// (the hierarchical reduce-scatter and allgather below). Example, hosts
// {0, 1} and {2, 3}: [block 0, block 2 | block 1, block 3].
struct SuperBlocks {
  SuperBlocks(const Transport& t, const Vector& vec, char* base)
      : layout(t.layout()),
        hosts(layout.hosts()),
        host(layout.host_of(t.rank())),
        local(layout.local_index(t.rank())),
        block(vec.count / static_cast<size_t>(t.size())),
        element_size(vec.element_size),
        base(base) {}
  // Where the block of local index j on host h lies.
  char* slot(int j, int h) const { return base + (static_cast<size_t>(j) * hosts + h) * block * element_size; }
  // visit(rank, its slot) for every rank.
  template <class Visit>
  void for_each_block(Visit visit) const {
    for (int h = 0; h < hosts; ++h) {
      const std::vector<int>& ranks = layout.ranks_on(h);
      for (size_t j = 0; j < ranks.size(); ++j) visit(ranks[j], slot(static_cast<int>(j), h));
    }
  }

  const HostLayout& layout;
  int hosts, host, local;
  size_t block, element_size;
  char* base;
};

}  // namespace

void hierarchical_allreduce(const CollectiveContext& ctx, Vector vec) {
  Transport& t = ctx.transport;
  const HostLayout& layout = t.layout();
  const int me = t.rank();
  const int host = layout.host_of(me);
  const int local = layout.local_index(me);
  const int core_size = layout.fewest_ranks_per_host();
  const std::vector<int>& host_ranks = layout.ranks_on(host);
  const size_t bytes = vec.bytes(vec.count);

  if (local >= core_size) {
    const int into = host_ranks[static_cast<size_t>(local % core_size)];
    ctx.steps.enter("fold-in", 0, 1);
    t.isend(into, vec.input, bytes)->wait();
    ctx.steps.enter("fold-out", 0, 1);
    t.irecv(into, vec.data, bytes)->wait();
    return;
  }
  std::vector<int> folded;  // the ranks that fold into this one, lowest first
  for (size_t j = static_cast<size_t>(local + core_size); j < host_ranks.size(); j += static_cast<size_t>(core_size)) {
    folded.push_back(host_ranks[j]);
  }
  for (size_t k = 0; k < folded.size(); ++k) {
    void* theirs = ctx.memory.reserve(bytes);
    ctx.steps.enter("fold-in", k, folded.size());
    t.irecv(folded[k], theirs, bytes)->wait();
    ctx.reduction.combine(vec.input, theirs, vec.data, vec.count);  // lower rank on the left
    vec = vec.in_place();
  }

  if (ctx.between_hosts == Algorithm::kHierarchical || ctx.between_hosts == Algorithm::kAuto) {
    throw InvalidArgument("hierarchical allreduce needs a flat algorithm between hosts");
  }
  const PartialCombiner partial(ctx.reduction);
  std::vector<int> core(host_ranks.begin(), host_ranks.begin() + core_size);
  GroupTransport inside(t, core);
  const CollectiveContext inside_ctx{inside, partial, ctx.memory, ctx.ring, ctx.steps};
  ctx.steps.set_stage("hierarchical, inside the host:");
  const int owned = ring_owned_chunk(local, core_size);
  ring_reduce_scatter(inside_ctx, vec, owned);

  const ElementRange chunk = ring_chunk(vec.count, core_size, owned);
  GroupTransport between(t, local_index_on_every_host(layout, local));
  const CollectiveContext between_ctx{between, partial, ctx.memory, ctx.ring, ctx.steps};
  char* slice = vec.at(chunk.begin);
  ctx.steps.set_stage("hierarchical, between hosts:");
  run_allreduce(ctx.between_hosts, between_ctx, Vector{slice, slice, chunk.end - chunk.begin, vec.element_size});
  ctx.reduction.finalize(slice, chunk.end - chunk.begin, t.size());

  ctx.steps.set_stage("hierarchical, inside the host:");
  ring_allgather(inside_ctx, vec.in_place(), owned);
  ctx.steps.set_stage("hierarchical");
  for (size_t k = 0; k < folded.size(); ++k) {
    ctx.steps.enter("fold-out", k, folded.size());
    t.isend(folded[k], vec.data, bytes)->wait();
  }
}

// Hierarchical reduce-scatter, the allgather below run backwards: the input
// is copied into vec.data ordered by local index, then host (super-block j:
// the blocks of local index j on hosts 0..H-1); a ring reduce-scatter inside
// each host leaves local index i with super-block i reduced over its host,
// and a ring reduce-scatter between hosts, among the ranks of local index i,
// leaves each with its own block reduced over every rank. Example, hosts
// {0, 1} and {2, 3}: vec.data holds [block 0, block 2 | block 1, block 3];
// inside host 0, rank 1 ends with [1, 3] summed over ranks 0 and 1; ranks 1
// and 3 then reduce-scatter that pair, and rank 1 keeps block 1. The input
// must lie apart from vec.data (the communicator's whole-vector buffer).
void hierarchical_reduce_scatter_blocks(const CollectiveContext& ctx, Vector vec) {
  Transport& t = ctx.transport;
  const HostLayout& layout = t.layout();
  if (hierarchical_blocks_are_the_ring(layout, vec)) return ring_reduce_scatter_blocks(ctx, vec);
  const SuperBlocks order(t, vec, static_cast<char*>(vec.data));
  const int hosts = order.hosts, host = order.host, local = order.local;
  const size_t block = order.block;
  order.for_each_block([&](int rank, char* at) {
    ctx.memory.copy(at, vec.input_at(static_cast<size_t>(rank) * block), vec.bytes(block));
  });
  GroupTransport inside(t, layout.ranks_on(host));
  ctx.steps.set_stage("hierarchical, inside the host:");
  ring_reduce_scatter(CollectiveContext{inside, ctx.reduction, ctx.memory, ctx.ring, ctx.steps}, vec.in_place(),
                      local);

  GroupTransport between(t, local_index_on_every_host(layout, local));
  ctx.steps.set_stage("hierarchical, between hosts:");
  char* mine = order.slot(local, 0);
  ring_reduce_scatter(CollectiveContext{between, ctx.reduction, ctx.memory, ctx.ring, ctx.steps},
                      Vector{mine, mine, static_cast<size_t>(hosts) * block, vec.element_size}, host);
  ctx.steps.set_stage("hierarchical");
  char* reduced = order.slot(local, host);
  ctx.reduction.finalize(reduced, block, t.size());
  char* result = vec.at(static_cast<size_t>(t.rank()) * block);
  if (result != reduced) ctx.memory.copy(result, reduced, vec.bytes(block));
}

// Hierarchical allgather, for H hosts of S ranks each: first between hosts,
// each rank with the ranks of its local index on the other hosts, then inside
// each host, so that each host's link carries the n(H-1)/H bytes its ranks'
// blocks need, where a ring over all ranks sends n(p-1)/p through some link.
// The blocks travel in a scratch vector ordered by local index, then host:
// super-block j holds the blocks of local index j on hosts 0..H-1, so that
// both phases are ring allgathers of contiguous blocks. Worked example, hosts
// {0, 1} and {2, 3}: super-block 0 is [block 0, block 2], super-block 1 is
// [block 1, block 3]. Rank 1 puts its block in super-block 1, slot 0; rank 3
// in slot 1; ranks 1 and 3 allgather super-block 1 across the network (as 0
// and 2 do super-block 0); then ranks 0 and 1 allgather the two super-blocks
// inside host 0, and each copies block (j, h) back to block ranks_on(h)[j].
// Where hosts differ in size, or there is one host or one rank per host, it
// is the ring (as the reduce-scatter is).
void hierarchical_allgather_blocks(const CollectiveContext& ctx, Vector vec) {
  Transport& t = ctx.transport;
  const HostLayout& layout = t.layout();
  if (hierarchical_blocks_are_the_ring(layout, vec)) return ring_allgather_blocks(ctx, vec);
  char* scratch = static_cast<char*>(ctx.memory.reserve(vec.bytes(vec.count)));
  const SuperBlocks order(t, vec, scratch);
  const int hosts = order.hosts, host = order.host, local = order.local, me = t.rank();
  const size_t block = order.block;
  ctx.memory.copy(order.slot(local, host), vec.at(static_cast<size_t>(me) * block), vec.bytes(block));

  GroupTransport between(t, local_index_on_every_host(layout, local));
  ctx.steps.set_stage("hierarchical, between hosts:");
  char* mine = order.slot(local, 0);
  ring_allgather_blocks(CollectiveContext{between, ctx.reduction, ctx.memory, ctx.ring, ctx.steps},
                        Vector{mine, mine, static_cast<size_t>(hosts) * block, vec.element_size});

  GroupTransport inside(t, layout.ranks_on(host));
  ctx.steps.set_stage("hierarchical, inside the host:");
  ring_allgather_blocks(CollectiveContext{inside, ctx.reduction, ctx.memory, ctx.ring, ctx.steps},
                        Vector{scratch, scratch, vec.count, vec.element_size});
  ctx.steps.set_stage("hierarchical");
  order.for_each_block([&](int rank, char* at) {
    if (rank != me) ctx.memory.copy(vec.at(static_cast<size_t>(rank) * block), at, vec.bytes(block));
  });
}

}  // namespace pyallreduce
