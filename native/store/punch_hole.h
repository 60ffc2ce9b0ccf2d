// native/store: what the datanode's extent store needs from the kernel that Node's fs does not offer.
//
// punchHole(fd, offset, length): fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) over the range, so a
// deleted range of a shared tiny extent gives its blocks back while the file keeps its size (the extent's
// append cursor is derived from it). Synchronous on the JS thread: one quick syscall, no buffer to hand over.
// Throws a TypeError for bad arguments, else an Error with `code` (errno name, e.g. 'EOPNOTSUPP' when the
// file system cannot punch holes), `errno` and `syscall`.
#pragma once

#include <napi.h>

namespace cubefs::store {

// Adds `punchHole` to the addon's exports.
void RegisterStore(Napi::Env env, Napi::Object exports);

}  // namespace cubefs::store
