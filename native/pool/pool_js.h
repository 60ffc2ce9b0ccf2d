// STAND-IN (branch rdma-verbs only): the JS face of Pool, until branch rdma-pool lands with the real one.
// native/rdma needs only PoolFromJs: the Pool behind a JS pool object (nullptr when it is not one).
#pragma once

#include <napi.h>

#include "pool.h"

namespace cubefs::pool {

Pool* PoolFromJs(Napi::Value v);
void RegisterPool(Napi::Env env, Napi::Object exports);

}  // namespace cubefs::pool
