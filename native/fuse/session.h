// A libfuse 3 low-level session bound to JS.
//
// Threads: N worker threads each loop fuse_session_receive_buf -> fuse_session_process_buf on a non-blocking
// /dev/fuse fd (epoll with EPOLLEXCLUSIVE, so one request wakes one idle worker; an eventfd stops them).
// The libfuse op callbacks run on the workers: they copy the request's arguments into a Request, record it
// in the outstanding table and hand its id to JS through one napi_threadsafe_function (a non-blocking call:
// a FUSE thread never waits for JS). JS answers on its own thread by calling the reply methods, which take
// the Request out of the table and call fuse_reply_* (thread-safe in libfuse).
//
// Ownership: the Session owns the fuse_session, the workers, the outstanding Requests and the tsfn. A write
// Request owns the receive buffer its payload lives in until it is answered; the JS Buffer over that payload
// is detached when the reply goes, so a late use sees an empty buffer, never freed memory. While mounted
// the Session holds a reference to its own JS object; close() (idempotent) stops the workers, answers every
// outstanding request with EIO, unmounts and destroys the fuse_session, and releases the tsfn.
//
// Lock order: requestsMu_ only (never held while calling libfuse or JS).
#pragma once

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <napi.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "allocator.h"

namespace cubefs::fuse {

// The requests JS can see, in the order of kOpNames (exported to JS as `opNames`, which the TypeScript
// FuseOp enum must match).
enum class Op : uint8_t {
  Lookup, Forget, ForgetMulti, Getattr, Setattr, Readlink, Mknod, Mkdir, Unlink, Rmdir, Symlink, Rename,
  Link, Open, Read, Write, Flush, Release, Fsync, Opendir, Readdir, Readdirplus, Releasedir, Fsyncdir,
  Statfs, Setxattr, Getxattr, Listxattr, Removexattr, Access, Create, Fallocate, CopyFileRange, Lseek,
  Count
};
constexpr size_t kOpCount = static_cast<size_t>(Op::Count);
/// mount() flags (its ninth argument).
constexpr uint32_t kMountWritebackCache = 1;

// A receive buffer and the allocator it goes back to.
struct RecvBuf {
  void* mem = nullptr;
  size_t size = 0;
  ReceiveBufferAllocator* owner = nullptr;
};

// One outstanding FUSE request: its arguments (copied out of the receive buffer, except a write's payload)
// and, for a write, the receive buffer itself. Valid replies are those libfuse documents for `op`.
struct Request {
  ~Request();
  uint64_t id = 0;
  fuse_req_t req = nullptr;
  Op op = Op::Count;
  uint64_t ino = 0, ino2 = 0, fh = 0, fh2 = 0, lockOwner = 0, size = 0;
  int64_t off = 0, off2 = 0;
  uint32_t mode = 0, umask = 0;
  uint64_t rdev = 0;
  int32_t flags = 0;
  bool hasFh = false, writepage = false;
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  std::string name, name2, value;
  struct stat attr {};
  std::vector<fuse_forget_data> forgets;
  RecvBuf recv;                  // write: the buffer the payload lives in
  const char* payload = nullptr; // write: inside recv
  napi_ref payloadRef = nullptr; // write: weak reference to the JS Buffer over the payload
  std::vector<char> dir;         // readdir(plus): the reply being built
  size_t dirUsed = 0;
};

class Session : public Napi::ObjectWrap<Session> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Session(const Napi::CallbackInfo& info);
  ~Session() override;

  // Before mount(): where receive buffers come from (default: defaultAllocator()). Not owned.
  void setAllocator(ReceiveBufferAllocator* a) { allocator_ = a; }
  // The same, for an allocator the Session shares (kept until the Session is destroyed).
  void setAllocator(std::shared_ptr<ReceiveBufferAllocator> a) {
    ownedAllocator_ = std::move(a);
    allocator_ = ownedAllocator_ ? ownedAllocator_.get() : &defaultAllocator();
  }

