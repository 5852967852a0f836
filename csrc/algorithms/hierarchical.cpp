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
// With the ring between hosts, steps 2-4 are pipelined over ctx.pieces
// pieces of the vector (pipelined_allreduce), so that the time inside a host
// hides behind the network's.
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
#include <algorithm>
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

// A vector of p equal blocks cut into `pieces` pieces and laid out by piece,
// then local index, then host, from `base`: piece k holds sub-block k of
// every block (ring_chunk(block, pieces, k)), and within it super-block j
// holds the sub-blocks of local index j on hosts 0..H-1 (the hierarchical
// reduce-scatter and allgather below, which pipeline the pieces). Example,
// hosts {0, 1} and {2, 3}, blocks of 3 elements, 2 pieces (of 2 and 1):
// [0a 0b, 2a 2b | 1a 1b, 3a 3b || 0c, 2c | 1c, 3c], where 0a is block 0's
// first element.
struct SuperBlocks {
  SuperBlocks(const Transport& t, const Vector& vec, char* base, size_t pieces)
      : layout(t.layout()),
        hosts(layout.hosts()),
        host(layout.host_of(t.rank())),
        local(layout.local_index(t.rank())),
        size(t.size()),
        block(vec.count / static_cast<size_t>(t.size())),
        pieces(pieces),
        element_size(vec.element_size),
        base(base) {}
  // Piece k's elements of every block.
  ElementRange piece(size_t k) const { return ring_chunk(block, static_cast<int>(pieces), static_cast<int>(k)); }
  size_t piece_length(size_t k) const { return piece(k).end - piece(k).begin; }
  // Where piece k begins, and where its sub-block of local index j on host h lies.
  char* region(size_t k) const { return base + static_cast<size_t>(size) * piece(k).begin * element_size; }
  char* slot(size_t k, int j, int h) const {
    return region(k) + (static_cast<size_t>(j) * hosts + h) * piece_length(k) * element_size;
  }
  // visit(the block's rank, its piece k, where that lies here, the piece's
  // first element in the block) for every piece of every block.
  template <class Visit>
  void for_each_piece(Visit visit) const {
    for (size_t k = 0; k < pieces; ++k) {
      for (int h = 0; h < hosts; ++h) {
        const std::vector<int>& ranks = layout.ranks_on(h);
        for (size_t j = 0; j < ranks.size(); ++j) visit(ranks[j], k, slot(k, static_cast<int>(j), h), piece(k).begin);
      }
    }
  }

  const HostLayout& layout;
  int hosts, host, local, size;
  size_t block, pieces, element_size;
  char* base;
};

// Rounds a scratch region's length up to the 64 bytes that
// MemorySpace::reserve aligns regions to, so that the regions carved after it
// stay aligned.
size_t aligned(size_t bytes) { return (bytes + 63) / 64 * 64; }

// The pieces a call pipelines: at most one per element of what is cut.
size_t pieces_of(const CollectiveContext& ctx, size_t elements) {
  return std::clamp<size_t>(ctx.pieces, 1, std::max<size_t>(1, elements));
}

