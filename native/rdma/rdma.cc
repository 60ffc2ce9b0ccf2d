#include "rdma.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "../pool/pool_js.h"

namespace cubefs::rdma {
namespace {

// ---- big-endian fields ----
void Put16(uint8_t* p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
void Put32(uint8_t* p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = v >> (24 - 8 * i); }
void Put64(uint8_t* p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = v >> (56 - 8 * i); }
uint16_t Get16(const uint8_t* p) { return uint16_t(p[0] << 8 | p[1]); }
uint32_t Get32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }
uint64_t Get64(const uint8_t* p) { return uint64_t(Get32(p)) << 32 | Get32(p + 4); }

// Connect private data (docs/rdma.md): magic, version, recvDepth, blockSize, flags, 16 reserved bytes.
constexpr size_t kPrivateLen = 32;

const char* ErrnoName(int err) {
  const char* n = strerrorname_np(err);
  return n != nullptr ? n : "EIO";
}

Napi::Error MakeError(Napi::Env env, const std::string& msg, int err, const char* syscall = nullptr) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  if (syscall != nullptr) e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

// "what: strerror(errno)" for a failed verbs or rdma_cm call.
std::string Failed(const char* call, int err) { return std::string(call) + ": " + strerror(err); }

std::string AddrString(const sockaddr* sa) {
  if (sa == nullptr) return "?";
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (sa->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
    return std::string(host) + ":" + std::to_string(port);
  }
  if (sa->sa_family == AF_INET6) {
    auto* in = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in->sin6_addr, host, sizeof host);
    port = ntohs(in->sin6_port);
    return "[" + std::string(host) + "]:" + std::to_string(port);
  }
  return "?";
}

const char* WrKindName(WrKind k) {
  switch (k) {
    case WrKind::Send: return "send";
    case WrKind::Recv: return "receive";
    case WrKind::Read: return "RDMA read";
    case WrKind::Write: return "RDMA write";
  }
  return "?";
}

void* IdTag(uint32_t id) { return reinterpret_cast<void*>(static_cast<uintptr_t>(id)); }
uint32_t TagId(void* p) { return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(p)); }

bool SetNonBlocking(int fd) { return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0; }

// The pointer and length of a Buffer/TypedArray argument.
bool BytesOf(const Napi::Value& v, uint8_t** p, size_t* len) {
  if (!v.IsTypedArray()) return false;
  auto ta = v.As<Napi::TypedArray>();
  *p = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  *len = ta.ByteLength();
  return true;
}

unsigned OptUint(const Napi::Object& o, const char* name, unsigned def) {
  Napi::Value v = o.Get(name);
  return v.IsNumber() ? v.As<Napi::Number>().Uint32Value() : def;
}

bool ReadOptions(Napi::Env env, const Napi::Value& v, ChannelOptions* opt) {
  if (v.IsObject()) {
    Napi::Object o = v.As<Napi::Object>();
    opt->recvDepth = OptUint(o, "recvDepth", kDefaultRecvDepth);
    opt->maxRdma = OptUint(o, "maxRdma", kDefaultMaxRdma);
    opt->timeoutMs = static_cast<int>(OptUint(o, "timeoutMs", 5000));
    opt->rnrRetry = static_cast<uint8_t>(std::min(7u, OptUint(o, "rnrRetry", 7)));
  }
  if (opt->recvDepth < kMinRecvDepth || opt->recvDepth > kMaxRecvDepth || opt->maxRdma < 1 || opt->maxRdma > 1024) {
    Napi::RangeError::New(env, "recvDepth must be " + std::to_string(kMinRecvDepth) + ".." +
                                   std::to_string(kMaxRecvDepth) + " and maxRdma 1..1024")
        .ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

bool ResolveHost(const std::string& host, unsigned port, sockaddr_storage* out, std::string* err) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string ps = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), ps.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    *err = "cannot resolve " + host + ": " + gai_strerror(rc);
    return false;
  }
  memcpy(out, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  return true;
}

}  // namespace

// ---- device discovery ----

