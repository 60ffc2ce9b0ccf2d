// native/rdma: rdma_cm connections, RC QPs and the control channel of docs/rdma.md, bound to JS.
//
// Objects (each owned by its parent, closed children first, every close idempotent):
//   Context (JS class RdmaContext): the device's ibv_context (librdmacm's, not owned), one PD, the pool's MR in
//     that PD, one completion channel, one rdma_cm event channel, one completion thread, and the Listeners and
//     Channels below, by id. JS addresses listeners and channels by id through the context's methods.
//   Listener: one listening rdma_cm_id.
//   Channel: one rdma_cm_id + RC QP + its CQ (on the context's completion channel) + a registered control
//     region of (recvDepth receive + recvDepth send) 512-byte blocks. A connection group (several QPs to one
//     peer) is a TypeScript object over several Channels.
//
// Threads: the JS thread calls in (connect, listen, send, rdma ops, close); the completion thread (one per
// Context) waits in epoll on the completion channel, the rdma_cm event channel and a stop eventfd, and handles
// every CQ and CM event. Results reach JS through one threadsafe function: events are queued under evMu_ and
// the tsfn is called when the queue goes from empty to non-empty; the JS side drains the whole queue.
//
// Locks: mu_ guards every Listener and Channel and all their verbs objects. A CQ or CM event is fetched,
// handled and acknowledged inside one hold of mu_ (the fds are non-blocking), so whoever destroys a CQ or
// cm_id under mu_ never waits for an unacknowledged event. Lock order: mu_, then evMu_.
//
// Credits (docs/rdma.md, as amended there): every block, the explicit credit block included, consumes one of
// the peer's posted receives, and a side never posts a send without a credit. The last credit may only be used
// by a block that returns credits. A block is flagged LOW when it leaves its sender with at most one credit;
// a LOW block obliges the receiver to return what it owes (by its next block, or at once by a credit block
// when nothing else is going out). A side can only get stuck by sending, and the send that got it stuck was
// flagged LOW, so the two sides never wait on each other. Besides, a credit block goes when half the receive
// depth consumed by data blocks waits to be returned.
#pragma once

#include <napi.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../pool/pool.h"

namespace cubefs::rdma {

// The kind of every work request, in the top byte of its wr_id; the low 32 bits are its slot.
enum class WrKind : uint8_t { Send = 1, Recv = 2, Read = 3, Write = 4 };
inline uint64_t MakeWrId(WrKind k, uint32_t slot) { return (uint64_t(k) << 56) | slot; }
inline WrKind WrKindOf(uint64_t wrId) { return static_cast<WrKind>(wrId >> 56); }
inline uint32_t WrSlotOf(uint64_t wrId) { return static_cast<uint32_t>(wrId); }

// The control block (docs/rdma.md).
constexpr uint32_t kMagic = 0x43465352;  // "CFSR"
constexpr uint8_t kVersion = 1;
constexpr size_t kBlockSize = 512;
constexpr size_t kBlockHeader = 32;
constexpr size_t kMaxPacket = kBlockSize - kBlockHeader;
enum class BlockKind : uint8_t { Request = 1, Response = 2, Credit = 3 };
constexpr uint16_t kFlagLow = 1;  // the sender has at most one credit left after this block

constexpr unsigned kMinRecvDepth = 4, kMaxRecvDepth = 4096;
constexpr unsigned kDefaultRecvDepth = 128;
constexpr unsigned kDefaultMaxRdma = 32;  // RDMA Reads/Writes posted at once per QP; more wait in a queue

struct Desc {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint32_t rkey = 0;
};

// What the completion thread (or a JS call) tells JS; delivered in order.
struct Event {
  enum Type : uint8_t { Established, ConnectError, Incoming, Recv, OpDone, ChannelError, Disconnected } type;
  uint32_t ch = 0;
  uint32_t listener = 0;
  double op = 0;            // OpDone: the JS op id
  bool ok = true;
  BlockKind kind = BlockKind::Request;
  Desc desc;
  std::string text;         // errors: the message; Recv: the packet bytes; Incoming/Established: the peer
  uint16_t peerRecvDepth = 0;
};

class Context;

struct ChannelOptions {
  unsigned recvDepth = kDefaultRecvDepth;
  unsigned maxRdma = kDefaultMaxRdma;
  int timeoutMs = 5000;   // address and route resolution
  uint8_t rnrRetry = 7;   // 7 = retry forever; 0 makes any receive-queue overrun a QP error (tests)
};

struct ChannelStats {
  uint64_t sends = 0, creditBlocks = 0, creditWaits = 0, recvs = 0, creditBlocksRecv = 0;
  uint64_t reads = 0, writes = 0, bytesRead = 0, bytesWritten = 0, rdmaWaits = 0;
  uint32_t maxCreditsUsed = 0;  // the most of the peer's receives this side had consumed and not had back
  int64_t minCredits = INT64_MAX;
};

// One RC QP and its control channel. All members are guarded by Context::mu_.
struct Channel {
  enum class State : uint8_t { Resolving, Connecting, Established, Error };
  struct QueuedSend {
    BlockKind kind;
    std::string packet;
    Desc desc;
  };
  struct Op {
    double jsId;
    bool write;
    void* local;
    uint32_t len;
    uint64_t raddr;
    uint32_t rkey;
  };

