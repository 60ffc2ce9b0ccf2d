// The native addon's entry point. Each part (fuse, rdma, pool) registers its exports here as it lands;
// for now it only reports its build, so the install proves the toolchain works.
#include <napi.h>

#include "fuse/session.h"
#include "pool/pool_js.h"
#include "rdma/rdma.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  cubefs::fuse::RegisterFuse(env, exports);
  cubefs::pool::RegisterPool(env, exports);
  cubefs::rdma::RegisterRdma(env, exports);
  return exports;
}

NODE_API_MODULE(cubefs_native, Init)