// rdmaDeviceInfo(): [{ name, guid, ports: [{ port, linkLayer, mtu, speed?, state }] }] for devices with an active
// port; no device (or no kernel support) is an empty list.
Napi::Value Devices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) return out;
  uint32_t k = 0;
  for (int i = 0; i < n; i++) {
    ibv_context* c = ibv_open_device(list[i]);
    if (c == nullptr) continue;
    ibv_device_attr da{};
    if (ibv_query_device(c, &da) == 0) {
      Napi::Array ports = Napi::Array::New(env);
      uint32_t np = 0;
      for (uint8_t p = 1; p <= da.phys_port_cnt; p++) {
        ibv_port_attr pa{};
        if (ibv_query_port(c, p, &pa) != 0 || pa.state != IBV_PORT_ACTIVE) continue;
        Napi::Object po = Napi::Object::New(env);
        po.Set("port", Napi::Number::New(env, p));
        po.Set("linkLayer", Napi::String::New(env, pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet" : "InfiniBand"));
        po.Set("mtu", Napi::Number::New(env, 128 << pa.active_mtu));
        po.Set("state", Napi::String::New(env, ibv_port_state_str(pa.state)));
        ports.Set(np++, po);
      }
      if (np > 0) {
        char guid[24];
        uint64_t g = be64toh(ibv_get_device_guid(list[i]));
        snprintf(guid, sizeof guid, "%016llx", static_cast<unsigned long long>(g));
        Napi::Object d = Napi::Object::New(env);
        d.Set("name", Napi::String::New(env, ibv_get_device_name(list[i])));
        d.Set("guid", Napi::String::New(env, guid));
        d.Set("ports", ports);
        out.Set(k++, d);
      }
    }
    ibv_close_device(c);
  }
  ibv_free_device_list(list);
  return out;
}

// ---- Context ----

Napi::Function Context::Define(Napi::Env env) {
  return DefineClass(env, "RdmaContext",
                     {
                         InstanceMethod<&Context::Connect>("connect"),
                         InstanceMethod<&Context::Listen>("listen"),
                         InstanceMethod<&Context::Send>("send"),
                         InstanceMethod<&Context::Rdma>("rdma"),
                         InstanceMethod<&Context::Fail>("fail"),
                         InstanceMethod<&Context::ForceError>("forceError"),
                         InstanceMethod<&Context::CloseChannel>("closeChannel"),
                         InstanceMethod<&Context::CloseListener>("closeListener"),
                         InstanceMethod<&Context::ChannelStatsJs>("channelStats"),
                         InstanceMethod<&Context::Info>("info"),
                         InstanceMethod<&Context::Close>("close"),
                     });
}

// new RdmaContext(pool, device: string | undefined, onEvents: (events: object[]) => void)
Context::Context(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Context>(info) {
  Napi::Env env = info.Env();
  closed_ = true;  // until fully built: close() and the destructor then free only what exists
  if (info.Length() < 3 || !info[2].IsFunction() || !(info[1].IsString() || info[1].IsUndefined())) {
    Napi::TypeError::New(env, "RdmaContext(pool, device?, onEvents)").ThrowAsJavaScriptException();
    return;
  }
  trace_ = getenv("CUBEFS_RDMA_TRACE") != nullptr;
  pool_ = pool::PoolFromJs(info[0]);
  if (pool_ == nullptr) {
    Napi::TypeError::New(env, "RdmaContext: the first argument must be a native pool").ThrowAsJavaScriptException();
    return;
  }
  std::string want = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  auto fail = [&](const std::string& msg, int err, const char* call) {
    closed_ = false;
    closeNative(nullptr);
    MakeError(env, msg, err, call).ThrowAsJavaScriptException();
  };

  int n = 0;
  errno = 0;
  devList_ = rdma_get_devices(&n);
  if (devList_ == nullptr || n == 0) {
    int err = errno != 0 ? errno : ENODEV;
    fail(std::string("no RDMA device") + (errno != 0 ? std::string(" (rdma_get_devices: ") + strerror(err) + ")" : ""),
         ENODEV, "rdma_get_devices");
    return;
  }
  std::string names;
  for (int i = 0; i < n && verbs_ == nullptr; i++) {
    std::string name = ibv_get_device_name(devList_[i]->device);
    names += (names.empty() ? "" : ", ") + name;
    if (!want.empty() && name != want) continue;
    ibv_device_attr da{};
    if (ibv_query_device(devList_[i], &da) != 0) continue;
    for (uint8_t p = 1; p <= da.phys_port_cnt; p++) {
      ibv_port_attr pa{};
      if (ibv_query_port(devList_[i], p, &pa) == 0 && pa.state == IBV_PORT_ACTIVE) {
        verbs_ = devList_[i];
        device_ = name;
        port_ = p;
        maxRdAtom_ = std::max(1, std::min(da.max_qp_rd_atom, 16));
        maxInitRdAtom_ = std::max(1, std::min(da.max_qp_init_rd_atom, 16));
        break;
      }
    }
  }
  if (verbs_ == nullptr) {
    fail(want.empty() ? "no RDMA device with an active port (devices: " + names + ")"
                      : "no RDMA device \"" + want + "\" with an active port (devices: " + names + ")",
         ENODEV, nullptr);
    return;
  }
  pd_ = ibv_alloc_pd(verbs_);
  if (pd_ == nullptr) {
    fail(device_ + ": " + Failed("ibv_alloc_pd", errno), errno, "ibv_alloc_pd");
    return;
  }
  errno = 0;
  poolMr_ = pool_->registerWith(pd_);
  if (poolMr_ == nullptr) {
    int err = errno != 0 ? errno : ENOMEM;
    {
    fail(device_ + ": registering the pool (" + std::to_string(pool_->capacity()) + " bytes): " +
                    Failed("ibv_reg_mr", err), err, "ibv_reg_mr");
    return;
  }
  }
  comp_ = ibv_create_comp_channel(verbs_);
  if (comp_ == nullptr) {
    fail(device_ + ": " + Failed("ibv_create_comp_channel", errno), errno, "ibv_create_comp_channel");
    return;
  }
  cmCh_ = rdma_create_event_channel();
  if (cmCh_ == nullptr) {
    fail(Failed("rdma_create_event_channel", errno), errno, "rdma_create_event_channel");
    return;
  }
  stopFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stopFd_ < 0 || !SetNonBlocking(comp_->fd) || !SetNonBlocking(cmCh_->fd)) {
    {
    fail(Failed("eventfd/fcntl", errno), errno, nullptr);
    return;
  }
  }
  poolRef_ = Napi::Persistent(info[0].As<Napi::Object>());
  bridge_ = new Bridge{this};
  tsfn_ = Tsfn::New(env, info[2].As<Napi::Function>(), "cubefs-rdma", 0, 1, bridge_,
                    [](Napi::Env, void*, Bridge* b) { delete b; });
  closed_ = false;
  napi_add_env_cleanup_hook(env, CleanupHook, this);
  cleanupHook_ = true;
  thread_ = std::thread([this] { threadMain(); });
}

Context::~Context() { closeNative(nullptr); }

void Context::CleanupHook(void* arg) {
  auto* c = static_cast<Context*>(arg);
  c->cleanupHook_ = false;
  c->closeNative(nullptr);
}

// Children first: the thread, channels and listeners (QPs, CQs, control MRs, cm ids), then the pool's MR in
// this PD, the channels, the PD, the device list. Idempotent; `env` is null from the cleanup hook/destructor.
void Context::closeNative(napi_env env) {
  if (closed_ && !thread_.joinable() && pd_ == nullptr && devList_ == nullptr) return;
  bool wasOpen = !closed_;
  closed_ = true;
  if (thread_.joinable()) {
    uint64_t one = 1;
    if (write(stopFd_, &one, sizeof one) < 0) {}
    thread_.join();
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& [id, ch] : channels_) destroyChannel(ch.get());
    channels_.clear();
    for (auto& [id, l] : listeners_) rdma_destroy_id(l->cm);
    listeners_.clear();
  }
  if (poolMr_ != nullptr && pool_ != nullptr) pool_->deregister(pd_);
  poolMr_ = nullptr;
  if (comp_ != nullptr) ibv_destroy_comp_channel(comp_);
  comp_ = nullptr;
  if (cmCh_ != nullptr) rdma_destroy_event_channel(cmCh_);
  cmCh_ = nullptr;
  if (pd_ != nullptr) ibv_dealloc_pd(pd_);
  pd_ = nullptr;
  if (devList_ != nullptr) rdma_free_devices(devList_);
  devList_ = nullptr;
  verbs_ = nullptr;
  if (stopFd_ >= 0) close(stopFd_);
  stopFd_ = -1;
  if (bridge_ != nullptr) bridge_->c = nullptr;
  if (wasOpen) {
    if (cleanupHook_ && env != nullptr) napi_remove_env_cleanup_hook(env, CleanupHook, this);
    cleanupHook_ = false;
    if (env != nullptr) {
      tsfn_.Release();
      poolRef_.Reset();
    }
  }
}

