// Ring allreduce: a reduce-scatter then an allgather around the ring
// 0 -> 1 -> ... -> p-1 -> 0, each p-1 steps long. The vector is cut into p
// chunks; at every step each rank sends one chunk to its right neighbour and
// receives one from its left. Every rank sends and receives 2n(p-1)/p bytes,
// the bandwidth floor, in 2(p-1) steps.
//
// Worked example, p = 3, rank r = 1, xk = rank k's input (indices mod 3):
//   reduce-scatter step s sends chunk r-s and receives chunk r-s-1:
//     s=0: send chunk 1 (x1), receive chunk 0 (x0) and combine: x0+x1
//     s=1: send chunk 0 (x0+x1), receive chunk 2 (x2+x0 from rank 0) and
//          combine: x2+x0+x1
//   after p-1 steps rank r owns chunk r+1 = 2, reduced over all ranks.
//   allgather step s sends chunk r+1-s and receives chunk r-s:
//     s=0: send chunk 2, receive chunk 1;  s=1: send chunk 1, receive chunk 0.
// The chunk sent at step s+1 is the one received at step s, so the phases are
// streams: what arrives from the left is landed (combined or stored) and, until
// the last step, forwarded to the right.
//
// Out of place, the input is read where it lies: chunk r is sent from it at
// step 0, and every other chunk is combined from it into the output when its
// partial sum arrives. Every chunk of the output is written once, by a combine
// or by the allgather, so there is no copy of the input.
//
// Pipelining: chunks are cut into segments of ring_segment_bytes, and up to
// kReceiveWindow segment receives are posted ahead, so while one segment is
// being combined the next ones are already arriving, and a combined segment is
// forwarded at once instead of waiting for its whole chunk.
#include <algorithm>
#include <vector>

#include "algorithm.h"

namespace pyallreduce {
namespace {

constexpr size_t kReceiveWindow = 4;

// Chunk i covers [begin(i), begin(i+1)); the first n % p chunks get one extra
// element. Example n = 10, p = 4: sizes 3, 3, 2, 2, begins 0, 3, 6, 8, 10.
size_t chunk_begin(size_t n, int p, int i) {
  const size_t index = static_cast<size_t>(i);
  return index * (n / p) + std::min(index, n % p);
}

int mod(int a, int p) { return ((a % p) + p) % p; }

struct Segment {
  size_t offset;  // in elements
  size_t count;
  bool forward;   // send on to the right neighbour once landed
};

// Appends chunk `chunk`'s segments (of at most `segment_elems` elements; none
// if the chunk is empty) to `plan`.
void append_chunk(std::vector<Segment>& plan, size_t n, int p, int chunk, size_t segment_elems,
                  bool forward) {
  const size_t end = chunk_begin(n, p, chunk + 1);
  for (size_t offset = chunk_begin(n, p, chunk); offset < end; offset += segment_elems) {
    plan.push_back({offset, std::min(segment_elems, end - offset), forward});
  }
}

// One phase: sends `first` (from `first_source`) to the right, then receives
// `incoming` from the left in order. Segment j is received into receive_buffer(j) and handed to
// land(j) before being forwarded. A receive buffer is reused once its segment
// has been landed: receive_buffer(j + kReceiveWindow) may equal receive_buffer(j).
template <class ReceiveBuffer, class Land>
void ring_phase(Transport& t, const Vector& vec, const void* first_source, const std::vector<Segment>& first,
                const std::vector<Segment>& incoming, ReceiveBuffer receive_buffer, Land land) {
  const int right = mod(t.rank() + 1, t.size());
  const int left = mod(t.rank() - 1, t.size());
  std::vector<RequestPtr> receives(incoming.size());
  std::vector<RequestPtr> sends;
  auto post_receive = [&](size_t j) {
    receives[j] = t.irecv(left, receive_buffer(j), vec.bytes(incoming[j].count));
  };
  for (size_t j = 0; j < std::min(kReceiveWindow, incoming.size()); ++j) post_receive(j);
  for (const Segment& s : first) {
    sends.push_back(t.isend(right, static_cast<const char*>(first_source) + vec.bytes(s.offset), vec.bytes(s.count)));
  }
  for (size_t j = 0; j < incoming.size(); ++j) {
    receives[j]->wait();
    receives[j].reset();
    land(j);
    const Segment& s = incoming[j];
    if (s.forward) sends.push_back(t.isend(right, vec.at(s.offset), vec.bytes(s.count)));
    if (j + kReceiveWindow < incoming.size()) post_receive(j + kReceiveWindow);
  }
  wait_all(sends);
}

}  // namespace

void ring_allreduce(const AllreduceContext& ctx, Vector vec) {
  Transport& t = ctx.transport;
  const int p = t.size();
  const int r = t.rank();
  const size_t n = vec.count;
  if (p == 1) {
    vec.take_input();
    ctx.reduction.finalize(vec.data, n, p);
    return;
  }
  const size_t segment_elems = std::max<size_t>(1, ctx.ring_segment_bytes / vec.element_size);

  // Reduce-scatter: combine what arrives with this rank's input into the
  // output (the partial sum from the left on the left), then forward it.
  std::vector<Segment> first, incoming;
  append_chunk(first, n, p, r, segment_elems, false);
  for (int s = 0; s < p - 1; ++s) append_chunk(incoming, n, p, mod(r - s - 1, p), segment_elems, s < p - 2);
  char* slots = static_cast<char*>(ctx.workspace.reserve(vec.bytes(segment_elems) * kReceiveWindow));
  auto slot = [&](size_t j) { return slots + (j % kReceiveWindow) * vec.bytes(segment_elems); };
  ring_phase(t, vec, vec.input, first, incoming, slot, [&](size_t j) {
    const size_t offset = incoming[j].offset;
    ctx.reduction.combine(slot(j), vec.input_at(offset), vec.at(offset), incoming[j].count);
  });

  const int owned = mod(r + 1, p);
  const size_t owned_begin = chunk_begin(n, p, owned);
  ctx.reduction.finalize(vec.at(owned_begin), chunk_begin(n, p, owned + 1) - owned_begin, p);

  // Allgather: what arrives is already final; receive it in place and forward it.
  first.clear();
  incoming.clear();
  append_chunk(first, n, p, owned, segment_elems, false);
  for (int s = 0; s < p - 1; ++s) append_chunk(incoming, n, p, mod(r - s, p), segment_elems, s < p - 2);
  ring_phase(t, vec, vec.data, first, incoming, [&](size_t j) { return vec.at(incoming[j].offset); },
             [](size_t) {});
}

}  // namespace pyallreduce
