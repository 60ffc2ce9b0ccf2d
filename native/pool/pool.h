// native/pool: one memory region, a buddy allocator over it, registered once per protection domain.
//
// Ownership: the Pool owns the region and every MR registered over it; deregistration happens in close()
// (children first: MRs, then the region). Blocks are power-of-two sized, from minBlock (4 KiB) to maxBlock
// (at least 4 MiB); a request is rounded up to the next power of two. Thread-safe: one mutex guards the free
// lists; alloc may wait for a free block up to a deadline (condition variable), never busy-waits, and never
// hands out memory twice. Counters are exact under the same mutex.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

struct ibv_pd;
struct ibv_mr;

namespace cubefs::pool {

struct PoolStats {
  uint64_t capacity;      // bytes in the region
  uint64_t inUseBytes;    // bytes of allocated blocks (rounded sizes)
  uint64_t inUseBlocks;
  uint64_t peakBytes;
  uint64_t allocs;
  uint64_t frees;
  uint64_t failed;        // allocations that gave up (exhausted past their deadline, or too large)
  uint64_t waits;         // allocations that had to wait for a free
};

// One block handed out: where it is and how big it really is.
struct Block {
  void* addr = nullptr;
  size_t size = 0;        // the block's size (a power of two >= the request)
  explicit operator bool() const { return addr != nullptr; }
};

class Pool {
 public:
  // capacity is rounded up to a multiple of maxBlock. Throws std::runtime_error (with errno text) if the
  // region cannot be mapped; the JS wrapper turns that into a JS Error.
  Pool(size_t capacity, size_t minBlock = 4096, size_t maxBlock = 4u << 20);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // A block of at least `size` bytes. wait == 0: fail at once when none is free; otherwise wait up to `wait`.
  // Returns an empty Block on failure (counted in stats().failed).
  Block alloc(size_t size, std::chrono::milliseconds wait = std::chrono::milliseconds(0));
  // Returns a block from alloc(). Merges buddies. Freeing an address not allocated from this pool, or twice,
  // is detected and ignored (returns false) instead of corrupting the free lists.
  bool free(void* addr);

  PoolStats stats() const;
  bool contains(const void* addr, size_t len) const;
  void* base() const { return base_; }
  size_t capacity() const { return capacity_; }
  size_t minBlock() const { return minBlock_; }
  size_t maxBlock() const { return maxBlock_; }

  // Registers the whole region in `pd` (IBV_ACCESS_LOCAL_WRITE | REMOTE_READ | REMOTE_WRITE), once per PD;
  // returns the MR (owned by the pool) or nullptr with errno set. Only built with RDMA support.
  ibv_mr* registerWith(ibv_pd* pd);
  ibv_mr* mrFor(ibv_pd* pd) const;
  // Deregisters the MR of one PD (returns false if there is none): an RDMA context closing its PD must not
  // take the MRs of the other PDs (client and replication traffic share the pool) with it.
  bool deregister(ibv_pd* pd);
  // Deregisters every MR (idempotent). Called by the owner of the PDs before it deallocates them.
  void deregisterAll();

 private:
  // implementation detail: free lists per order, per-block state (free/allocated, order)
  void* base_ = nullptr;
  size_t capacity_ = 0, minBlock_ = 0, maxBlock_ = 0;
  unsigned minOrder_ = 0, maxOrder_ = 0;
  mutable std::mutex mu_;
  std::condition_variable freed_;
  std::vector<std::vector<uint32_t>> freeLists_;  // per order: block indexes (in minBlock units)
  std::vector<uint8_t> state_;                    // per minBlock unit: 0 not a block head, else (order+1) | allocated bit
  PoolStats stats_{};
  std::vector<std::pair<ibv_pd*, ibv_mr*>> mrs_;
};

}  // namespace cubefs::pool
