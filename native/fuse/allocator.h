// Receive buffers for the FUSE workers. A worker reads each request from /dev/fuse into a buffer taken from
// a ReceiveBufferAllocator; a write request keeps its buffer (JS sees the payload in place) until JS replies,
// and the worker takes a fresh one for its next read. The RDMA part plugs in a registered pool here.
#pragma once

#include <cstddef>

namespace cubefs::fuse {

// Thread-safe: alloc runs on FUSE worker threads, free on the JS thread or a worker. alloc never blocks and
// returns nullptr when exhausted (the worker then falls back to the default allocator for that buffer).
class ReceiveBufferAllocator {
 public:
  virtual ~ReceiveBufferAllocator() = default;
  virtual void* alloc(size_t size) = 0;
  virtual void free(void* p, size_t size) = 0;
};

// posix_memalign(4096): page-aligned buffers from the C heap.
class AlignedMallocAllocator final : public ReceiveBufferAllocator {
 public:
  void* alloc(size_t size) override;
  void free(void* p, size_t size) override;
};

// The process-wide default (an AlignedMallocAllocator); lives for the whole process.
ReceiveBufferAllocator& defaultAllocator();

}  // namespace cubefs::fuse
