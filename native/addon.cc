// The native addon's entry point: each part (fuse, pool, rdma, store) registers its exports here, next to
// abiVersion, which reports the build.
#include <napi.h>

#include "fuse/session.h"
#include "pool/pool_js.h"
#include "rdma/rdma.h"
#include "store/punch_hole.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  cubefs::fuse::RegisterFuse(env, exports);
  cubefs::pool::RegisterPool(env, exports);
  cubefs::rdma::RegisterRdma(env, exports);
  cubefs::store::RegisterStore(env, exports);
  return exports;
}

NODE_API_MODULE(cubefs_native, Init)
