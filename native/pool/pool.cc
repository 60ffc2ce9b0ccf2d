#include "pool.h"

#include <infiniband/verbs.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace cubefs::pool {
namespace {

bool IsPow2(size_t v) { return v != 0 && (v & (v - 1)) == 0; }

unsigned Log2(size_t v) {
  unsigned n = 0;
  while ((size_t{1} << n) < v) n++;
  return n;
}

}  // namespace

Pool::Pool(size_t capacity, size_t minBlock, size_t maxBlock) {
  if (!IsPow2(minBlock) || minBlock < 4096) throw std::invalid_argument("minBlock must be a power of two >= 4096");
  if (!IsPow2(maxBlock) || maxBlock < minBlock) throw std::invalid_argument("maxBlock must be a power of two >= minBlock");
  if (maxBlock / minBlock > (size_t{1} << 30)) throw std::invalid_argument("maxBlock / minBlock is too large");
  if (capacity == 0) throw std::invalid_argument("capacity must be > 0");
  capacity = (capacity + maxBlock - 1) / maxBlock * maxBlock;
  if (capacity / minBlock >= kNil) throw std::invalid_argument("capacity / minBlock must be below 2^32");
  void* p = mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    throw std::runtime_error("mmap of a " + std::to_string(capacity) + "-byte pool failed: " + strerror(errno));
  }
  base_ = p;
  capacity_ = capacity;
  minBlock_ = minBlock;
  maxBlock_ = maxBlock;
  minOrder_ = Log2(minBlock);
  maxOrder_ = Log2(maxBlock);
  orders_ = static_cast<int>(maxOrder_ - minOrder_) + 1;
  size_t units = capacity / minBlock;
  heads_.assign(orders_, kNil);
  freeCount_.assign(orders_, 0);
  next_.assign(units, kNil);
  prev_.assign(units, kNil);
  state_.assign(units, 0);
  int top = orders_ - 1;
  // Pushed in reverse so the lowest addresses are handed out first.
  for (size_t u = units; u > 0;) {
    u -= size_t{1} << top;
    pushFree(static_cast<uint32_t>(u), top);
  }
  stats_.capacity = capacity;
}

Pool::~Pool() {
  close();
  if (base_ != nullptr) munmap(base_, capacity_);
  base_ = nullptr;
}

int Pool::orderFor(size_t size) const {
  if (size == 0 || size > maxBlock_) return -1;
  if (size <= minBlock_) return 0;
  return static_cast<int>(Log2(size) - minOrder_);
}

size_t Pool::blockSizeFor(size_t size) const {
  int k = orderFor(size);
  return k < 0 ? 0 : minBlock_ << k;
}

int Pool::firstFreeOrder(int k) const {
  for (int j = k; j < orders_; j++)
    if (heads_[j] != kNil) return j;
  return -1;
}

void Pool::pushFree(uint32_t unit, int k) {
  state_[unit] = static_cast<uint8_t>(k + 1);
  prev_[unit] = kNil;
  next_[unit] = heads_[k];
  if (heads_[k] != kNil) prev_[heads_[k]] = unit;
  heads_[k] = unit;
  freeCount_[k]++;
}

void Pool::unlinkFree(uint32_t unit, int k) {
  if (prev_[unit] != kNil) next_[prev_[unit]] = next_[unit];
  else heads_[k] = next_[unit];
  if (next_[unit] != kNil) prev_[next_[unit]] = prev_[unit];
  next_[unit] = prev_[unit] = kNil;
  state_[unit] = 0;
  freeCount_[k]--;
}

uint32_t Pool::takeBlock(int k) {
  int j = firstFreeOrder(k);
  uint32_t unit = heads_[j];
  unlinkFree(unit, j);
  while (j > k) {
    j--;
    pushFree(unit + (uint32_t{1} << j), j);  // the upper half stays free
  }
  state_[unit] = static_cast<uint8_t>(k + 1) | kAllocated;
  return unit;
}

