#include "transport.h"

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
