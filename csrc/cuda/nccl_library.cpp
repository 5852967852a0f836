#include "nccl_library.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "../types.h"

namespace pyallreduce::cuda {
namespace {

std::mutex library_mutex;
std::vector<std::string> candidate_paths;
bool tried = false;
NcclLibrary library;
std::string load_failure;

template <class Fn>
bool bind(void* handle, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(handle, name));
  return *fn != nullptr;
}

bool open_library(const std::string& path, std::string* failure) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    *failure += "\n  " + path + ": " + dlerror();
    return false;
  }
  NcclLibrary l;
  l.path = path;
  ncclResult_t (*get_version)(int*) = nullptr;
  const bool complete = bind(handle, "ncclGetVersion", &get_version) &&
                        bind(handle, "ncclGetUniqueId", &l.get_unique_id) &&
                        bind(handle, "ncclCommInitRank", &l.comm_init_rank) &&
                        bind(handle, "ncclCommDestroy", &l.comm_destroy) &&
                        bind(handle, "ncclCommAbort", &l.comm_abort) &&
                        bind(handle, "ncclCommGetAsyncError", &l.comm_get_async_error) &&
                        bind(handle, "ncclSend", &l.send) && bind(handle, "ncclRecv", &l.recv) &&
                        bind(handle, "ncclGroupStart", &l.group_start) &&
                        bind(handle, "ncclGroupEnd", &l.group_end) &&
                        bind(handle, "ncclGetErrorString", &l.get_error_string);
  if (!complete) {
    *failure += "\n  " + path + ": lacks an NCCL 2.7+ entry point (ncclSend/ncclRecv, ...)";
    dlclose(handle);
    return false;
  }
  get_version(&l.version);
  library = l;  // the handle stays open for the life of the process
  return true;
}

}  // namespace

void set_nccl_candidates(std::vector<std::string> paths) {
  const std::lock_guard<std::mutex> guard(library_mutex);
  candidate_paths = std::move(paths);
}

const NcclLibrary* nccl_library(std::string* why) {
  const std::lock_guard<std::mutex> guard(library_mutex);
  if (!tried) {
    tried = true;
    std::vector<std::string> paths;
    if (const char* chosen = std::getenv("PYALLREDUCE_NCCL_LIBRARY"); chosen != nullptr && *chosen != '\0') {
      paths.push_back(chosen);
    }
    paths.push_back("libnccl.so.2");
    paths.insert(paths.end(), candidate_paths.begin(), candidate_paths.end());
    bool loaded = false;
    for (const std::string& path : paths) {
      if ((loaded = open_library(path, &load_failure))) break;
    }
    if (!loaded) load_failure = "libnccl.so.2 did not load:" + load_failure;
  }
  if (library.send == nullptr) {
    if (why != nullptr) *why = load_failure;
    return nullptr;
  }
  return &library;
}

void check_nccl(const NcclLibrary& nccl, ncclResult_t rc, const char* what) {
  if (rc != kNcclSuccess) throw TransportError(std::string(what) + " failed: " + nccl.get_error_string(rc));
}

}  // namespace pyallreduce::cuda