  uint32_t id = 0;
  bool server = false;
  uint32_t listener = 0;
  State state = State::Resolving;
  std::string peer;
  ChannelOptions opt;
  rdma_cm_id* cm = nullptr;
  ibv_cq* cq = nullptr;
  ibv_mr* ctlMr = nullptr;
  char* ctl = nullptr;  // recvDepth receive blocks, then recvDepth send blocks
  bool qpReady = false;

  uint16_t peerRecvDepth = 0;
  int64_t credits = 0;        // the peer's receives this side may still consume
  uint32_t toReturn = 0;      // receives re-posted since the last block this side sent
  uint32_t urgent = 0;        // of toReturn, those consumed by data blocks
  bool lowSeen = false;       // a block flagged LOW arrived since the last block this side sent
  std::vector<uint32_t> freeSend;
  std::deque<QueuedSend> sendQ;
  std::vector<Op> ops;        // by op slot; jsId < 0 when free
  std::vector<uint32_t> freeOps;
  std::deque<Op> opQ;
  ChannelStats stats;
  bool errorSent = false;

  char* recvBlock(uint32_t slot) const { return ctl + size_t{slot} * kBlockSize; }
  char* sendBlock(uint32_t slot) const { return ctl + (size_t{opt.recvDepth} + slot) * kBlockSize; }
};

struct Listener {
  uint32_t id = 0;
  rdma_cm_id* cm = nullptr;
  ChannelOptions opt;
  std::string addr;
};

class Context : public Napi::ObjectWrap<Context> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Context(const Napi::CallbackInfo& info);
  ~Context() override;

 private:
  struct Bridge {
    Context* c;
  };
  static void CallJs(Napi::Env env, Napi::Function cb, Bridge* b, void* data);
  using Tsfn = Napi::TypedThreadSafeFunction<Bridge, void, &Context::CallJs>;
  static void CleanupHook(void* arg);

  // JS methods (see src/transport/rdma-native.ts for their TypeScript signatures).
  Napi::Value Connect(const Napi::CallbackInfo& info);
  Napi::Value Listen(const Napi::CallbackInfo& info);
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value Rdma(const Napi::CallbackInfo& info);
  Napi::Value Fail(const Napi::CallbackInfo& info);
  Napi::Value ForceError(const Napi::CallbackInfo& info);
  Napi::Value CloseChannel(const Napi::CallbackInfo& info);
  Napi::Value CloseListener(const Napi::CallbackInfo& info);
  Napi::Value ChannelStatsJs(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  void threadMain();
  void handleCm(rdma_cm_event* ev);
  void handleWc(Channel* ch, const ibv_wc& wc);
  void drainCq(Channel* ch);

  // All below: caller holds mu_.
  bool setupQp(Channel* ch, std::string* err);
  void establish(Channel* ch);
  bool postRecv(Channel* ch, uint32_t slot);
  void pump(Channel* ch);
  bool postBlock(Channel* ch, BlockKind kind, const std::string& packet, const Desc& desc);
  void maybeReturnCredits(Channel* ch);
  void pumpOps(Channel* ch);
  bool postOp(Channel* ch, uint32_t slot);
  void fail(Channel* ch, const std::string& why);
  void destroyChannel(Channel* ch);
  void fillPrivateData(unsigned recvDepth, uint8_t* out) const;
  Channel* channel(uint32_t id);

  void emit(Event ev);  // takes evMu_
  void closeNative(napi_env env);

  ibv_context** devList_ = nullptr;
  ibv_context* verbs_ = nullptr;  // librdmacm's context for the device (owned by devList_)
  std::string device_;
  uint8_t port_ = 1;
  ibv_pd* pd_ = nullptr;
  pool::Pool* pool_ = nullptr;
  Napi::ObjectReference poolRef_;
  ibv_mr* poolMr_ = nullptr;
  ibv_comp_channel* comp_ = nullptr;
  rdma_event_channel* cmCh_ = nullptr;
  int stopFd_ = -1;
  std::thread thread_;
  uint32_t maxRdAtom_ = 1, maxInitRdAtom_ = 1;
  bool closed_ = false, cleanupHook_ = false, trace_ = false;

  std::mutex mu_;
  std::map<uint32_t, std::unique_ptr<Channel>> channels_;
  std::map<uint32_t, std::unique_ptr<Listener>> listeners_;
  uint32_t nextId_ = 1;

  std::mutex evMu_;
  std::vector<Event> events_;
  Tsfn tsfn_;
  Bridge* bridge_ = nullptr;
};

// Adds `RdmaContext` and `rdmaDeviceInfo()` to the addon's exports.
void RegisterRdma(Napi::Env env, Napi::Object exports);

}  // namespace cubefs::rdma
