// Test hooks over libibverbs: device discovery and one registration of a Pool, each object closed in
// reverse order on every path (device -> PD -> MR). Works, and reports nothing, without an RDMA device.
#include <infiniband/verbs.h>

#include <cerrno>
#include <cstring>

#include "pool_js.h"

namespace cubefs::pool {
namespace {

Napi::Error VerbsError(Napi::Env env, const std::string& what, int err) {
  Napi::Error e = Napi::Error::New(env, what + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, err == ENODEV ? "ENODEV" : "EIO"));
  return e;
}

}  // namespace

Napi::Value RdmaDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) return out;
  for (int i = 0; i < n; i++) out.Set(static_cast<uint32_t>(i), Napi::String::New(env, ibv_get_device_name(list[i])));
  ibv_free_device_list(list);
  return out;
}

Napi::Value RdmaRegisterProbe(Napi::Env env, Pool& pool, const std::string& device) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr || n == 0) {
    if (list != nullptr) ibv_free_device_list(list);
    VerbsError(env, "no RDMA device", ENODEV).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ibv_device* dev = nullptr;
  for (int i = 0; i < n && dev == nullptr; i++)
    if (device.empty() || device == ibv_get_device_name(list[i])) dev = list[i];
  if (dev == nullptr) {
    ibv_free_device_list(list);
    VerbsError(env, "RDMA device " + device + " not found", ENODEV).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string name = ibv_get_device_name(dev);
  ibv_context* ctx = ibv_open_device(dev);
  ibv_free_device_list(list);
  if (ctx == nullptr) {
    VerbsError(env, "ibv_open_device " + name, errno ? errno : EIO).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ibv_pd* pd = ibv_alloc_pd(ctx);
  if (pd == nullptr) {
    int err = errno ? errno : EIO;
    ibv_close_device(ctx);
    VerbsError(env, "ibv_alloc_pd on " + name, err).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ibv_mr* mr = pool.registerWith(pd);
  if (mr == nullptr) {
    int err = errno ? errno : EIO;
    ibv_dealloc_pd(pd);
    ibv_close_device(ctx);
    VerbsError(env, "ibv_reg_mr of the pool on " + name, err).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("device", Napi::String::New(env, name));
  o.Set("lkey", Napi::Number::New(env, mr->lkey));
  o.Set("rkey", Napi::Number::New(env, mr->rkey));
  o.Set("length", Napi::Number::New(env, static_cast<double>(mr->length)));
  o.Set("coversPool", Napi::Boolean::New(env, mr->addr == pool.base() && mr->length == pool.capacity()));
  o.Set("sameMrTwice", Napi::Boolean::New(env, pool.registerWith(pd) == mr));
  o.Set("mrForMatches", Napi::Boolean::New(env, pool.mrFor(pd) == mr));
  o.Set("deregistered", Napi::Boolean::New(env, pool.deregister(pd) && pool.mrFor(pd) == nullptr));
  int rc = ibv_dealloc_pd(pd);
  o.Set("pdFreed", Napi::Boolean::New(env, rc == 0));
  ibv_close_device(ctx);
  return o;
}

}  // namespace cubefs::pool