Napi::Value Context::Close(const Napi::CallbackInfo& info) {
  closeNative(info.Env());
  return info.Env().Undefined();
}

Napi::Value Context::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("device", Napi::String::New(env, device_));
  o.Set("port", Napi::Number::New(env, port_));
  o.Set("closed", Napi::Boolean::New(env, closed_));
  if (poolMr_ != nullptr) {
    o.Set("poolRkey", Napi::Number::New(env, poolMr_->rkey));
    o.Set("poolLkey", Napi::Number::New(env, poolMr_->lkey));
  }
  return o;
}

Channel* Context::channel(uint32_t id) {
  auto it = channels_.find(id);
  return it == channels_.end() ? nullptr : it->second.get();
}

void Context::fillPrivateData(unsigned recvDepth, uint8_t* out) const {
  memset(out, 0, kPrivateLen);
  Put32(out, kMagic);
  Put16(out + 4, kVersion);
  Put16(out + 6, static_cast<uint16_t>(recvDepth));
  Put32(out + 8, kBlockSize);
}

namespace {
// The peer's receive depth from its private data, or 0 with `err` set.
uint16_t ParsePrivateData(const void* data, uint8_t len, std::string* err) {
  auto* p = static_cast<const uint8_t*>(data);
  if (p == nullptr || len < kPrivateLen) { *err = "peer sent no CubeFS RDMA private data"; return 0; }
  if (Get32(p) != kMagic) { *err = "peer private data has a bad magic"; return 0; }
  if (Get16(p + 4) != kVersion) { *err = "peer speaks RDMA protocol version " + std::to_string(Get16(p + 4)); return 0; }
  if (Get32(p + 8) != kBlockSize) { *err = "peer uses " + std::to_string(Get32(p + 8)) + "-byte control blocks"; return 0; }
  uint16_t d = Get16(p + 6);
  if (d < kMinRecvDepth || d > kMaxRecvDepth) { *err = "peer receive depth " + std::to_string(d) + " out of range"; return 0; }
  return d;
}
}  // namespace

