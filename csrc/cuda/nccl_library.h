// libnccl.so.2, opened at run time: pyallreduce builds and imports without
// NCCL and uses it only where it loads (the nvidia-nccl-cu12/cu13 wheels that
// torch brings, or a system NCCL). Declares the few entry points it calls,
// whose C ABI NCCL keeps stable across 2.x.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <vector>

namespace pyallreduce::cuda {

struct NcclComm;  // opaque: NCCL's ncclComm
using ncclComm_t = NcclComm*;
using ncclResult_t = int;  // 0 is ncclSuccess
constexpr ncclResult_t kNcclSuccess = 0;
constexpr int kNcclInt8 = 0;  // ncclDataType_t: transfers are counted in bytes
struct ncclUniqueId {
  char internal[128];
};

struct NcclLibrary {
  std::string path;  // what was opened
  int version = 0;   // e.g. 22704 for 2.27.4
  ncclResult_t (*get_unique_id)(ncclUniqueId*);
  ncclResult_t (*comm_init_rank)(ncclComm_t*, int, ncclUniqueId, int);
  ncclResult_t (*comm_destroy)(ncclComm_t);
  ncclResult_t (*comm_abort)(ncclComm_t);
  ncclResult_t (*comm_get_async_error)(ncclComm_t, ncclResult_t*);
  ncclResult_t (*send)(const void*, size_t, int, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*recv)(void*, size_t, int, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*group_start)();
  ncclResult_t (*group_end)();
  const char* (*get_error_string)(ncclResult_t);
};

// Sets where to look for the library (tried in order after
// $PYALLREDUCE_NCCL_LIBRARY and the loader's own search for libnccl.so.2).
void set_nccl_candidates(std::vector<std::string> paths);

// The library, opened on first use, or null where it does not load; `why`
// (if given) then says what was tried.
const NcclLibrary* nccl_library(std::string* why = nullptr);

// Throws TransportError naming `what` and NCCL's message unless rc is success.
void check_nccl(const NcclLibrary& nccl, ncclResult_t rc, const char* what);

}  // namespace pyallreduce::cuda