Block Pool::alloc(size_t size, std::chrono::milliseconds wait) {
  int k = orderFor(size);
  std::unique_lock<std::mutex> lk(mu_);
  if (k < 0 || closed_) {
    stats_.failed++;
    return {};
  }
  if (firstFreeOrder(k) < 0) {
    if (wait.count() <= 0) {
      stats_.failed++;
      return {};
    }
    stats_.waits++;
    auto deadline = std::chrono::steady_clock::now() + wait;
    bool ok = freed_.wait_until(lk, deadline, [&] { return closed_ || firstFreeOrder(k) >= 0; });
    if (!ok || closed_) {
      stats_.failed++;
      return {};
    }
  }
  uint32_t unit = takeBlock(k);
  size_t bytes = minBlock_ << k;
  stats_.allocs++;
  stats_.inUseBlocks++;
  stats_.inUseBytes += bytes;
  if (stats_.inUseBytes > stats_.peakBytes) stats_.peakBytes = stats_.inUseBytes;
  return Block{static_cast<char*>(base_) + static_cast<size_t>(unit) * minBlock_, bytes};
}

bool Pool::free(void* addr) {
  if (!contains(addr, 1)) return false;
  size_t off = static_cast<size_t>(static_cast<char*>(addr) - static_cast<char*>(base_));
  if (off % minBlock_ != 0) return false;
  uint32_t unit = static_cast<uint32_t>(off / minBlock_);
  {
    std::lock_guard<std::mutex> lk(mu_);
    uint8_t st = state_[unit];
    if (!(st & kAllocated)) return false;  // not a block start, or already free
    int k = (st & ~kAllocated) - 1;
    stats_.frees++;
    stats_.inUseBlocks--;
    stats_.inUseBytes -= minBlock_ << k;
    while (k < orders_ - 1) {
      uint32_t buddy = unit ^ (uint32_t{1} << k);
      if (state_[buddy] != static_cast<uint8_t>(k + 1)) break;  // the buddy is not a free block of order k
      unlinkFree(buddy, k);
      state_[unit] = 0;
      unit &= ~(uint32_t{1} << k);
      k++;
    }
    pushFree(unit, k);
  }
  freed_.notify_all();
  return true;
}

size_t Pool::blockSize(const void* addr) const {
  if (!contains(addr, 1)) return 0;
  size_t off = static_cast<size_t>(static_cast<const char*>(addr) - static_cast<const char*>(base_));
  if (off % minBlock_ != 0) return 0;
  std::lock_guard<std::mutex> lk(mu_);
  uint8_t st = state_[off / minBlock_];
  return (st & kAllocated) ? minBlock_ << ((st & ~kAllocated) - 1) : 0;
}

PoolStats Pool::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

size_t Pool::largestFree() const {
  std::lock_guard<std::mutex> lk(mu_);
  for (int j = orders_ - 1; j >= 0; j--)
    if (heads_[j] != kNil) return minBlock_ << j;
  return 0;
}

bool Pool::contains(const void* addr, size_t len) const {
  auto a = reinterpret_cast<uintptr_t>(addr), b = reinterpret_cast<uintptr_t>(base_);
  return base_ != nullptr && a >= b && len <= capacity_ && a - b <= capacity_ - len;
}

void Pool::close() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
  }
  freed_.notify_all();
  deregisterAll();
}

bool Pool::closed() const {
  std::lock_guard<std::mutex> lk(mu_);
  return closed_;
}

ibv_mr* Pool::registerWith(ibv_pd* pd) {
  if (pd == nullptr) {
    errno = EINVAL;
    return nullptr;
  }
  std::lock_guard<std::mutex> lk(mrMu_);
  if (closed()) {
    errno = ESHUTDOWN;
    return nullptr;
  }
  for (auto& [p, mr] : mrs_)
    if (p == pd) return mr;
  ibv_mr* mr = ibv_reg_mr(pd, base_, capacity_, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE);
  if (mr == nullptr) return nullptr;
  mrs_.emplace_back(pd, mr);
  return mr;
}

ibv_mr* Pool::mrFor(ibv_pd* pd) const {
  std::lock_guard<std::mutex> lk(mrMu_);
  for (auto& [p, mr] : mrs_)
    if (p == pd) return mr;
  return nullptr;
}

bool Pool::deregister(ibv_pd* pd) {
  std::lock_guard<std::mutex> lk(mrMu_);
  for (auto it = mrs_.begin(); it != mrs_.end(); ++it) {
    if (it->first != pd) continue;
    ibv_dereg_mr(it->second);
    mrs_.erase(it);
    return true;
  }
  return false;
}

void Pool::deregisterAll() {
  std::lock_guard<std::mutex> lk(mrMu_);
  for (auto& [p, mr] : mrs_) ibv_dereg_mr(mr);
  mrs_.clear();
}

}  // namespace cubefs::pool
