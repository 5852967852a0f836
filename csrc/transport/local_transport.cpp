#include "local_transport.h"

#include <cstring>

#include "../types.h"

namespace pyallreduce {
namespace {

// Completes a matched pair under the channel's lock: copies the sender's bytes
// into the receiver's buffer, or records why it cannot.
void complete(LocalTransfer& send, LocalTransfer& recv) {
  const bool bounded = recv.received != nullptr;
  if (bounded ? send.bytes > recv.bytes : send.bytes != recv.bytes) {
    send.error = recv.error = "message size mismatch: rank " + std::to_string(recv.peer) + " sent " +
                              std::to_string(send.bytes) + " bytes where rank " + std::to_string(send.peer) +
                              " expected " + (bounded ? "at most " : "") + std::to_string(recv.bytes) +
                              "; the ranks are not running the same call";
  } else {
    if (send.bytes > 0) std::memcpy(recv.recv_data, send.send_data, send.bytes);
    if (bounded) *recv.received = send.bytes;
  }
  send.done = recv.done = true;
}

class LocalRequest : public Request {
 public:
  LocalRequest(std::shared_ptr<LocalWorld> world, LocalTransport& transport, LocalChannel& channel,
               std::shared_ptr<LocalTransfer> transfer)
      : world_(std::move(world)), transport_(transport), channel_(channel), transfer_(std::move(transfer)) {}

  // A request dropped before it completed (its rank is unwinding from an
  // error) withdraws its transfer, so no peer ever copies into or out of a
  // buffer that may be gone.
  ~LocalRequest() override {
    if (!transfer_->started) {
      transport_.withdraw_pending(transfer_);
      return;
    }
    std::lock_guard<std::mutex> guard(channel_.mutex);
    if (transfer_->done) return;
    for (auto* queue : {&channel_.unmatched_sends, &channel_.unmatched_recvs}) {
      for (auto it = queue->begin(); it != queue->end(); ++it) {
        if (*it == transfer_) { queue->erase(it); return; }
      }
    }
  }

  void wait() override {
    if (!transfer_->started) transport_.run_pending_group();
    transport_.wait_for(channel_, *transfer_);
  }

  // Like wait(), but returns false at once where wait() would block.
  bool test() override {
    if (!transfer_->started) transport_.run_pending_group();
    {
      std::lock_guard<std::mutex> guard(channel_.mutex);
      if (!transfer_->done && !world_->aborted() && !world_->has_notice(transport_.rank())) return false;
    }
    transport_.wait_for(channel_, *transfer_);
    return true;
  }

 private:
  std::shared_ptr<LocalWorld> world_;
  LocalTransport& transport_;
  LocalChannel& channel_;
  std::shared_ptr<LocalTransfer> transfer_;
};

}  // namespace

namespace {

HostLayout world_layout(int size, const std::vector<int>& host_of) {
  if (size < 1) throw InvalidArgument("world size must be at least 1, got " + std::to_string(size));
  if (host_of.empty()) return HostLayout::single_host(size);
  if (host_of.size() != static_cast<size_t>(size)) {
    throw InvalidArgument("hosts names " + std::to_string(host_of.size()) + " ranks' hosts for a world of " +
                          std::to_string(size));
  }
  return HostLayout(host_of);
}

}  // namespace

LocalWorld::LocalWorld(int size, bool grouped, const std::vector<int>& host_of)
    : size_(size), grouped_(grouped), layout_(world_layout(size, host_of)) {
  channels_.reserve(static_cast<size_t>(size) * size);
  for (int i = 0; i < size * size; ++i) channels_.push_back(std::make_unique<LocalChannel>());
  notices_.resize(static_cast<size_t>(size));
}

void LocalWorld::abort(const std::string& reason) {
  {
    std::lock_guard<std::mutex> guard(reason_mutex_);
    if (abort_reason_.empty()) abort_reason_ = reason;
    aborted_.store(true);
  }
  aborting_.notify_all();
  wake_all();
}

void LocalWorld::wake_all() {
  for (auto& channel : channels_) {
    std::lock_guard<std::mutex> guard(channel->mutex);  // no waiter can miss the wake-up
    channel->completed.notify_all();
  }
}

void LocalWorld::inject(const LocalFault& fault) {
  if (fault.rank < 0 || fault.rank >= size_) {
    throw InvalidArgument("fault for rank " + std::to_string(fault.rank) + " outside a world of size " +
                          std::to_string(size_));
  }
  std::lock_guard<std::mutex> guard(reason_mutex_);
  faults_.push_back(fault);
}

std::optional<LocalFault> LocalWorld::fault_for(int rank, size_t message) {
  std::lock_guard<std::mutex> guard(reason_mutex_);
  for (const LocalFault& fault : faults_) {
    const bool hit = fault.kind == LocalFault::Kind::kSlow ? message >= fault.message : message == fault.message;
    if (fault.rank == rank && hit) return fault;
  }
  return std::nullopt;
}

void LocalWorld::sleep(double seconds) {
  std::unique_lock<std::mutex> lock(reason_mutex_);
  aborting_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return aborted_.load(); });
}