// connect(host, port, { recvDepth?, maxRdma?, timeoutMs?, rnrRetry? }) -> channel id. Progress and failure
// arrive as events (Established / ConnectError).
Napi::Value Context::Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) { MakeError(env, "RDMA context is closed", EBADF).ThrowAsJavaScriptException(); return env.Undefined(); }
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "connect(host, port, options?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ChannelOptions opt;
  if (!ReadOptions(env, info.Length() > 2 ? info[2] : env.Undefined(), &opt)) return env.Undefined();
  std::string host = info[0].As<Napi::String>().Utf8Value();
  unsigned port = info[1].As<Napi::Number>().Uint32Value();
  sockaddr_storage sa{};
  std::string err;
  if (!ResolveHost(host, port, &sa, &err)) {
    MakeError(env, "RDMA connect to " + host + ":" + std::to_string(port) + ": " + err, EHOSTUNREACH).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::lock_guard<std::mutex> lk(mu_);
  auto ch = std::make_unique<Channel>();
  ch->id = nextId_++;
  ch->opt = opt;
  ch->peer = AddrString(reinterpret_cast<sockaddr*>(&sa));
  if (rdma_create_id(cmCh_, &ch->cm, IdTag(ch->id), RDMA_PS_TCP) != 0) {
    int e = errno;
    MakeError(env, "RDMA connect to " + ch->peer + ": " + Failed("rdma_create_id", e), e, "rdma_create_id").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (rdma_resolve_addr(ch->cm, nullptr, reinterpret_cast<sockaddr*>(&sa), opt.timeoutMs) != 0) {
    int e = errno;
    rdma_destroy_id(ch->cm);
    MakeError(env, "RDMA connect to " + ch->peer + ": " + Failed("rdma_resolve_addr", e), e, "rdma_resolve_addr").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint32_t id = ch->id;
  channels_.emplace(id, std::move(ch));
  return Napi::Number::New(env, id);
}

// listen(host, port, { recvDepth?, maxRdma?, rnrRetry?, backlog? }) -> { id, port }. Accepted channels arrive
// as Incoming events once established.
Napi::Value Context::Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (closed_) { MakeError(env, "RDMA context is closed", EBADF).ThrowAsJavaScriptException(); return env.Undefined(); }
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "listen(host, port, options?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ChannelOptions opt;
  if (!ReadOptions(env, info.Length() > 2 ? info[2] : env.Undefined(), &opt)) return env.Undefined();
  int backlog = info.Length() > 2 && info[2].IsObject() ? static_cast<int>(OptUint(info[2].As<Napi::Object>(), "backlog", 128)) : 128;
  std::string host = info[0].As<Napi::String>().Utf8Value();
  unsigned port = info[1].As<Napi::Number>().Uint32Value();
  std::string where = host + ":" + std::to_string(port);
  sockaddr_storage sa{};
  std::string err;
  if (!ResolveHost(host, port, &sa, &err)) {
    MakeError(env, "RDMA listen on " + where + ": " + err, EADDRNOTAVAIL).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::lock_guard<std::mutex> lk(mu_);
  auto l = std::make_unique<Listener>();
  l->id = nextId_++;
  l->opt = opt;
  auto bail = [&](const char* call) {
    int e = errno;
    if (l->cm != nullptr) rdma_destroy_id(l->cm);
    MakeError(env, "RDMA listen on " + where + ": " + Failed(call, e), e, call).ThrowAsJavaScriptException();
    return env.Undefined();
  };
  if (rdma_create_id(cmCh_, &l->cm, IdTag(l->id), RDMA_PS_TCP) != 0) return bail("rdma_create_id");
  if (rdma_bind_addr(l->cm, reinterpret_cast<sockaddr*>(&sa)) != 0) return bail("rdma_bind_addr");
  if (l->cm->verbs != nullptr && l->cm->verbs != verbs_) {
    std::string dev = ibv_get_device_name(l->cm->verbs->device);
    rdma_destroy_id(l->cm);
    MakeError(env, "RDMA listen on " + where + ": the address is on device " + dev + ", this context is on " + device_, EXDEV)
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (rdma_listen(l->cm, backlog) != 0) return bail("rdma_listen");
  unsigned bound = ntohs(rdma_get_src_port(l->cm));
  l->addr = host + ":" + std::to_string(bound);
  uint32_t id = l->id;
  listeners_.emplace(id, std::move(l));
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", Napi::Number::New(env, id));
  o.Set("port", Napi::Number::New(env, bound));
  return o;
}

// send(ch, kind 1|2, packet: Buffer (<= 480 bytes), desc?: Buffer inside the pool) -> undefined. The block
// waits for a credit in the channel's queue if none is free. Throws when the channel is not established.
Napi::Value Context::Send(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* pkt = nullptr;
  size_t pktLen = 0;
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !BytesOf(info[2], &pkt, &pktLen)) {
    Napi::TypeError::New(env, "send(channel, kind, packet, desc?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  unsigned kind = info[1].As<Napi::Number>().Uint32Value();
  if (kind != unsigned(BlockKind::Request) && kind != unsigned(BlockKind::Response)) {
    Napi::RangeError::New(env, "send: kind must be 1 (request) or 2 (response)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (pktLen > kMaxPacket) {
    Napi::RangeError::New(env, "send: packet of " + std::to_string(pktLen) + " bytes does not fit a control block (" +
                                   std::to_string(kMaxPacket) + ")").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (closed_) { MakeError(env, "RDMA context is closed", EBADF).ThrowAsJavaScriptException(); return env.Undefined(); }
  Desc desc;
  uint8_t* dp = nullptr;
  size_t dlen = 0;
  if (info.Length() > 3 && BytesOf(info[3], &dp, &dlen)) {
    if (!pool_->contains(dp, dlen) || poolMr_ == nullptr || dlen > UINT32_MAX) {
      MakeError(env, "send: the descriptor's buffer is not inside the pool registered in this context's protection domain", EINVAL)
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    desc = {reinterpret_cast<uint64_t>(dp), static_cast<uint32_t>(dlen), poolMr_->rkey};
  }
  std::lock_guard<std::mutex> lk(mu_);
  Channel* ch = channel(id);
  if (ch == nullptr || ch->state != Channel::State::Established) {
    MakeError(env, "send to " + (ch ? ch->peer : std::string("channel ") + std::to_string(id)) + ": not connected", ENOTCONN)
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ch->sendQ.push_back({static_cast<BlockKind>(kind), std::string(reinterpret_cast<char*>(pkt), pktLen), desc});
  pump(ch);
  return env.Undefined();
}

// rdma(ch, write: boolean, local: Buffer inside the pool, remoteAddr: bigint, rkey, len, opId) -> undefined.
// Completion arrives as an OpDone event carrying opId.
Napi::Value Context::Rdma(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* lp = nullptr;
  size_t llen = 0;
  if (info.Length() < 7 || !info[0].IsNumber() || !info[1].IsBoolean() || !BytesOf(info[2], &lp, &llen) ||
      !info[3].IsBigInt() || !info[4].IsNumber() || !info[5].IsNumber() || !info[6].IsNumber()) {
    Napi::TypeError::New(env, "rdma(channel, write, local, remoteAddr, rkey, len, opId)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  bool isWrite = info[1].As<Napi::Boolean>().Value();
  bool lossless = false;
  uint64_t raddr = info[3].As<Napi::BigInt>().Uint64Value(&lossless);
  uint32_t rkey = info[4].As<Napi::Number>().Uint32Value();
  double len = info[5].As<Napi::Number>().DoubleValue();
  double opId = info[6].As<Napi::Number>().DoubleValue();
  const char* what = isWrite ? "RDMA write" : "RDMA read";
  if (closed_) { MakeError(env, "RDMA context is closed", EBADF).ThrowAsJavaScriptException(); return env.Undefined(); }
  if (!(len > 0) || len > llen || len > double(1u << 31)) {
    MakeError(env, std::string(what) + ": length " + std::to_string(len) + " does not fit the local buffer of " +
                       std::to_string(llen) + " bytes", EINVAL).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (poolMr_ == nullptr || !pool_->contains(lp, static_cast<size_t>(len))) {
    char msg[200];
    snprintf(msg, sizeof msg, "%s: local buffer [%p, +%zu) is not inside the pool registered in this context's protection domain",
             what, static_cast<void*>(lp), static_cast<size_t>(len));
    MakeError(env, msg, EINVAL).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::lock_guard<std::mutex> lk(mu_);
  Channel* ch = channel(id);
  if (ch == nullptr || ch->state != Channel::State::Established) {
    MakeError(env, std::string(what) + " with " + (ch ? ch->peer : "channel " + std::to_string(id)) + ": not connected", ENOTCONN)
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  ch->opQ.push_back({opId, isWrite, lp, static_cast<uint32_t>(len), raddr, rkey});
  pumpOps(ch);
  return env.Undefined();
}

// fail(ch, why): the channel's QP to the error state now; its queued and posted work fails (events follow).
Napi::Value Context::Fail(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsString()) return env.Undefined();
  std::lock_guard<std::mutex> lk(mu_);
  Channel* ch = channel(info[0].As<Napi::Number>().Uint32Value());
  if (ch != nullptr) fail(ch, info[1].As<Napi::String>().Utf8Value());
  return env.Undefined();
}

// forceError(ch) -> boolean: test hook; moves the QP to IBV_QPS_ERR and nothing else, so the failure is seen the
// way a real one is: through flushed completions on the completion thread.
Napi::Value Context::ForceError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) return Napi::Boolean::New(env, false);
  std::lock_guard<std::mutex> lk(mu_);
  Channel* ch = channel(info[0].As<Napi::Number>().Uint32Value());
  if (ch == nullptr || ch->cm == nullptr || ch->cm->qp == nullptr) return Napi::Boolean::New(env, false);
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_ERR;
  return Napi::Boolean::New(env, ibv_modify_qp(ch->cm->qp, &a, IBV_QP_STATE) == 0);
}

Napi::Value Context::CloseChannel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) return env.Undefined();
  std::lock_guard<std::mutex> lk(mu_);
  auto it = channels_.find(info[0].As<Napi::Number>().Uint32Value());
  if (it != channels_.end()) {
    destroyChannel(it->second.get());
    channels_.erase(it);
  }
  return env.Undefined();
}

Napi::Value Context::CloseListener(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) return env.Undefined();
  std::lock_guard<std::mutex> lk(mu_);
  auto it = listeners_.find(info[0].As<Napi::Number>().Uint32Value());
  if (it != listeners_.end()) {
    rdma_destroy_id(it->second->cm);
    listeners_.erase(it);
  }
  return env.Undefined();
}

Napi::Value Context::ChannelStatsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) return env.Null();
  std::lock_guard<std::mutex> lk(mu_);
  Channel* ch = channel(info[0].As<Napi::Number>().Uint32Value());
  if (ch == nullptr) return env.Null();
  const ChannelStats& s = ch->stats;
  Napi::Object o = Napi::Object::New(env);
  auto num = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
  num("sends", double(s.sends));
  num("creditBlocks", double(s.creditBlocks));
  num("creditWaits", double(s.creditWaits));
  num("recvs", double(s.recvs));
  num("creditBlocksReceived", double(s.creditBlocksRecv));
  num("reads", double(s.reads));
  num("writes", double(s.writes));
  num("bytesRead", double(s.bytesRead));
  num("bytesWritten", double(s.bytesWritten));
  num("rdmaWaits", double(s.rdmaWaits));
  num("maxCreditsUsed", s.maxCreditsUsed);
  num("minCredits", s.minCredits == INT64_MAX ? double(ch->credits) : double(s.minCredits));
  num("credits", double(ch->credits));
  num("peerRecvDepth", ch->peerRecvDepth);
  num("recvDepth", ch->opt.recvDepth);
  num("queued", double(ch->sendQ.size()));
  o.Set("state", Napi::String::New(env, ch->state == Channel::State::Established ? "established"
                                        : ch->state == Channel::State::Error     ? "error"
                                                                                  : "connecting"));
  return o;
}

// ---- the completion thread ----

void Context::threadMain() {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u32 = 1;
  epoll_ctl(ep, EPOLL_CTL_ADD, comp_->fd, &ev);
  ev.data.u32 = 2;
  epoll_ctl(ep, EPOLL_CTL_ADD, cmCh_->fd, &ev);
  ev.data.u32 = 3;
  epoll_ctl(ep, EPOLL_CTL_ADD, stopFd_, &ev);
  for (;;) {
    epoll_event evs[4];
    int n = epoll_wait(ep, evs, 4, -1);
    if (n < 0 && errno != EINTR) break;
    bool stop = false;
    for (int i = 0; i < n; i++) stop |= evs[i].data.u32 == 3;
    if (stop) break;
    std::lock_guard<std::mutex> lk(mu_);
    rdma_cm_event* cev = nullptr;
    while (rdma_get_cm_event(cmCh_, &cev) == 0) handleCm(cev);
    ibv_cq* cq = nullptr;
    void* tag = nullptr;
    while (ibv_get_cq_event(comp_, &cq, &tag) == 0) {
      ibv_ack_cq_events(cq, 1);
      Channel* ch = channel(TagId(tag));
      if (ch == nullptr || ch->cq != cq) continue;
      ibv_req_notify_cq(cq, 0);
      drainCq(ch);
    }
  }
  close(ep);
}

void Context::drainCq(Channel* ch) {
  ibv_wc wcs[32];
  for (;;) {
    int n = ibv_poll_cq(ch->cq, 32, wcs);
    if (n < 0) { fail(ch, "ibv_poll_cq failed"); return; }
    if (n == 0) return;
    for (int i = 0; i < n; i++) handleWc(ch, wcs[i]);
  }
}

void Context::handleCm(rdma_cm_event* ev) {
  rdma_cm_id* destroyAfterAck = nullptr;
  const char* evName = rdma_event_str(ev->event);
  if (trace_) fprintf(stderr, "cubefs rdma: cm %s id %u status %d\n", evName, TagId(ev->id->context), ev->status);
  switch (ev->event) {
    case RDMA_CM_EVENT_CONNECT_REQUEST: {
      auto lit = listeners_.find(TagId(ev->listen_id->context));
      std::string err;
      uint16_t peerDepth = ParsePrivateData(ev->param.conn.private_data, ev->param.conn.private_data_len, &err);
      if (lit == listeners_.end() || peerDepth == 0 || ev->id->verbs != verbs_) {
        if (!err.empty()) fprintf(stderr, "cubefs rdma: rejecting %s: %s\n", AddrString(rdma_get_peer_addr(ev->id)).c_str(), err.c_str());
        rdma_reject(ev->id, nullptr, 0);
        destroyAfterAck = ev->id;
        break;
      }
      Listener* l = lit->second.get();
      auto ch = std::make_unique<Channel>();
      ch->id = nextId_++;
      ch->server = true;
      ch->listener = l->id;
      ch->opt = l->opt;
      ch->cm = ev->id;
      ch->cm->context = IdTag(ch->id);
      ch->peer = AddrString(rdma_get_peer_addr(ev->id));
      ch->peerRecvDepth = peerDepth;
      ch->state = Channel::State::Connecting;
      std::string why;
      uint8_t pd[kPrivateLen];
      fillPrivateData(ch->opt.recvDepth, pd);
      rdma_conn_param p{};
      p.private_data = pd;
      p.private_data_len = kPrivateLen;
      p.responder_resources = static_cast<uint8_t>(std::min<unsigned>(maxRdAtom_, ev->param.conn.initiator_depth));
      p.initiator_depth = static_cast<uint8_t>(std::min<unsigned>(maxInitRdAtom_, ev->param.conn.responder_resources));
      p.retry_count = 7;
      p.rnr_retry_count = ch->opt.rnrRetry;
      bool ok = setupQp(ch.get(), &why);
      if (ok && rdma_accept(ch->cm, &p) != 0) { why = Failed("rdma_accept", errno); ok = false; }
      if (!ok) {
        fprintf(stderr, "cubefs rdma: accepting %s: %s\n", ch->peer.c_str(), why.c_str());
        rdma_reject(ev->id, nullptr, 0);
        ch->cm = nullptr;  // destroyed after the ack, below
        destroyChannel(ch.get());
        destroyAfterAck = ev->id;
        break;
      }
      uint32_t id = ch->id;
      channels_.emplace(id, std::move(ch));
      break;
    }
    case RDMA_CM_EVENT_ADDR_RESOLVED: {
      Channel* ch = channel(TagId(ev->id->context));
      if (ch == nullptr) break;
      if (ev->id->verbs != verbs_) {
        fail(ch, "the address resolves to device " + std::string(ibv_get_device_name(ev->id->verbs->device)) +
                     ", this context is on " + device_);
      } else if (rdma_resolve_route(ev->id, ch->opt.timeoutMs) != 0) {
        fail(ch, Failed("rdma_resolve_route", errno));
      }
      break;
    }
    case RDMA_CM_EVENT_ROUTE_RESOLVED: {
      Channel* ch = channel(TagId(ev->id->context));
      if (ch == nullptr) break;
      std::string why;
      if (!setupQp(ch, &why)) { fail(ch, why); break; }
      uint8_t pd[kPrivateLen];
      fillPrivateData(ch->opt.recvDepth, pd);
      rdma_conn_param p{};
      p.private_data = pd;
      p.private_data_len = kPrivateLen;
      p.responder_resources = static_cast<uint8_t>(maxRdAtom_);
      p.initiator_depth = static_cast<uint8_t>(maxInitRdAtom_);
      p.retry_count = 7;
      p.rnr_retry_count = ch->opt.rnrRetry;
      ch->state = Channel::State::Connecting;
      if (rdma_connect(ev->id, &p) != 0) fail(ch, Failed("rdma_connect", errno));
      break;
    }
    case RDMA_CM_EVENT_ESTABLISHED: {
      Channel* ch = channel(TagId(ev->id->context));
      if (ch == nullptr || ch->state != Channel::State::Connecting) break;
      if (!ch->server) {
        std::string err;
        ch->peerRecvDepth = ParsePrivateData(ev->param.conn.private_data, ev->param.conn.private_data_len, &err);
        if (ch->peerRecvDepth == 0) { fail(ch, err); break; }
      }
      establish(ch);
      break;
    }
    case RDMA_CM_EVENT_REJECTED:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_ADDR_ERROR:
    case RDMA_CM_EVENT_ROUTE_ERROR:
    case RDMA_CM_EVENT_CONNECT_ERROR: {
      Channel* ch = channel(TagId(ev->id->context));
      if (ch == nullptr) break;
      std::string why = std::string("rdma_cm ") + evName;
      if (ev->event == RDMA_CM_EVENT_REJECTED) why += " (connection refused: no listener or rejected, reason " + std::to_string(ev->status) + ")";
      else if (ev->status < 0) why += std::string(" (") + strerror(-ev->status) + ")";
      else why += " (status " + std::to_string(ev->status) + ")";
      fail(ch, why);
      break;
    }
    case RDMA_CM_EVENT_DISCONNECTED: {
      Channel* ch = channel(TagId(ev->id->context));
      if (ch != nullptr) fail(ch, "peer disconnected");
      break;
    }
    case RDMA_CM_EVENT_DEVICE_REMOVAL: {
      for (auto& [id, ch] : channels_) fail(ch.get(), "RDMA device " + device_ + " removed");
      break;
    }
    default:
      break;
  }
  rdma_ack_cm_event(ev);
  if (destroyAfterAck != nullptr) rdma_destroy_id(destroyAfterAck);
}

bool Context::setupQp(Channel* ch, std::string* err) {
  const ChannelOptions& o = ch->opt;
  size_t bytes = size_t{2} * o.recvDepth * kBlockSize;
  void* mem = nullptr;
  if (posix_memalign(&mem, 4096, bytes) != 0) { *err = "control blocks: out of memory"; return false; }
  memset(mem, 0, bytes);
  ch->ctl = static_cast<char*>(mem);
  ch->ctlMr = ibv_reg_mr(pd_, ch->ctl, bytes, IBV_ACCESS_LOCAL_WRITE);
  if (ch->ctlMr == nullptr) { *err = Failed("ibv_reg_mr (control blocks)", errno); return false; }
  int cqe = static_cast<int>(2 * o.recvDepth + o.maxRdma + 8);
  ch->cq = ibv_create_cq(verbs_, cqe, IdTag(ch->id), comp_, 0);
  if (ch->cq == nullptr) { *err = Failed("ibv_create_cq", errno); return false; }
  if (ibv_req_notify_cq(ch->cq, 0) != 0) { *err = Failed("ibv_req_notify_cq", errno); return false; }
  ibv_qp_init_attr qa{};
  qa.send_cq = ch->cq;
  qa.recv_cq = ch->cq;
  qa.qp_type = IBV_QPT_RC;
  qa.cap.max_send_wr = o.recvDepth + o.maxRdma + 1;
  qa.cap.max_recv_wr = o.recvDepth;
  qa.cap.max_send_sge = 1;
  qa.cap.max_recv_sge = 1;
  if (rdma_create_qp(ch->cm, pd_, &qa) != 0) { *err = Failed("rdma_create_qp", errno); return false; }
  ch->freeSend.clear();
  for (uint32_t i = o.recvDepth; i-- > 0;) ch->freeSend.push_back(i);
  ch->ops.assign(o.maxRdma, Channel::Op{-1, false, nullptr, 0, 0, 0});
  ch->freeOps.clear();
  for (uint32_t i = o.maxRdma; i-- > 0;) ch->freeOps.push_back(i);
  ch->qpReady = true;
  for (uint32_t i = 0; i < o.recvDepth; i++) {
    if (!postRecv(ch, i)) { *err = Failed("ibv_post_recv", errno); return false; }
  }
  return true;
}

bool Context::postRecv(Channel* ch, uint32_t slot) {
  ibv_sge sge{};
  sge.addr = reinterpret_cast<uintptr_t>(ch->recvBlock(slot));
  sge.length = kBlockSize;
  sge.lkey = ch->ctlMr->lkey;
  ibv_recv_wr wr{};
  wr.wr_id = MakeWrId(WrKind::Recv, slot);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  return ibv_post_recv(ch->cm->qp, &wr, &bad) == 0;
}

// Connected: credits from the peer's depth, JS told. A server QP may see its first receive before its
// ESTABLISHED event (the client sends as soon as it has its own): that receive establishes it.
void Context::establish(Channel* ch) {
  ch->state = Channel::State::Established;
  ch->credits = ch->peerRecvDepth;
  Event e{};
  e.type = ch->server ? Event::Incoming : Event::Established;
  e.ch = ch->id;
  e.listener = ch->listener;
  e.text = ch->peer;
  e.peerRecvDepth = ch->peerRecvDepth;
  emit(std::move(e));
  pump(ch);
}

// Sends queued blocks while credits allow: a data block needs a credit, and the last one only if the block
// returns credits. Then returns credits explicitly if that is due.
// A block never overtakes an RDMA op issued before it that still waits for an op slot (opQ): so a server
// may post its RDMA Write and its response back to back, and RC ordering makes the Write land before the
// response is seen (pumpOps pumps the blocks again once the waiting ops are posted).
void Context::pump(Channel* ch) {
  if (ch->state != Channel::State::Established) return;
  while (!ch->sendQ.empty()) {
    if (!ch->opQ.empty()) return;
    bool credit = ch->credits >= 2 || (ch->credits == 1 && ch->toReturn > 0);
    if (!credit || ch->freeSend.empty()) {
      ch->stats.creditWaits += credit ? 0 : 1;
      break;
    }
    Channel::QueuedSend q = std::move(ch->sendQ.front());
    ch->sendQ.pop_front();
    if (!postBlock(ch, q.kind, q.packet, q.desc)) return;
  }
  maybeReturnCredits(ch);
}

bool Context::postBlock(Channel* ch, BlockKind kind, const std::string& packet, const Desc& desc) {
  uint32_t slot = ch->freeSend.back();
  ch->freeSend.pop_back();
  auto* b = reinterpret_cast<uint8_t*>(ch->sendBlock(slot));
  uint16_t ret = static_cast<uint16_t>(std::min<uint32_t>(ch->toReturn, 0xffff));
  bool low = ch->credits - 1 <= 1;
  Put32(b, kMagic);
  b[4] = kVersion;
  b[5] = static_cast<uint8_t>(kind);
  Put16(b + 6, ret);
  Put16(b + 8, low ? kFlagLow : 0);
  Put16(b + 10, static_cast<uint16_t>(packet.size()));
  Put32(b + 12, 0);
  Put64(b + 16, desc.addr);
  Put32(b + 24, desc.len);
  Put32(b + 28, desc.rkey);
  memcpy(b + kBlockHeader, packet.data(), packet.size());
  ibv_sge sge{};
  sge.addr = reinterpret_cast<uintptr_t>(b);
  sge.length = static_cast<uint32_t>(kBlockHeader + packet.size());
  sge.lkey = ch->ctlMr->lkey;
  ibv_send_wr wr{};
  wr.wr_id = MakeWrId(WrKind::Send, slot);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_SIGNALED;
  ibv_send_wr* bad = nullptr;
  if (ibv_post_send(ch->cm->qp, &wr, &bad) != 0) {
    ch->freeSend.push_back(slot);
    fail(ch, Failed("ibv_post_send", errno));
    return false;
  }
  if (trace_) fprintf(stderr, "cubefs rdma: ch %u post kind %u returns %u credits %lld\n", ch->id, unsigned(kind), ret, (long long)ch->credits);
  ch->credits--;
  ch->toReturn -= ret;
  ch->urgent = std::min(ch->urgent, ch->toReturn);
  ch->lowSeen = false;
  ch->stats.sends++;
  if (kind == BlockKind::Credit) ch->stats.creditBlocks++;
  ch->stats.maxCreditsUsed = std::max<uint32_t>(ch->stats.maxCreditsUsed, static_cast<uint32_t>(ch->peerRecvDepth - ch->credits));
  ch->stats.minCredits = std::min(ch->stats.minCredits, ch->credits);
  return true;
}

// An explicit credit block when nothing else is going out and either the peer said it is low (any block
// flagged LOW obliges a return of whatever is owed) or half the depth consumed by data blocks waits.
void Context::maybeReturnCredits(Channel* ch) {
  if (ch->state != Channel::State::Established || !ch->sendQ.empty() || ch->toReturn == 0) return;
  if (!(ch->lowSeen || ch->urgent >= std::max(1u, ch->opt.recvDepth / 2))) return;
  if (ch->credits < 1 || ch->freeSend.empty()) return;
  postBlock(ch, BlockKind::Credit, std::string(), Desc{});
}

void Context::pumpOps(Channel* ch) {
  while (!ch->opQ.empty() && ch->state == Channel::State::Established) {
    if (ch->freeOps.empty()) { ch->stats.rdmaWaits++; return; }
    uint32_t slot = ch->freeOps.back();
    ch->freeOps.pop_back();
    ch->ops[slot] = ch->opQ.front();
    ch->opQ.pop_front();
    if (!postOp(ch, slot)) return;
  }
}

bool Context::postOp(Channel* ch, uint32_t slot) {
  Channel::Op& op = ch->ops[slot];
  ibv_sge sge{};
  sge.addr = reinterpret_cast<uintptr_t>(op.local);
  sge.length = op.len;
  sge.lkey = poolMr_->lkey;
  ibv_send_wr wr{};
  wr.wr_id = MakeWrId(op.write ? WrKind::Write : WrKind::Read, slot);
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = op.write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.rdma.remote_addr = op.raddr;
  wr.wr.rdma.rkey = op.rkey;
  ibv_send_wr* bad = nullptr;
  if (ibv_post_send(ch->cm->qp, &wr, &bad) != 0) {
    fail(ch, Failed(op.write ? "ibv_post_send (RDMA write)" : "ibv_post_send (RDMA read)", errno));
    return false;
  }
  return true;
}

void Context::handleWc(Channel* ch, const ibv_wc& wc) {
  WrKind kind = WrKindOf(wc.wr_id);
  uint32_t slot = WrSlotOf(wc.wr_id);
  bool isOp = kind == WrKind::Read || kind == WrKind::Write;
  if (kind == WrKind::Send) ch->freeSend.push_back(slot);
  if (wc.status != IBV_WC_SUCCESS) {
    std::string why = std::string(WrKindName(kind)) + " completion: " + ibv_wc_status_str(wc.status);
    if (wc.vendor_err != 0) why += " (vendor error " + std::to_string(wc.vendor_err) + ")";
    if (isOp && slot < ch->ops.size()) {
      Channel::Op& op = ch->ops[slot];
      if (op.jsId >= 0) {
        Event e{};
        e.type = Event::OpDone;
        e.ch = ch->id;
        e.op = op.jsId;
        e.ok = false;
        e.text = why;
        emit(std::move(e));
      }
      op.jsId = -1;
      ch->freeOps.push_back(slot);
    }
    fail(ch, why);
    return;
  }
  switch (kind) {
    case WrKind::Recv: {
      if (ch->state == Channel::State::Connecting && ch->server) establish(ch);
      ch->stats.recvs++;
      auto* b = reinterpret_cast<const uint8_t*>(ch->recvBlock(slot));
      uint16_t pktLen = Get16(b + 10);
      unsigned bk = b[5];
      if (wc.byte_len < kBlockHeader || Get32(b) != kMagic || b[4] != kVersion || bk < 1 || bk > 3 ||
          pktLen > kMaxPacket || kBlockHeader + pktLen > wc.byte_len) {
        fail(ch, "bad control block from " + ch->peer);
        return;
      }
      ch->credits += Get16(b + 6);
      if (trace_) fprintf(stderr, "cubefs rdma: ch %u recv kind %u returns %u credits %lld\n", ch->id, bk, Get16(b + 6), (long long)ch->credits);
      if (static_cast<BlockKind>(bk) == BlockKind::Credit) {
        ch->stats.creditBlocksRecv++;
      } else {
        Event e{};
        e.type = Event::Recv;
        e.ch = ch->id;
        e.kind = static_cast<BlockKind>(bk);
        e.desc = {Get64(b + 16), Get32(b + 24), Get32(b + 28)};
        e.text.assign(reinterpret_cast<const char*>(b + kBlockHeader), pktLen);
        emit(std::move(e));
        ch->urgent++;
      }
      if (Get16(b + 8) & kFlagLow) ch->lowSeen = true;
      if (ch->state != Channel::State::Established) return;
      if (!postRecv(ch, slot)) { fail(ch, Failed("ibv_post_recv", errno)); return; }
      ch->toReturn++;
      pump(ch);
      return;
    }
    case WrKind::Send:
      pump(ch);
      return;
    case WrKind::Read:
    case WrKind::Write: {
      if (slot >= ch->ops.size()) return;
      Channel::Op& op = ch->ops[slot];
      if (op.jsId >= 0) {
        if (op.write) { ch->stats.writes++; ch->stats.bytesWritten += op.len; }
        else { ch->stats.reads++; ch->stats.bytesRead += op.len; }
        Event e{};
        e.type = Event::OpDone;
        e.ch = ch->id;
        e.op = op.jsId;
        emit(std::move(e));
      }
      op.jsId = -1;
      ch->freeOps.push_back(slot);
      pumpOps(ch);
      if (!ch->sendQ.empty() && ch->opQ.empty()) pump(ch);
      return;
    }
  }
}

// The QP to the error state (idempotent): nothing more is sent or received, queued sends are dropped, every
// RDMA op not yet completed fails now (its flushed completion is ignored later), and JS hears of it once.
void Context::fail(Channel* ch, const std::string& why) {
  if (ch->state == Channel::State::Error) return;
  bool wasUp = ch->state == Channel::State::Established;
  ch->state = Channel::State::Error;
  if (ch->cm != nullptr && ch->cm->qp != nullptr) {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_ERR;
    ibv_modify_qp(ch->cm->qp, &a, IBV_QP_STATE);
  }
  ch->sendQ.clear();
  auto failOp = [&](double jsId) {
    Event e{};
    e.type = Event::OpDone;
    e.ch = ch->id;
    e.op = jsId;
    e.ok = false;
    e.text = why;
    emit(std::move(e));
  };
  for (auto& op : ch->ops) {
    if (op.jsId >= 0) failOp(op.jsId);
    op.jsId = -1;
  }
  for (auto& op : ch->opQ) failOp(op.jsId);
  ch->opQ.clear();
  Event e{};
  e.type = wasUp || ch->server ? Event::ChannelError : Event::ConnectError;
  e.ch = ch->id;
  e.text = why;
  emit(std::move(e));
}

void Context::destroyChannel(Channel* ch) {
  if (ch->cm != nullptr) {
    if (ch->state == Channel::State::Established) rdma_disconnect(ch->cm);
    if (ch->cm->qp != nullptr) rdma_destroy_qp(ch->cm);
  }
  if (ch->cq != nullptr) ibv_destroy_cq(ch->cq);
  ch->cq = nullptr;
  if (ch->ctlMr != nullptr) ibv_dereg_mr(ch->ctlMr);
  ch->ctlMr = nullptr;
  free(ch->ctl);
  ch->ctl = nullptr;
  if (ch->cm != nullptr) rdma_destroy_id(ch->cm);
  ch->cm = nullptr;
  ch->state = Channel::State::Error;
}

// ---- events to JS ----

void Context::emit(Event ev) {
  bool first;
  {
    std::lock_guard<std::mutex> lk(evMu_);
    first = events_.empty();
    events_.push_back(std::move(ev));
  }
  if (first) tsfn_.NonBlockingCall(nullptr);
}

void Context::CallJs(Napi::Env env, Napi::Function cb, Bridge* b, void*) {
  if (env == nullptr || b == nullptr || b->c == nullptr) return;
  Context* c = b->c;
  std::vector<Event> evs;
  {
    std::lock_guard<std::mutex> lk(c->evMu_);
    evs.swap(c->events_);
  }
  if (evs.empty()) return;
  static const char* const kTypes[] = {"established", "connectError", "incoming", "recv", "op", "error", "disconnected"};
  Napi::HandleScope scope(env);
  Napi::Array arr = Napi::Array::New(env, evs.size());
  for (size_t i = 0; i < evs.size(); i++) {
    const Event& e = evs[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("type", Napi::String::New(env, kTypes[e.type]));
    o.Set("ch", Napi::Number::New(env, e.ch));
    switch (e.type) {
      case Event::Recv:
        o.Set("kind", Napi::Number::New(env, static_cast<unsigned>(e.kind)));
        o.Set("packet", Napi::Buffer<char>::Copy(env, e.text.data(), e.text.size()));
        if (e.desc.rkey != 0 || e.desc.len != 0) {
          Napi::Object d = Napi::Object::New(env);
          d.Set("addr", Napi::BigInt::New(env, e.desc.addr));
          d.Set("len", Napi::Number::New(env, e.desc.len));
          d.Set("rkey", Napi::Number::New(env, e.desc.rkey));
          o.Set("desc", d);
        }
        break;
      case Event::OpDone:
        o.Set("op", Napi::Number::New(env, e.op));
        o.Set("ok", Napi::Boolean::New(env, e.ok));
        if (!e.ok) o.Set("text", Napi::String::New(env, e.text));
        break;
      case Event::Incoming:
      case Event::Established:
        o.Set("listener", Napi::Number::New(env, e.listener));
        o.Set("peer", Napi::String::New(env, e.text));
        o.Set("peerRecvDepth", Napi::Number::New(env, e.peerRecvDepth));
        break;
      default:
        o.Set("text", Napi::String::New(env, e.text));
        break;
    }
    arr.Set(i, o);
  }
  cb.Call({arr});
  if (env.IsExceptionPending()) {
    Napi::Error err = env.GetAndClearPendingException();
    napi_fatal_exception(env, err.Value());
  }
}

void RegisterRdma(Napi::Env env, Napi::Object exports) {
  exports.Set("RdmaContext", Context::Define(env));
  exports.Set("rdmaDeviceInfo", Napi::Function::New(env, Devices, "rdmaDeviceInfo"));
}

}  // namespace cubefs::rdma
