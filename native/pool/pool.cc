// STAND-IN (branch rdma-verbs only): a minimal Pool so native/rdma links before the real buddy allocator
// from branch rdma-pool lands. Same interface, simpler inside: power-of-two blocks, free lists per order,
// no buddy merging. Deleted when rebasing onto the real implementation.
#include "pool.h"

#include <infiniband/verbs.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>

namespace cubefs::pool {
namespace {
unsigned Log2Ceil(size_t n) {
  unsigned o = 0;
  while ((size_t{1} << o) < n) o++;
  return o;
}
}  // namespace

Pool::Pool(size_t capacity, size_t minBlock, size_t maxBlock) {
  minOrder_ = Log2Ceil(minBlock);
  maxOrder_ = Log2Ceil(maxBlock);
  minBlock_ = size_t{1} << minOrder_;
  maxBlock_ = size_t{1} << maxOrder_;
  capacity_ = (capacity + maxBlock_ - 1) / maxBlock_ * maxBlock_;
  if (capacity_ == 0) capacity_ = maxBlock_;
  void* p = mmap(nullptr, capacity_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;  // base() == nullptr tells the caller (this build has no C++ exceptions)
  base_ = p;
  freeLists_.resize(maxOrder_ + 1);
  state_.assign(capacity_ / minBlock_, 0);
  for (size_t off = 0; off < capacity_; off += maxBlock_) freeLists_[maxOrder_].push_back(off / minBlock_);
  stats_.capacity = capacity_;
}

Pool::~Pool() {
  deregisterAll();
  if (base_ != nullptr) munmap(base_, capacity_);
}

Block Pool::alloc(size_t size, std::chrono::milliseconds wait) {
  unsigned order = std::max(minOrder_, Log2Ceil(size == 0 ? 1 : size));
  std::unique_lock<std::mutex> lk(mu_);
  if (order > maxOrder_) { stats_.failed++; return {}; }
  auto deadline = std::chrono::steady_clock::now() + wait;
  bool waited = false;
  for (;;) {
    unsigned o = order;
    while (o <= maxOrder_ && freeLists_[o].empty()) o++;
    if (o <= maxOrder_) {
      uint32_t idx = freeLists_[o].back();
      freeLists_[o].pop_back();
      while (o > order) {  // split, keep the lower half
        o--;
        freeLists_[o].push_back(idx + static_cast<uint32_t>((size_t{1} << o) / minBlock_));
      }
      state_[idx] = static_cast<uint8_t>((order + 1) | 0x80);
      size_t bytes = size_t{1} << order;
      stats_.inUseBytes += bytes;
      stats_.inUseBlocks++;
      stats_.allocs++;
      if (stats_.inUseBytes > stats_.peakBytes) stats_.peakBytes = stats_.inUseBytes;
      return {static_cast<char*>(base_) + size_t{idx} * minBlock_, bytes};
    }
    if (wait.count() == 0 || freed_.wait_until(lk, deadline) == std::cv_status::timeout) {
      stats_.failed++;
      return {};
    }
    if (!waited) { stats_.waits++; waited = true; }
  }
}

bool Pool::free(void* addr) {
  std::lock_guard<std::mutex> lk(mu_);
  auto off = static_cast<char*>(addr) - static_cast<char*>(base_);
  if (addr == nullptr || off < 0 || static_cast<size_t>(off) >= capacity_ || off % minBlock_ != 0) return false;
  size_t idx = static_cast<size_t>(off) / minBlock_;
  uint8_t st = state_[idx];
  if ((st & 0x80) == 0) return false;
  unsigned order = (st & 0x7f) - 1;
  state_[idx] = 0;
  freeLists_[order].push_back(static_cast<uint32_t>(idx));
  stats_.inUseBytes -= size_t{1} << order;
  stats_.inUseBlocks--;
  stats_.frees++;
  freed_.notify_all();
  return true;
}

PoolStats Pool::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

bool Pool::contains(const void* addr, size_t len) const {
  auto a = reinterpret_cast<uintptr_t>(addr), b = reinterpret_cast<uintptr_t>(base_);
  return a >= b && len <= capacity_ && a - b <= capacity_ - len;
}

ibv_mr* Pool::registerWith(ibv_pd* pd) {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& [p, mr] : mrs_) if (p == pd) return mr;
  ibv_mr* mr = ibv_reg_mr(pd, base_, capacity_,
                          IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE);
  if (mr != nullptr) mrs_.emplace_back(pd, mr);
  return mr;
}

ibv_mr* Pool::mrFor(ibv_pd* pd) const {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& [p, mr] : mrs_) if (p == pd) return mr;
  return nullptr;
}

bool Pool::deregister(ibv_pd* pd) {
  std::lock_guard<std::mutex> lk(mu_);
  for (size_t i = 0; i < mrs_.size(); i++) {
    if (mrs_[i].first != pd) continue;
    ibv_dereg_mr(mrs_[i].second);
    mrs_.erase(mrs_.begin() + static_cast<long>(i));
    return true;
  }
  return false;
}

void Pool::deregisterAll() {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& [p, mr] : mrs_) ibv_dereg_mr(mr);
  mrs_.clear();
}

}  // namespace cubefs::pool