void LocalWorld::post_notice(int to, const std::string& bytes) {
  {
    std::lock_guard<std::mutex> guard(reason_mutex_);
    notices_[static_cast<size_t>(to)].push_back(bytes);
    ++pending_notices_;
  }
  wake_all();
}

std::optional<std::string> LocalWorld::take_notice(int rank) {
  if (pending_notices_.load() == 0) return std::nullopt;
  std::lock_guard<std::mutex> guard(reason_mutex_);
  if (notices_[static_cast<size_t>(rank)].empty()) return std::nullopt;
  std::string bytes = std::move(notices_[static_cast<size_t>(rank)].front());
  notices_[static_cast<size_t>(rank)].pop_front();
  --pending_notices_;
  return bytes;
}

bool LocalWorld::has_notice(int rank) {
  if (pending_notices_.load() == 0) return false;
  std::lock_guard<std::mutex> guard(reason_mutex_);
  return !notices_[static_cast<size_t>(rank)].empty();
}

std::string LocalWorld::abort_reason() {
  std::lock_guard<std::mutex> guard(reason_mutex_);
  return abort_reason_;
}

LocalTransport::LocalTransport(std::shared_ptr<LocalWorld> world, int rank)
    : Transport(world->layout()), world_(std::move(world)), rank_(rank) {
  if (rank < 0 || rank >= world_->size()) {
    throw InvalidArgument("rank " + std::to_string(rank) + " is outside a world of size " +
                          std::to_string(world_->size()));
  }
}

void LocalTransport::check_peer(int peer) const {
  if (peer < 0 || peer >= world_->size()) {
    throw TransportError("peer rank " + std::to_string(peer) + " is outside a world of size " +
                         std::to_string(world_->size()));
  }
}

RequestPtr LocalTransport::isend(int peer, const void* data, size_t bytes) {
  check_peer(peer);
  auto transfer = std::make_shared<LocalTransfer>();
  transfer->send_data = data;
  transfer->bytes = bytes;
  transfer->peer = peer;
  transfer->is_send = true;
  if (const std::optional<LocalFault> fault = world_->fault_for(rank_, sends_++)) {
    if (fault->kind == LocalFault::Kind::kShort) {
      transfer->bytes = bytes > 0 ? bytes - 1 : 0;
    } else {
      world_->sleep(fault->seconds);
    }
  }
  return post(world_->channel(rank_, peer), std::move(transfer), /*is_send=*/true);
}

RequestPtr LocalTransport::irecv(int peer, void* data, size_t bytes) { return receive(peer, data, bytes, nullptr); }

// The in-process world matches each message as it comes, whatever its way,
// so a bounded send is a send.
RequestPtr LocalTransport::isend_bounded(int peer, const void* data, size_t bytes, size_t) {
  return isend(peer, data, bytes);
}

