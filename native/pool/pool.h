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
  // region cannot be mapped, std::invalid_argument for sizes that are not powers of two (minBlock >= 4096,
  // maxBlock >= minBlock) or a zero capacity; the JS wrapper turns both into a JS Error. (The addon builds
  // with -fexceptions for this; no exception crosses into JS.)
  Pool(size_t capacity, size_t minBlock = 4096, size_t maxBlock = 4u << 20);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // A block of at least `size` bytes. wait == 0: fail at once when none is free; otherwise wait up to `wait`.
  // Returns an empty Block on failure (counted in stats().failed).
  Block alloc(size_t size, std::chrono::milliseconds wait = std::chrono::milliseconds(0));
  // Returns a block from alloc(). Merges buddies. Freeing an address not allocated from this pool, or twice,
  // is detected and ignored (returns false) instead of corrupting the free lists.
  // (An address that is again the start of a live block, because the block was freed and handed out anew, is
  // indistinguishable from that block: owners that can hold stale addresses track their own leases, as the
  // JS buffers do.)
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

  // Added beside the interface above (additive):
  // Refuses every later alloc, wakes the waiters (they fail) and deregisters the MRs. Idempotent. Blocks
  // still out stay valid and can be freed; the region itself is unmapped by the destructor, so whoever may
  // still touch pool memory keeps the Pool alive (a shared_ptr) until it is done.
  void close();
  bool closed() const;
  // Deregisters the MR of one PD (false when there is none), for an owner that deallocates only that PD.
  // The largest block alloc() could return right now without waiting (0 when none).
  size_t largestFree() const;
  // The rounded block size alloc(size) would hand out (0 when size is 0 or above maxBlock).
  size_t blockSizeFor(size_t size) const;
  // The size of the live block starting at addr (0 when addr is not the start of an allocated block).
  size_t blockSize(const void* addr) const;

 private:
  // Units are minBlock-sized; a block of order k spans 2^k units and starts at a unit index that is a
  // multiple of 2^k. state_[unit] is 0 unless the unit starts a block: then (k + 1) | kAllocated when
  // allocated. Free blocks of order k are on an intrusive doubly linked list (next_/prev_ by unit index).
  static constexpr uint8_t kAllocated = 0x80;
  static constexpr uint32_t kNil = UINT32_MAX;
  int orderFor(size_t size) const;  // -1 when out of range
  int firstFreeOrder(int k) const;  // the smallest order >= k with a free block, or -1
  void pushFree(uint32_t unit, int k);
  void unlinkFree(uint32_t unit, int k);
  uint32_t takeBlock(int k);  // caller checked firstFreeOrder(k) >= 0; splits down to k

  void* base_ = nullptr;
  size_t capacity_ = 0, minBlock_ = 0, maxBlock_ = 0;
  unsigned minOrder_ = 0, maxOrder_ = 0;  // log2 of minBlock_ / maxBlock_
  int orders_ = 0;                        // maxOrder_ - minOrder_ + 1
  bool closed_ = false;
  mutable std::mutex mu_;                 // guards everything below (and closed_); never held across ibv calls
  std::condition_variable freed_;
  std::vector<uint32_t> heads_;           // per order: first free block's unit, or kNil
  std::vector<uint32_t> next_, prev_;     // per unit (meaningful for free block heads)
  std::vector<uint8_t> state_;
  std::vector<uint32_t> freeCount_;       // per order: blocks on the list
  PoolStats stats_{};
  mutable std::mutex mrMu_;               // guards mrs_; lock order: mrMu_ before mu_
  std::vector<std::pair<ibv_pd*, ibv_mr*>> mrs_;
};

}  // namespace cubefs::pool
