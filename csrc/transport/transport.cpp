#include "transport.h"

#include <algorithm>
#include <sstream>

namespace pyallreduce {

// Fields separated by the ASCII unit separator; the text, last, is the rest
// of the message. Example: rank 2 timed out in call 7 at 1796000000.25 s,
// waiting on rank 1 since 1796000000.00 s:
// "2\x1f7\x1f1\x1f1796000000.250000\x1f1796000000.000000\x1fcall 7 (allreduce ...) failed ...".
constexpr char kSeparator = '\x1f';

std::string encode_notice(const Notice& notice) {
  std::ostringstream out;
  out.precision(6);
  out << notice.rank << kSeparator << notice.call << kSeparator << notice.waiting_on << kSeparator << std::fixed
      << notice.posted_s << kSeparator << notice.waiting_since_s << kSeparator << notice.text;
  return out.str();
}

Notice decode_notice(const std::string& bytes) {
  Notice notice;
  std::istringstream in(bytes);
  char separator[5] = {};
  if (!(in >> notice.rank).get(separator[0]) || !(in >> notice.call).get(separator[1]) ||
      !(in >> notice.waiting_on).get(separator[2]) || !(in >> notice.posted_s).get(separator[3]) ||
      !(in >> notice.waiting_since_s).get(separator[4]) ||
      std::any_of(std::begin(separator), std::end(separator), [](char c) { return c != kSeparator; })) {
    throw TransportError("received a malformed notice of " + std::to_string(bytes.size()) + " bytes");
  }
  notice.text = bytes.substr(static_cast<size_t>(in.tellg()));
  return notice;
}

HostLayout::HostLayout(const std::vector<int>& host_of) {
  std::map<int, int> number;  // a rank's host name -> its host's index here
  for (size_t r = 0; r < host_of.size(); ++r) {
    const auto found = number.emplace(host_of[r], static_cast<int>(ranks_on_.size()));
    if (found.second) ranks_on_.emplace_back();
    const int host = found.first->second;
    host_of_.push_back(host);
    local_index_.push_back(static_cast<int>(ranks_on_[static_cast<size_t>(host)].size()));
    ranks_on_[static_cast<size_t>(host)].push_back(static_cast<int>(r));
  }
}

int HostLayout::fewest_ranks_per_host() const {
  size_t fewest = ranks_on_.empty() ? 0 : ranks_on_.front().size();
  for (const auto& ranks : ranks_on_) fewest = std::min(fewest, ranks.size());
  return static_cast<int>(fewest);
}

int HostLayout::most_ranks_per_host() const {
  size_t most = 0;
  for (const auto& ranks : ranks_on_) most = std::max(most, ranks.size());
  return static_cast<int>(most);
}

HostLayout HostLayout::subset(const std::vector<int>& members) const {
  std::vector<int> host_of;
  for (int rank : members) host_of.push_back(this->host_of(rank));
  return HostLayout(host_of);
}

std::string HostLayout::describe() const {
  const int fewest = fewest_ranks_per_host();
  const auto plural = [](int n, const char* what) { return std::to_string(n) + " " + what + (n == 1 ? "" : "s"); };
  if (fewest == most_ranks_per_host()) return plural(hosts(), "host") + " x " + plural(fewest, "rank");
  std::string text = plural(hosts(), "host") + " (";
  for (int h = 0; h < hosts(); ++h) text += (h ? ", " : "") + std::to_string(ranks_on(h).size());
  return text + " ranks)";
}

GroupTransport::GroupTransport(Transport& parent, std::vector<int> members)
    : Transport(parent.layout().subset(members)), parent_(parent), members_(std::move(members)) {
  const auto mine = std::find(members_.begin(), members_.end(), parent.rank());
  if (mine == members_.end()) throw InvalidArgument("GroupTransport: this rank is not a member of the group");
  rank_ = static_cast<int>(mine - members_.begin());
}

int GroupTransport::parent_rank(int peer) const {
  if (peer < 0 || peer >= size()) {
    throw InvalidArgument("GroupTransport: peer " + std::to_string(peer) + " outside a group of " +
                          std::to_string(size()));
  }
  return members_[static_cast<size_t>(peer)];
}

RequestPtr GroupTransport::isend(int peer, const void* data, size_t bytes) {
  return parent_.isend(parent_rank(peer), data, bytes);
}

RequestPtr GroupTransport::irecv(int peer, void* data, size_t bytes) {
  return parent_.irecv(parent_rank(peer), data, bytes);
}

namespace {
[[noreturn]] void no_bounded_messages() {
  throw TransportError("this transport cannot carry messages of unknown length");
}
}  // namespace

RequestPtr Transport::isend_bounded(int, const void*, size_t, size_t) { no_bounded_messages(); }
RequestPtr Transport::irecv_bounded(int, void*, size_t, size_t*) { no_bounded_messages(); }

double PendingWait::waited_s() const {
  return since == Clock::time_point{} ? 0 : std::chrono::duration<double>(Clock::now() - since).count();
}

PeerGaveUp::PeerGaveUp(const Notice& notice, const PendingWait& wait)
    : TransportError("rank " + std::to_string(notice.rank) + " gave up on call " + std::to_string(notice.call) +
                     ": " + notice.text),
      notice_(notice),
      waiting_for_(wait.peer),
      waited_s_(wait.waited_s()) {}

const std::map<int, Notice>& Transport::collect_notices() {
  while (std::optional<Notice> notice = receive_notice()) notices_.emplace(notice->rank, std::move(*notice));
  return notices_;
}

void Transport::check_notices(const PendingWait& wait) {
  const auto& notices = collect_notices();
  if (notices.empty()) return;
  const auto it = notices.find(wait.peer);
  throw PeerGaveUp(it != notices.end() ? it->second : notices.begin()->second, wait);
}

void Transport::check_wait(PendingWait& wait) {
  const Clock::time_point now = Clock::now();
  if (wait.since == Clock::time_point{}) wait.since = wait_began(now);
  if (now >= next_notice_check_) {
    next_notice_check_ = now + std::chrono::milliseconds(1);
    check_notices(wait);
  }
  if (now >= deadline_) {
    const std::string bytes = std::to_string(wait.bytes) + " bytes";
    const std::string peer = "rank " + std::to_string(wait.peer);
    throw TimeoutError(wait.is_send ? "timed out waiting for " + peer + " to receive " + bytes
                                    : "timed out waiting to receive " + bytes + " from " + peer,
                       wait.peer, wait.waited_s());
  }
}

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