  // Called by the libfuse op trampolines (worker threads).
  std::unique_ptr<Request> begin(fuse_req_t req, Op op);
  void submit(std::unique_ptr<Request> r);
  void onInit(struct fuse_conn_info* conn);
  void stealReceiveBuffer(Request* r);

 private:
  // The tsfn's context: owned by the tsfn (deleted by its finalizer); `s` is cleared when the Session
  // closes, so items still queued then are dropped without touching the Session.
  struct Bridge {
    Session* s;
  };
  static void CallJs(Napi::Env env, Napi::Function cb, Bridge* b, void* data);
  using Tsfn = Napi::TypedThreadSafeFunction<Bridge, void, &Session::CallJs>;
  static void CleanupHook(void* arg);

  Napi::Value Mount(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value ReplyErr(const Napi::CallbackInfo& info);
  Napi::Value ReplyNone(const Napi::CallbackInfo& info);
  Napi::Value ReplyEntry(const Napi::CallbackInfo& info);
  Napi::Value ReplyCreate(const Napi::CallbackInfo& info);
  Napi::Value ReplyAttr(const Napi::CallbackInfo& info);
  Napi::Value ReplyOpen(const Napi::CallbackInfo& info);
  Napi::Value ReplyWrite(const Napi::CallbackInfo& info);
  Napi::Value ReplyBuf(const Napi::CallbackInfo& info);
  Napi::Value ReplyStatfs(const Napi::CallbackInfo& info);
  Napi::Value ReplyReadlink(const Napi::CallbackInfo& info);
  Napi::Value ReplyXattr(const Napi::CallbackInfo& info);
  Napi::Value ReplyLseek(const Napi::CallbackInfo& info);
  Napi::Value DirAdd(const Napi::CallbackInfo& info);
  Napi::Value DirAddPlus(const Napi::CallbackInfo& info);
  Napi::Value ReplyDir(const Napi::CallbackInfo& info);

  void deliver(Napi::Env env, Napi::Function cb, uint64_t id);
  void deliverEvent(Napi::Env env, uint64_t kind);
  std::unique_ptr<Request> take(uint64_t id);
  Request* peek(uint64_t id);
  void release(napi_env env, std::unique_ptr<Request> r);
  void replyNatively(Request* r, int err);
  void workerMain();
  RecvBuf allocBuf();
  void postEvent(uint64_t kind);
  void closeNative(napi_env env);

  ReceiveBufferAllocator* allocator_ = nullptr;
  std::shared_ptr<ReceiveBufferAllocator> ownedAllocator_;
  struct fuse_session* se_ = nullptr;
  std::string mountpoint_;
  size_t bufSize_ = 0;
  unsigned maxWrite_ = 0, maxRead_ = 0;
  bool writebackCache_ = false;
  int stopFd_ = -1;
  bool mounted_ = false, closed_ = false, cleanupHook_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<int> live_{0};
  std::atomic<int> workerErrno_{0};
  std::vector<std::thread> workers_;
  bool implemented_[kOpCount] = {};
  Tsfn tsfn_;
  Bridge* bridge_ = nullptr;
  Napi::FunctionReference onEvent_;
  napi_env env_ = nullptr;

  std::mutex requestsMu_;
  std::unordered_map<uint64_t, std::unique_ptr<Request>> requests_;
  std::atomic<uint64_t> nextId_{16};

  std::atomic<uint64_t> counts_[kOpCount] = {};
  std::atomic<uint64_t> maxWriteSeen_{0}, heldBuffers_{0}, fallbackBuffers_{0};
  struct fuse_conn_info conn_ {};
  std::atomic<bool> gotInit_{false};
};

// Adds `FuseSession` (the class) and `opNames` to the addon's exports.
void RegisterFuse(Napi::Env env, Napi::Object exports);

}  // namespace cubefs::fuse
