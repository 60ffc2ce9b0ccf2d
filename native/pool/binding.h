// native/pool's exports: `Pool` (class), `rdmaDevices()` (test hook).
#pragma once

#include <napi.h>

#include <string>

#include "pool.h"

namespace cubefs::pool {

// Adds `Pool` and `rdmaDevices` to the addon's exports.
void RegisterPool(Napi::Env env, Napi::Object exports);

// rdma_probe.cc (test hooks, kept minimal until native/rdma lands):
// rdmaDevices(): string[] — the verbs devices ibv_get_device_list sees (empty without RDMA).
Napi::Value RdmaDevices(const Napi::CallbackInfo& info);
// Opens `device` (first one if empty), allocates a PD, registers the pool in it (twice: the second must
// return the same MR), deregisters, deallocates, closes. Returns { device, lkey, rkey, length, addr,
// sameMrTwice, mrForMatches, deregistered } or throws an Error with errno.
Napi::Value RdmaRegisterProbe(Napi::Env env, Pool& pool, const std::string& device);

}  // namespace cubefs::pool