// Steps 2-4 of the allreduce with the ring between hosts, pipelined over
// ctx.pieces pieces of the vector: piece k (ring_chunk(n, pieces, k)) is
// reduce-scattered inside the host, its slice allreduced between hosts (a
// ring reduce-scatter, the finalize of the chunk this rank owns there, a
// ring allgather) and allgathered inside the host, while the levels work on
// different pieces at once. Inside the host the order is RS 0, RS 1, AG 0,
// RS 2, AG 1, ..., AG K-1, so that the next piece is reduced while the last
// one crosses the network; between hosts it is RS 0, AG 0, RS 1, AG 1, ...
// Example, 2 pieces: inside RS 1 runs while piece 0 crosses; inside AG 0
// then waits for it, and piece 1 crosses while AG 0 runs.
void pipelined_allreduce(const CollectiveContext& ctx, const CollectiveContext& inside_ctx,
                         const CollectiveContext& between_ctx, Vector vec, int owned) {
  const int core_size = inside_ctx.transport.size();
  const int hosts = between_ctx.transport.size();
  const int between_owned = ring_owned_chunk(between_ctx.transport.rank(), hosts);
  const int world = ctx.transport.size();
  const size_t pieces = pieces_of(ctx, vec.count);
  auto part = [&](size_t k) {
    const ElementRange piece = ring_chunk(vec.count, static_cast<int>(pieces), static_cast<int>(k));
    return Vector{vec.input_at(piece.begin), vec.at(piece.begin), piece.end - piece.begin, vec.element_size};
  };
  // This rank's slice of piece k after the reduce-scatter inside the host.
  auto slice = [&](size_t k) {
    const Vector whole = part(k).in_place();
    const ElementRange chunk = ring_chunk(whole.count, core_size, owned);
    return Vector{whole.at(chunk.begin), whole.at(chunk.begin), chunk.end - chunk.begin, vec.element_size};
  };
  // Each level's receive slots, sized for piece 0 (the longest).
  const size_t inside_slots = aligned(ring_reduce_scatter_slot_bytes(inside_ctx, part(0)));
  char* slots = static_cast<char*>(
      ctx.memory.reserve(inside_slots + ring_reduce_scatter_slot_bytes(between_ctx, slice(0))));
  const char* in = "hierarchical, inside the host:";
  const char* across = "hierarchical, between hosts:";
  std::vector<PipelineStage> stages;
  auto add = [&](int level, int follows, const char* stage, std::function<std::unique_ptr<RingPhase>()> begin) {
    stages.push_back({level, follows, stage, std::move(begin)});
    return static_cast<int>(stages.size()) - 1;
  };
  auto inside_allgather = [&](size_t k) { return ring_allgather_phase(inside_ctx, part(k).in_place(), owned); };
  int last_crossing = -1;
  for (size_t k = 0; k < pieces; ++k) {
    const int reduced = add(0, -1, in, [&, k] { return ring_reduce_scatter_phase(inside_ctx, part(k), owned, slots); });
    add(1, reduced, across,
        [&, k] { return ring_reduce_scatter_phase(between_ctx, slice(k), between_owned, slots + inside_slots); });
    if (k > 0) add(0, last_crossing, in, [&, k] { return inside_allgather(k - 1); });
    last_crossing = add(1, -1, across, [&, k] {
      const Vector mine = slice(k);
      const ElementRange chunk = ring_chunk(mine.count, hosts, between_owned);
      ctx.reduction.finalize(mine.at(chunk.begin), chunk.end - chunk.begin, world);
      return ring_allgather_phase(between_ctx, mine, between_owned);
    });
  }
  add(0, last_crossing, in, [&] { return inside_allgather(pieces - 1); });
  run_pipeline(ctx.transport, ctx.steps, stages);
}

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
  const int owned = ring_owned_chunk(local, core_size);
  GroupTransport between(t, local_index_on_every_host(layout, local));
  const CollectiveContext between_ctx{between, partial, ctx.memory, ctx.ring, ctx.steps};
  if (ctx.between_hosts == Algorithm::kRing) {
    pipelined_allreduce(ctx, inside_ctx, between_ctx, vec, owned);
  } else {
    ctx.steps.set_stage("hierarchical, inside the host:");
    ring_reduce_scatter(inside_ctx, vec, owned);
    const ElementRange chunk = ring_chunk(vec.count, core_size, owned);
    char* slice = vec.at(chunk.begin);
    ctx.steps.set_stage("hierarchical, between hosts:");
    run_allreduce(ctx.between_hosts, between_ctx, Vector{slice, slice, chunk.end - chunk.begin, vec.element_size});
    ctx.reduction.finalize(slice, chunk.end - chunk.begin, t.size());
    ctx.steps.set_stage("hierarchical, inside the host:");
    ring_allgather(inside_ctx, vec.in_place(), owned);
  }
  ctx.steps.set_stage("hierarchical");
  for (size_t k = 0; k < folded.size(); ++k) {
    ctx.steps.enter("fold-out", k, folded.size());
    t.isend(folded[k], vec.data, bytes)->wait();
  }
}

