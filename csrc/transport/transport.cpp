#include "transport.h"

#include <algorithm>

namespace pyallreduce {

void wait_all(std::vector<RequestPtr>& requests) {
  for (RequestPtr& request : requests) request->wait();
  requests.clear();
}

void exchange(Transport& transport, int peer, const void* send_data, size_t send_bytes,
              void* recv_data, size_t recv_bytes) {
  RequestPtr recv = transport.irecv(peer, recv_data, recv_bytes);
  RequestPtr send = transport.isend(peer, send_data, send_bytes);
  recv->wait();
  send->wait();
}

size_t piece_count(size_t bytes, size_t max_piece) {
  return bytes == 0 ? 1 : (bytes + max_piece - 1) / max_piece;
}

size_t piece_length(size_t bytes, size_t max_piece, size_t i) {
  return std::min(max_piece, bytes - std::min(bytes, i * max_piece));
}

int first_failing_rank(Transport& transport, bool ok) {
  int failing = ok ? -1 : transport.rank();
  if (transport.rank() != 0) {
    transport.isend(0, &failing, sizeof failing)->wait();
  } else {
    for (int peer = 1; peer < transport.size(); ++peer) {
      int peer_failing = -1;
      transport.irecv(peer, &peer_failing, sizeof peer_failing)->wait();
      if (failing < 0) failing = peer_failing;
    }
  }
  broadcast_from_rank0(transport, &failing, sizeof failing);
  return failing;
}

void broadcast_from_rank0(Transport& transport, void* data, size_t bytes) {
  if (transport.rank() != 0) {
    transport.irecv(0, data, bytes)->wait();
    return;
  }
  std::vector<RequestPtr> sends;
  for (int peer = 1; peer < transport.size(); ++peer) sends.push_back(transport.isend(peer, data, bytes));
  wait_all(sends);
}

}  // namespace pyallreduce
