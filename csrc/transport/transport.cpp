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

}  // namespace pyallreduce