// Hierarchical reduce-scatter, the allgather below run backwards: the input
// is copied into a scratch vector in SuperBlocks' order; for each piece, a
// ring reduce-scatter inside each host leaves local index i with its
// super-block i reduced over its host, and a ring reduce-scatter between
// hosts, among the ranks of local index i, leaves each with its own
// sub-block reduced over every rank, while the next piece is reduced inside
// the host (run_pipeline). Example, hosts {0, 1} and {2, 3}, one piece: the
// scratch holds [block 0, block 2 | block 1, block 3]; inside host 0, rank 1
// ends with [1, 3] summed over ranks 0 and 1; ranks 1 and 3 then
// reduce-scatter that pair, and rank 1 keeps block 1, which is finalized and
// copied into block 1 of vec.data.
void hierarchical_reduce_scatter_blocks(const CollectiveContext& ctx, Vector vec) {
  Transport& t = ctx.transport;
  const HostLayout& layout = t.layout();
  if (hierarchical_blocks_are_the_ring(layout, vec)) return ring_reduce_scatter_blocks(ctx, vec);
  const int host = layout.host_of(t.rank()), local = layout.local_index(t.rank()), p = t.size();
  const size_t block = vec.count / static_cast<size_t>(p), pieces = pieces_of(ctx, block);
  GroupTransport inside(t, layout.ranks_on(host));
  GroupTransport between(t, local_index_on_every_host(layout, local));
  const CollectiveContext inside_ctx{inside, ctx.reduction, ctx.memory, ctx.ring, ctx.steps};
  const CollectiveContext between_ctx{between, ctx.reduction, ctx.memory, ctx.ring, ctx.steps};
  const int hosts = between.size();
  // Scratch: the vector in piece order, then each level's receive slots,
  // sized for piece 0 (the longest): its whole region inside the host, and
  // this rank's super-block of it between hosts.
  const ElementRange longest = ring_chunk(block, static_cast<int>(pieces), 0);
  const size_t longest_length = longest.end - longest.begin;
  const size_t vector_bytes = aligned(vec.bytes(vec.count));
  const size_t inside_slots = aligned(ring_reduce_scatter_slot_bytes(
      inside_ctx, Vector{nullptr, nullptr, static_cast<size_t>(p) * longest_length, vec.element_size}));
  char* scratch = static_cast<char*>(ctx.memory.reserve(
      vector_bytes + inside_slots +
      ring_reduce_scatter_slot_bytes(
          between_ctx, Vector{nullptr, nullptr, static_cast<size_t>(hosts) * longest_length, vec.element_size})));
  const SuperBlocks order(t, vec, scratch, pieces);
  order.for_each_piece([&](int rank, size_t k, char* at, size_t first) {
    ctx.memory.copy(at, vec.input_at(static_cast<size_t>(rank) * block + first), vec.bytes(order.piece_length(k)));
  });
  std::vector<PipelineStage> stages;
  for (size_t k = 0; k < pieces; ++k) {
    stages.push_back({0, -1, "hierarchical, inside the host:", [&, k] {
                        const size_t count = static_cast<size_t>(p) * order.piece_length(k);
                        return ring_reduce_scatter_phase(
                            inside_ctx, Vector{order.region(k), order.region(k), count, vec.element_size}, local,
                            scratch + vector_bytes);
                      }});
    stages.push_back({1, static_cast<int>(stages.size()) - 1, "hierarchical, between hosts:", [&, k] {
                        char* mine = order.slot(k, local, 0);
                        const size_t count = static_cast<size_t>(hosts) * order.piece_length(k);
                        return ring_reduce_scatter_phase(between_ctx, Vector{mine, mine, count, vec.element_size},
                                                         host, scratch + vector_bytes + inside_slots);
                      }});
  }
  run_pipeline(t, ctx.steps, stages);
  ctx.steps.set_stage("hierarchical");
  char* result = vec.at(static_cast<size_t>(t.rank()) * block);
  for (size_t k = 0; k < pieces; ++k) {
    char* reduced = order.slot(k, local, host);
    ctx.reduction.finalize(reduced, order.piece_length(k), p);
    ctx.memory.copy(result + vec.bytes(order.piece(k).begin), reduced, vec.bytes(order.piece_length(k)));
  }
}

// Hierarchical allgather, for H hosts of S ranks each: first between hosts,
// each rank with the ranks of its local index on the other hosts, then inside
// each host, so that each host's link carries the n(H-1)/H bytes its ranks'
// blocks need, where a ring over all ranks sends n(p-1)/p through some link.
// The blocks travel in a scratch vector in SuperBlocks' order: in each
// piece, super-block j holds the sub-blocks of local index j on hosts
// 0..H-1, so that both levels are ring allgathers of contiguous blocks, and
// piece k + 1 crosses the network while piece k is gathered inside the host
// (run_pipeline). Worked example, one piece, hosts
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
  const int host = layout.host_of(t.rank()), local = layout.local_index(t.rank()), me = t.rank(), p = t.size();
  const size_t block = vec.count / static_cast<size_t>(p);
  char* scratch = static_cast<char*>(ctx.memory.reserve(vec.bytes(vec.count)));
  const SuperBlocks order(t, vec, scratch, pieces_of(ctx, block));
  for (size_t k = 0; k < order.pieces; ++k) {
    ctx.memory.copy(order.slot(k, local, host), vec.at(static_cast<size_t>(me) * block + order.piece(k).begin),
                    vec.bytes(order.piece_length(k)));
  }
  GroupTransport between(t, local_index_on_every_host(layout, local));
  GroupTransport inside(t, layout.ranks_on(host));
  const CollectiveContext between_ctx{between, ctx.reduction, ctx.memory, ctx.ring, ctx.steps};
  const CollectiveContext inside_ctx{inside, ctx.reduction, ctx.memory, ctx.ring, ctx.steps};
  std::vector<PipelineStage> stages;
  for (size_t k = 0; k < order.pieces; ++k) {
    stages.push_back({1, -1, "hierarchical, between hosts:", [&, k] {
                        char* mine = order.slot(k, local, 0);
                        const size_t count = static_cast<size_t>(between.size()) * order.piece_length(k);
                        return ring_allgather_phase(between_ctx, Vector{mine, mine, count, vec.element_size}, host);
                      }});
    stages.push_back({0, static_cast<int>(stages.size()) - 1, "hierarchical, inside the host:", [&, k] {
                        const size_t count = static_cast<size_t>(p) * order.piece_length(k);
                        return ring_allgather_phase(
                            inside_ctx, Vector{order.region(k), order.region(k), count, vec.element_size}, local);
                      }});
  }
  run_pipeline(t, ctx.steps, stages);
  ctx.steps.set_stage("hierarchical");
  order.for_each_piece([&](int rank, size_t k, char* at, size_t first) {
    if (rank != me) {
      ctx.memory.copy(vec.at(static_cast<size_t>(rank) * block + first), at, vec.bytes(order.piece_length(k)));
    }
  });
}

}  // namespace pyallreduce
