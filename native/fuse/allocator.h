// Receive buffers for the FUSE workers. A worker reads each request from /dev/fuse into a buffer taken from
// a ReceiveBufferAllocator; a write request keeps its buffer (JS sees the payload in place) until JS replies,
// and the worker takes a fresh one for its next read. The RDMA part plugs in a registered pool here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

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

// How another part hands a Session its allocator from JS (the optional last argument of mount): a
// Napi::External whose data is an AllocatorHandle (checked by its magic). The Session keeps `allocator`
// alive until it is destroyed, so blocks still held by requests can always go back.
struct AllocatorHandle {
  static constexpr uint64_t kMagic = 0x434653414c4c4f43ull;  // "CFSALLOC"
  uint64_t magic = kMagic;
  std::shared_ptr<ReceiveBufferAllocator> allocator;
};

// The process-wide default (an AlignedMallocAllocator); lives for the whole process.
ReceiveBufferAllocator& defaultAllocator();

}  // namespace cubefs::fuse
