// native/pool's exports: `Pool` (class), `rdmaDevices()` (test hook), and the way other native parts
// (native/rdma) get at the Pool behind a JS object.
#pragma once

#include <napi.h>

#include <memory>
#include <string>

#include "pool.h"

namespace cubefs::pool {

// Adds `Pool` and `rdmaDevices` to the addon's exports.
void RegisterPool(Napi::Env env, Napi::Object exports);

// The native Pool behind a JS Pool object (checked by a type tag), or null when `v` is not one (or its
// construction failed). Hold the shared_ptr for as long as pool memory may be touched (posted work
// requests, registered MRs): the region is unmapped only when the last owner lets go, even after close().
std::shared_ptr<Pool> SharedPoolFromJs(Napi::Value v);
// The same, unowned: valid while the JS object is alive and not closed.
Pool* PoolFromJs(Napi::Value v);

// rdma_probe.cc (test hooks, kept minimal until native/rdma lands):
// rdmaDevices(): string[] — the verbs devices ibv_get_device_list sees (empty without RDMA).
Napi::Value RdmaDevices(const Napi::CallbackInfo& info);
// Opens `device` (first one if empty), allocates a PD, registers the pool in it (twice: the second must
// return the same MR), deregisters, deallocates, closes. Returns { device, lkey, rkey, length, addr,
// sameMrTwice, mrForMatches, deregistered } or throws an Error with errno.
Napi::Value RdmaRegisterProbe(Napi::Env env, Pool& pool, const std::string& device);

}  // namespace cubefs::pool
