// The JS face of native/pool: `Pool` (one native Pool per object) and its buffers.
//
// A buffer handed to JS is an external Buffer of exactly the requested length over a pool block, tracked by
// a Lease. free(buf) detaches the Buffer (length 0 from then on, so a stale reference cannot reach the
// block once it is recycled) and returns the block; a Buffer dropped without free() returns its block when
// it is collected. close() does the same for every live buffer, fails the waiters and refuses later
// allocations; the region itself goes when the last owner (this object, a FUSE session's allocator, an RDMA
// connection) lets go of the native Pool.
//
// Threads: everything here runs on the JS thread except AllocWorker::Execute (a libuv pool thread, which
// only calls Pool::alloc) and the stress threads. No C++ exception crosses into JS.
#include "pool_js.h"

#include <napi.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "pool.h"
#include "pool_allocator.h"

namespace cubefs::pool {
namespace {

struct Shared;

// One JS buffer over one block. Owned by the Buffer's finalizer (deleted there); `freed` once the block
// went back (by free(), close(), or the finalizer itself).
struct Lease {
  std::shared_ptr<Shared> shared;
  void* addr = nullptr;
  bool freed = false;
  napi_ref ref = nullptr;  // weak: the Buffer, to detach it
};

// What the PoolWrap and its leases share: the pool and the live leases by address (JS thread only).
struct Shared {
  std::shared_ptr<Pool> pool;
  std::shared_ptr<PoolAllocator> receive;  // made on first use
  std::unordered_map<void*, Lease*> leases;
};

void DetachAndForget(napi_env env, Lease* l) {
  if (l->ref == nullptr) return;
  napi_value buf;
  if (env != nullptr && napi_get_reference_value(env, l->ref, &buf) == napi_ok && buf != nullptr) {
    napi_value ab;
    if (napi_get_typedarray_info(env, buf, nullptr, nullptr, nullptr, &ab, nullptr) == napi_ok) {
      napi_detach_arraybuffer(env, ab);
    }
  }
  if (env != nullptr) napi_delete_reference(env, l->ref);
  l->ref = nullptr;
}

// Returns the block (once) and drops the lease from the live table; the Lease object stays for the finalizer.
void Release(napi_env env, Lease* l) {
  if (l->freed) return;
  l->freed = true;
  DetachAndForget(env, l);
  l->shared->leases.erase(l->addr);
  l->shared->pool->free(l->addr);
}

void FinalizeLease(napi_env env, void* /*data*/, void* hint) {
  auto* l = static_cast<Lease*>(hint);
  if (!l->freed) {
    l->freed = true;
    l->shared->leases.erase(l->addr);
    l->shared->pool->free(l->addr);
  }
  if (l->ref != nullptr && env != nullptr) napi_delete_reference(env, l->ref);
  l->ref = nullptr;
  delete l;
}

Napi::Error CodedError(Napi::Env env, const std::string& msg, const char* code, int err) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  if (err != 0) e.Set("errno", Napi::Number::New(env, err));
  return e;
}

Napi::Object StatsObject(Napi::Env env, const Shared& sh) {
  PoolStats s = sh.pool->stats();
  Napi::Object o = Napi::Object::New(env);
  auto num = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
  num("capacity", static_cast<double>(s.capacity));
  num("minBlock", static_cast<double>(sh.pool->minBlock()));
  num("maxBlock", static_cast<double>(sh.pool->maxBlock()));
  num("inUseBytes", static_cast<double>(s.inUseBytes));
  num("inUseBlocks", static_cast<double>(s.inUseBlocks));
  num("peakBytes", static_cast<double>(s.peakBytes));
  num("allocs", static_cast<double>(s.allocs));
  num("frees", static_cast<double>(s.frees));
  num("failed", static_cast<double>(s.failed));
  num("waits", static_cast<double>(s.waits));
  num("largestFree", static_cast<double>(sh.pool->largestFree()));
  num("jsBuffers", static_cast<double>(sh.leases.size()));
  num("receiveFallbacks", static_cast<double>(sh.receive ? sh.receive->fallbacks() : 0));
  o.Set("closed", Napi::Boolean::New(env, sh.pool->closed()));
  return o;
}

std::string Mib(uint64_t b) {
  char s[32];
  snprintf(s, sizeof s, "%.2f MiB", static_cast<double>(b) / (1 << 20));
  return s;
}

// The Error for an allocation that got no block: ENOMEM (exhausted), EINVAL (size out of range) or
// ESHUTDOWN (closed), with the pool's stats attached as `stats`.
Napi::Error AllocError(Napi::Env env, const Shared& sh, size_t size, uint32_t waitMs) {
  Napi::Error e;
  if (sh.pool->closed()) {
    e = CodedError(env, "pool is closed", "ESHUTDOWN", ESHUTDOWN);
  } else if (sh.pool->blockSizeFor(size) == 0) {
    e = CodedError(env, "pool alloc of " + std::to_string(size) + " bytes: the size must be 1.." +
                            std::to_string(sh.pool->maxBlock()) + " (maxBlock)", "EINVAL", EINVAL);
  } else {
    PoolStats s = sh.pool->stats();
    std::string msg = "pool exhausted: no free " + std::to_string(sh.pool->blockSizeFor(size)) + "-byte block for " +
                      std::to_string(size) + " bytes" +
                      (waitMs ? " within " + std::to_string(waitMs) + " ms" : std::string(" (no wait)")) +
                      " (in use " + Mib(s.inUseBytes) + " of " + Mib(s.capacity) + " in " +
                      std::to_string(s.inUseBlocks) + " blocks, largest free " +
                      std::to_string(sh.pool->largestFree()) + " bytes, failed " + std::to_string(s.failed) + ")";
    e = CodedError(env, msg, "ENOMEM", ENOMEM);
  }
  e.Set("stats", StatsObject(env, sh));
  return e;
}

// An external Buffer of `size` bytes over the block at `addr`, tracked as a live lease.
Napi::Value MakeBuffer(Napi::Env env, const std::shared_ptr<Shared>& sh, void* addr, size_t size) {
  auto* l = new Lease{sh, addr};
  napi_value buf;
  if (napi_create_external_buffer(env, size, addr, FinalizeLease, l, &buf) != napi_ok) {
    sh->pool->free(addr);
    delete l;
    if (!env.IsExceptionPending()) CodedError(env, "cannot create an external Buffer over pool memory", "EIO", EIO)
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  napi_create_reference(env, buf, 0, &l->ref);
  sh->leases.emplace(addr, l);
  return Napi::Value(env, buf);
}

class AllocWorker : public Napi::AsyncWorker {
 public:
  AllocWorker(Napi::Env env, Napi::Object owner, std::shared_ptr<Shared> sh, size_t size, uint32_t waitMs)
      : Napi::AsyncWorker(env, "cubefs-pool-alloc"), deferred_(Napi::Promise::Deferred::New(env)),
        sh_(std::move(sh)), size_(size), waitMs_(waitMs) {
    owner_ = Napi::Persistent(owner);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { block_ = sh_->pool->alloc(size_, std::chrono::milliseconds(waitMs_)); }
  void OnOK() override {
    Napi::Env env = Env();
    if (block_ && sh_->pool->closed()) {  // got a block just before close(): the caller sees the close
      sh_->pool->free(block_.addr);
      block_ = Block{};
    }
    if (!block_) {
      deferred_.Reject(AllocError(env, *sh_, size_, waitMs_).Value());
      return;
    }
    Napi::Value b = MakeBuffer(env, sh_, block_.addr, size_);
    if (env.IsExceptionPending()) {
      deferred_.Reject(env.GetAndClearPendingException().Value());
      return;
    }
    deferred_.Resolve(b);
  }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference owner_;
  std::shared_ptr<Shared> sh_;
  size_t size_;
  uint32_t waitMs_;
  Block block_;
};

// ---- the stress hook: threads alloc, fill, verify and free concurrently ----

struct StressResult {
  uint64_t allocs = 0, failed = 0, violations = 0;
  std::string first;
};

void StressThread(Pool* pool, unsigned tid, unsigned iterations, uint32_t waitMs, StressResult* out) {
  std::mt19937_64 rng(0x9e3779b97f4a7c15ull * (tid + 1));
  struct Live {
    char* addr;
    size_t size, block;
    uint64_t tag;
  };
  std::vector<Live> live;
  const size_t unit = pool->minBlock();
  auto violation = [&](const std::string& what) {
    if (out->violations++ == 0) out->first = "thread " + std::to_string(tid) + ": " + what;
  };
  auto check = [&](const Live& l) {
    for (size_t off = 0; off < l.block; off += unit) {
      uint64_t v;
      memcpy(&v, l.addr + off, sizeof v);
      if (v != l.tag + off) {
        violation("block at offset " + std::to_string(l.addr - static_cast<char*>(pool->base())) +
                  " was overwritten at +" + std::to_string(off) + " (overlapping blocks)");
        return;
      }
    }
  };
  auto release = [&](size_t i) {
    check(live[i]);
    if (!pool->free(live[i].addr)) violation("free of a live block was refused");
    live[i] = live.back();
    live.pop_back();
  };
  for (unsigned it = 0; it < iterations; it++) {
    bool doAlloc = live.empty() || (live.size() < 24 && (rng() & 1));
    if (!doAlloc) {
      release(rng() % live.size());
      continue;
    }
    size_t size;
    unsigned r = rng() % 100;
    if (r < 70) size = 1 + rng() % (16 * 1024);
    else if (r < 95) size = 1 + rng() % (256 * 1024);
    else size = 1 + rng() % pool->maxBlock();
    Block b = pool->alloc(size, std::chrono::milliseconds(rng() % 4 == 0 ? waitMs : 0));
    if (!b) {
      out->failed++;
      if (!live.empty()) release(rng() % live.size());
      continue;
    }
    out->allocs++;
    auto off = static_cast<size_t>(static_cast<char*>(b.addr) - static_cast<char*>(pool->base()));
    if (b.size < size || (b.size & (b.size - 1)) != 0 || off % b.size != 0 || !pool->contains(b.addr, b.size)) {
      violation("bad block: " + std::to_string(b.size) + " bytes at offset " + std::to_string(off) + " for " +
                std::to_string(size));
    }
    Live l{static_cast<char*>(b.addr), size, b.size, (static_cast<uint64_t>(tid) << 48) ^ (static_cast<uint64_t>(it) << 24)};
    for (size_t o = 0; o < l.block; o += unit) {
      uint64_t v = l.tag + o;
      memcpy(l.addr + o, &v, sizeof v);
    }
    live.push_back(l);
  }
  while (!live.empty()) release(live.size() - 1);
}

}  // namespace

// Marks JS objects that are PoolWraps (SharedPoolFromJs checks it before unwrapping).
constexpr napi_type_tag kPoolTag = {0x63756265'66732d70ull, 0x6f6f6c2d'77726170ull};  // "cubefs-pool-wrap"

class PoolWrap : public Napi::ObjectWrap<PoolWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Pool",
                       {
                           InstanceMethod<&PoolWrap::Alloc>("alloc"),
                           InstanceMethod<&PoolWrap::AllocAsync>("allocAsync"),
                           InstanceMethod<&PoolWrap::Free>("free"),
                           InstanceMethod<&PoolWrap::Contains>("contains"),
                           InstanceMethod<&PoolWrap::Stats>("stats"),
                           InstanceMethod<&PoolWrap::Close>("close"),
                           InstanceMethod<&PoolWrap::ReceiveAllocator>("receiveAllocator"),
                           InstanceMethod<&PoolWrap::Stress>("_stress"),
                           InstanceMethod<&PoolWrap::RdmaSelfTest>("_rdmaSelfTest"),
                       });
  }

  // new Pool(capacity, minBlock = 4096, maxBlock = 4 MiB): src/pool validates the numbers first.
  explicit PoolWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PoolWrap>(info) {
    Napi::Env env = info.Env();
    auto opt = [&](size_t i, double dflt) { return info.Length() > i && info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : dflt; };
    if (info.Length() < 1 || !info[0].IsNumber() || opt(0, 0) < 1 || opt(1, 4096) < 1 || opt(2, 4 << 20) < 1) {
      Napi::TypeError::New(env, "Pool(capacity, minBlock?, maxBlock?)").ThrowAsJavaScriptException();
      return;
    }
    auto cap = static_cast<size_t>(opt(0, 0));
    auto minB = static_cast<size_t>(opt(1, 4096));
    auto maxB = static_cast<size_t>(opt(2, 4 << 20));
    napi_type_tag_object(env, info.This(), &kPoolTag);
    try {
      sh_ = std::make_shared<Shared>();
      sh_->pool = std::make_shared<Pool>(cap, minB, maxB);
    } catch (const std::invalid_argument& e) {
      sh_.reset();
      CodedError(env, e.what(), "EINVAL", EINVAL).ThrowAsJavaScriptException();
    } catch (const std::exception& e) {
      sh_.reset();
      CodedError(env, e.what(), "ENOMEM", ENOMEM).ThrowAsJavaScriptException();
    }
  }

  ~PoolWrap() override = default;

  // The pool for native/rdma and others in this addon (null before construction succeeded).
  std::shared_ptr<Pool> pool() const { return sh_ ? sh_->pool : nullptr; }

 private:
  bool Usable(Napi::Env env) {
    if (sh_) return true;
    CodedError(env, "pool was not created", "EINVAL", EINVAL).ThrowAsJavaScriptException();
    return false;
  }

  // (size, waitMs?) of alloc and allocAsync; a size out of range becomes 0, which alloc refuses clearly.
  static bool AllocArgs(const Napi::CallbackInfo& info, size_t* size, uint32_t* waitMs) {
    if (info.Length() < 1 || !info[0].IsNumber()) {
      Napi::TypeError::New(info.Env(), "alloc(size, waitMs?)").ThrowAsJavaScriptException();
      return false;
    }
    double want = info[0].As<Napi::Number>().DoubleValue();
    *size = want >= 1 && want <= 1e15 ? static_cast<size_t>(want) : 0;
    *waitMs = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 0;
    return true;
  }

  // alloc(size, waitMs): Buffer. Waits on the calling thread (use allocAsync on the main thread).
  Napi::Value Alloc(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    size_t size = 0;
    uint32_t waitMs = 0;
    if (!Usable(env) || !AllocArgs(info, &size, &waitMs)) return env.Undefined();
    Block b = sh_->pool->alloc(size, std::chrono::milliseconds(waitMs));
    if (!b) {
      AllocError(env, *sh_, size, waitMs).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return MakeBuffer(env, sh_, b.addr, size);
  }

  // allocAsync(size, waitMs): Promise<Buffer>; the wait happens on a libuv pool thread.
  Napi::Value AllocAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    size_t size = 0;
    uint32_t waitMs = 0;
    if (!Usable(env) || !AllocArgs(info, &size, &waitMs)) return env.Undefined();
    auto* w = new AllocWorker(env, info.This().As<Napi::Object>(), sh_, size, waitMs);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  // contains(view): true when every byte of the typed array lies inside the pool's region (a pool buffer or
  // a view inside one, e.g. a FUSE write payload in a receive buffer). Does not check that it is allocated.
  Napi::Value Contains(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsTypedArray()) {
      Napi::TypeError::New(env, "contains(buffer)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    napi_value ab;
    void* data = nullptr;
    size_t len = 0;
    napi_get_typedarray_info(env, info[0], nullptr, &len, &data, &ab, nullptr);
    bool detached = false;
    napi_is_detached_arraybuffer(env, ab, &detached);
    if (detached || data == nullptr || len == 0) return Napi::Boolean::New(env, false);
    return Napi::Boolean::New(env, sh_->pool->contains(data, len));
  }

  // free(buf): true when the block went back; false when this buffer was already freed (or detached).
  // Throws (EINVAL) for a buffer that is not one this pool handed out.
  Napi::Value Free(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsTypedArray()) {
      Napi::TypeError::New(env, "free(buffer)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    napi_value ab;
    void* data = nullptr;
    size_t len = 0, byteOffset = 0;
    napi_get_typedarray_info(env, info[0], nullptr, &len, &data, &ab, &byteOffset);
    bool detached = false;
    napi_is_detached_arraybuffer(env, ab, &detached);
    if (detached) return Napi::Boolean::New(env, false);
    auto it = sh_->leases.find(data);
    bool same = false;
    if (it != sh_->leases.end() && byteOffset == 0) {
      napi_value mine;
      if (it->second->ref != nullptr && napi_get_reference_value(env, it->second->ref, &mine) == napi_ok &&
          mine != nullptr) {
        napi_value mineAb;
        napi_get_typedarray_info(env, mine, nullptr, nullptr, nullptr, &mineAb, nullptr);
        napi_strict_equals(env, mineAb, ab, &same);
      }
    }
    if (!same) {
      std::string why = sh_->pool->contains(data, len ? len : 1) ? "a view inside a pool buffer, not the buffer itself"
                                                                  : "not a buffer from this pool";
      CodedError(env, "pool free refused: " + why, "EINVAL", EINVAL).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Release(env, it->second);
    return Napi::Boolean::New(env, true);
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env)) return env.Undefined();
    return StatsObject(env, *sh_);
  }

  // close(): detaches and returns every live buffer, fails the waiters, refuses later allocations.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!sh_) return env.Undefined();
    sh_->pool->close();  // first: the blocks returned below must not go to a waiter
    std::vector<Lease*> live;
    for (auto& [addr, l] : sh_->leases) live.push_back(l);
    for (Lease* l : live) Release(env, l);
    return env.Undefined();
  }

  // receiveAllocator(): an External (fuse::AllocatorHandle) for FuseSession.mount's allocator argument.
  Napi::Value ReceiveAllocator(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env)) return env.Undefined();
    if (!sh_->receive) sh_->receive = std::make_shared<PoolAllocator>(sh_->pool);
    auto* h = new fuse::AllocatorHandle{};
    h->allocator = sh_->receive;
    return Napi::External<fuse::AllocatorHandle>::New(env, h, [](Napi::Env, fuse::AllocatorHandle* p) { delete p; });
  }

  // _stress(threads, iterations, waitMs): runs the threads to completion (blocking this thread) and returns
  // { allocs, failed, violations, first }.
  Napi::Value Stress(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env)) return env.Undefined();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
      Napi::TypeError::New(env, "_stress(threads, iterations, waitMs?)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    unsigned threads = info[0].As<Napi::Number>().Uint32Value();
    unsigned iterations = info[1].As<Napi::Number>().Uint32Value();
    uint32_t waitMs = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Uint32Value() : 2;
    if (threads < 1 || threads > 256) {
      Napi::RangeError::New(env, "threads must be 1..256").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    std::vector<StressResult> res(threads);
    std::vector<std::thread> ts;
    Pool* p = sh_->pool.get();
    for (unsigned i = 0; i < threads; i++) ts.emplace_back(StressThread, p, i, iterations, waitMs, &res[i]);
    for (auto& t : ts) t.join();
    StressResult all;
    for (auto& r : res) {
      all.allocs += r.allocs;
      all.failed += r.failed;
      if (all.violations == 0 && r.violations) all.first = r.first;
      all.violations += r.violations;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("allocs", Napi::Number::New(env, static_cast<double>(all.allocs)));
    o.Set("failed", Napi::Number::New(env, static_cast<double>(all.failed)));
    o.Set("violations", Napi::Number::New(env, static_cast<double>(all.violations)));
    o.Set("first", Napi::String::New(env, all.first));
    return o;
  }

  Napi::Value RdmaSelfTest(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!Usable(env)) return env.Undefined();
    std::string dev = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    return RdmaRegisterProbe(env, *sh_->pool, dev);
  }

  std::shared_ptr<Shared> sh_;
};

std::shared_ptr<Pool> SharedPoolFromJs(Napi::Value v) {
  if (!v.IsObject()) return nullptr;
  bool tagged = false;
  if (napi_check_object_type_tag(v.Env(), v, &kPoolTag, &tagged) != napi_ok || !tagged) return nullptr;
  PoolWrap* w = PoolWrap::Unwrap(v.As<Napi::Object>());
  return w != nullptr ? w->pool() : nullptr;
}

Pool* PoolFromJs(Napi::Value v) {
  std::shared_ptr<Pool> p = SharedPoolFromJs(v);
  return p && !p->closed() ? p.get() : nullptr;
}

void RegisterPool(Napi::Env env, Napi::Object exports) {
  exports.Set("Pool", PoolWrap::Define(env));
  exports.Set("rdmaDevices", Napi::Function::New(env, RdmaDevices, "rdmaDevices"));
}

}  // namespace cubefs::pool
