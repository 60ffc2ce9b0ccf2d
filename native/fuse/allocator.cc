#include "allocator.h"

#include <cstdlib>

namespace cubefs::fuse {

void* AlignedMallocAllocator::alloc(size_t size) {
  void* p = nullptr;
  return posix_memalign(&p, 4096, size) == 0 ? p : nullptr;
}

void AlignedMallocAllocator::free(void* p, size_t) { std::free(p); }

ReceiveBufferAllocator& defaultAllocator() {
  static AlignedMallocAllocator instance;
  return instance;
}

}  // namespace cubefs::fuse
