// STAND-IN (branch rdma-verbs only): `new Pool(capacity, minBlock?, maxBlock?)`, alloc(size, waitMs?) ->
// Buffer over the region or null, free(buf) -> boolean, stats(), close().
#include "pool_js.h"

#include <memory>

namespace cubefs::pool {
namespace {

class PoolWrap : public Napi::ObjectWrap<PoolWrap> {
 public:
  static Napi::FunctionReference ctor;
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Pool",
                       {InstanceMethod<&PoolWrap::Alloc>("alloc"), InstanceMethod<&PoolWrap::Free>("free"),
                        InstanceMethod<&PoolWrap::Stats>("stats"), InstanceMethod<&PoolWrap::Close>("close")});
  }
  explicit PoolWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PoolWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) {
      Napi::TypeError::New(env, "Pool(capacity, minBlock?, maxBlock?)").ThrowAsJavaScriptException();
      return;
    }
    size_t cap = static_cast<size_t>(info[0].As<Napi::Number>().Int64Value());
    size_t minB = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int64Value() : 4096;
    size_t maxB = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int64Value() : 4u << 20;
    pool_ = std::make_unique<Pool>(cap, minB, maxB);
    if (pool_->base() == nullptr) {
      pool_.reset();
      Napi::Error::New(env, std::string("pool: cannot map ") + std::to_string(cap) + " bytes").ThrowAsJavaScriptException();
    }
  }
  Pool* pool() const { return pool_.get(); }

 private:
  Napi::Value Alloc(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!pool_ || info.Length() < 1 || !info[0].IsNumber()) return env.Null();
    size_t size = static_cast<size_t>(info[0].As<Napi::Number>().Int64Value());
    long wait = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int64Value() : 0;
    Block b = pool_->alloc(size, std::chrono::milliseconds(wait));
    if (!b) return env.Null();
    return Napi::Buffer<uint8_t>::New(env, static_cast<uint8_t*>(b.addr), size, [](Napi::Env, uint8_t*) {});
  }
  Napi::Value Free(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!pool_ || info.Length() < 1 || !info[0].IsTypedArray()) return Napi::Boolean::New(env, false);
    auto ta = info[0].As<Napi::TypedArray>();
    void* p = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    return Napi::Boolean::New(env, pool_->free(p));
  }
  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    if (!pool_) return o;
    PoolStats s = pool_->stats();
    o.Set("capacity", Napi::Number::New(env, double(s.capacity)));
    o.Set("inUseBytes", Napi::Number::New(env, double(s.inUseBytes)));
    o.Set("inUseBlocks", Napi::Number::New(env, double(s.inUseBlocks)));
    o.Set("peakBytes", Napi::Number::New(env, double(s.peakBytes)));
    o.Set("allocs", Napi::Number::New(env, double(s.allocs)));
    o.Set("frees", Napi::Number::New(env, double(s.frees)));
    o.Set("failed", Napi::Number::New(env, double(s.failed)));
    o.Set("waits", Napi::Number::New(env, double(s.waits)));
    return o;
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    pool_.reset();
    return info.Env().Undefined();
  }
  std::unique_ptr<Pool> pool_;
};
Napi::FunctionReference PoolWrap::ctor;

}  // namespace

Pool* PoolFromJs(Napi::Value v) {
  if (!v.IsObject() || PoolWrap::ctor.IsEmpty()) return nullptr;
  Napi::Object o = v.As<Napi::Object>();
  if (!o.InstanceOf(PoolWrap::ctor.Value())) return nullptr;
  return PoolWrap::Unwrap(o)->pool();
}

void RegisterPool(Napi::Env env, Napi::Object exports) {
  Napi::Function f = PoolWrap::Define(env);
  PoolWrap::ctor = Napi::Persistent(f);
  PoolWrap::ctor.SuppressDestruct();
  exports.Set("Pool", f);
}

}  // namespace cubefs::pool