RequestPtr LocalTransport::irecv_bounded(int peer, void* data, size_t bound, size_t* received) {
  return receive(peer, data, bound, received);
}

RequestPtr LocalTransport::receive(int peer, void* data, size_t bytes, size_t* received) {
  check_peer(peer);
  auto transfer = std::make_shared<LocalTransfer>();
  transfer->recv_data = data;
  transfer->bytes = bytes;
  transfer->received = received;
  transfer->peer = peer;
  return post(world_->channel(peer, rank_), std::move(transfer), /*is_send=*/false);
}

RequestPtr LocalTransport::post(LocalChannel& channel, std::shared_ptr<LocalTransfer> transfer,
                                bool is_send) {
  if (world_->aborted()) throw TransportError("in-process world aborted: " + world_->abort_reason());
  if (world_->grouped()) {
    transfer->started = false;
    pending_.push_back({&channel, transfer, is_send});
  } else {
    start(channel, transfer, is_send);
  }
  return std::make_unique<LocalRequest>(world_, *this, channel, std::move(transfer));
}

// Matches the transfer with the oldest unmatched one of the other kind on the
// channel, or queues it until its partner is posted.
void LocalTransport::start(LocalChannel& channel, const std::shared_ptr<LocalTransfer>& transfer, bool is_send) {
  std::lock_guard<std::mutex> guard(channel.mutex);
  transfer->started = true;
  auto& partners = is_send ? channel.unmatched_recvs : channel.unmatched_sends;
  auto& waiting = is_send ? channel.unmatched_sends : channel.unmatched_recvs;
  if (partners.empty()) {
    waiting.push_back(transfer);
  } else {
    LocalTransfer& partner = *partners.front();
    complete(is_send ? *transfer : partner, is_send ? partner : *transfer);
    partners.pop_front();
    channel.completed.notify_all();
  }
}

void LocalTransport::run_pending_group() {
  std::vector<Pending> group;
  group.swap(pending_);
  for (const Pending& p : group) start(*p.channel, p.transfer, p.is_send);
  for (const Pending& p : group) wait_for(*p.channel, *p.transfer);
}

void LocalTransport::wait_for(LocalChannel& channel, const LocalTransfer& transfer) {
  std::unique_lock<std::mutex> lock(channel.mutex);
  auto finished = [&] { return transfer.done || world_->aborted() || world_->has_notice(rank_); };
  PendingWait pending{transfer.is_send, transfer.peer, transfer.bytes, wait_began(Clock::now())};
  while (!finished()) {
    if (deadline() == Clock::time_point::max()) {
      channel.completed.wait(lock);
    } else if (channel.completed.wait_until(lock, deadline()) == std::cv_status::timeout && !finished()) {
      lock.unlock();
      check_wait(pending);  // throws TimeoutError
      lock.lock();
    }
  }
  if (transfer.done) {
    if (!transfer.error.empty()) throw TransportError(transfer.error);
    return;
  }
  if (world_->aborted()) throw TransportError("in-process world aborted: " + world_->abort_reason());
  lock.unlock();
  check_notices(pending);  // throws PeerGaveUp
}

void LocalTransport::post_notice(const Notice& notice) {
  const std::string bytes = encode_notice(notice);
  for (int peer = 0; peer < world_->size(); ++peer) {
    if (peer != rank_) world_->post_notice(peer, bytes);
  }
}

std::optional<Notice> LocalTransport::receive_notice() {
  std::optional<std::string> bytes = world_->take_notice(rank_);
  if (!bytes) return std::nullopt;
  return decode_notice(*bytes);
}

void LocalTransport::withdraw_pending(const std::shared_ptr<LocalTransfer>& transfer) {
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    if (it->transfer == transfer) {
      pending_.erase(it);
      return;
    }
  }
}

}  // namespace pyallreduce
