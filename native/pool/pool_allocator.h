// PoolAllocator: FUSE receive buffers from a Pool (a ~1 MiB + 4 KiB receive buffer takes a 2 MiB block).
//
// alloc never waits (a FUSE worker must not block): when the pool has no block it returns nullptr and the
// Session falls back to its default allocator for that buffer (counted in the session's fallbackBuffers and
// here in `fallbacks`). Ownership: shares the Pool, so the region outlives every buffer handed out.
#pragma once

#include <atomic>
#include <memory>

#include "../fuse/allocator.h"
#include "pool.h"

namespace cubefs::pool {

class PoolAllocator final : public fuse::ReceiveBufferAllocator {
 public:
  explicit PoolAllocator(std::shared_ptr<Pool> pool) : pool_(std::move(pool)) {}
  void* alloc(size_t size) override {
    Block b = pool_->alloc(size);
    if (!b) fallbacks_.fetch_add(1, std::memory_order_relaxed);
    return b.addr;
  }
  void free(void* p, size_t) override { pool_->free(p); }
  uint64_t fallbacks() const { return fallbacks_.load(std::memory_order_relaxed); }
  const std::shared_ptr<Pool>& pool() const { return pool_; }

 private:
  std::shared_ptr<Pool> pool_;
  std::atomic<uint64_t> fallbacks_{0};
};

}  // namespace cubefs::pool
