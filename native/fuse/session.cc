#include "session.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace cubefs::fuse {
namespace {

const char* const kOpNames[kOpCount] = {
    "lookup", "forget", "forgetMulti", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink",
    "rmdir", "symlink", "rename", "link", "open", "read", "write", "flush", "release", "fsync", "opendir",
    "readdir", "readdirplus", "releasedir", "fsyncdir", "statfs", "setxattr", "getxattr", "listxattr",
    "removexattr", "access", "create", "fallocate", "copyFileRange", "lseek"};

// Event ids share the tsfn with request ids (which start at 16).
constexpr uint64_t kEventInit = 1;
constexpr uint64_t kEventEnded = 2;

// Float64Array layouts shared with src/fuse/session.ts.
constexpr size_t kAttrLen = 12;  // ino mode nlink uid gid rdev size blocks blksize atimeMs mtimeMs ctimeMs
constexpr size_t kStatfsLen = 10;  // bsize frsize blocks bfree bavail files ffree favail fsid namemax

// Open reply flag bits (src/fuse/types.ts OpenFlags).
constexpr uint32_t kOpenDirectIo = 1, kOpenKeepCache = 2, kOpenNonSeekable = 4, kOpenCacheReaddir = 8,
                   kOpenNoFlush = 16;

// The worker whose process_buf is running on this thread (for a write to take its receive buffer).
thread_local RecvBuf* tlsRecv = nullptr;

// libfuse's log goes to stderr, except while the JS thread is creating or mounting a session: then the
// last message becomes the JS error's message.
thread_local bool tlsCapture = false;
thread_local std::string tlsLastLog;

void LogFunc(enum fuse_log_level level, const char* fmt, va_list ap) {
  char line[1024];
  vsnprintf(line, sizeof line, fmt, ap);
  if (tlsCapture) {
    tlsLastLog = line;
    while (!tlsLastLog.empty() && tlsLastLog.back() == '\n') tlsLastLog.pop_back();
    return;
  }
  if (level <= FUSE_LOG_WARNING) fputs(line, stderr);
}

Session* SessionOf(fuse_req_t req) { return static_cast<Session*>(fuse_req_userdata(req)); }

void FillFi(Request* r, const struct fuse_file_info* fi) {
  if (fi == nullptr) return;
  r->hasFh = true;
  r->fh = fi->fh;
  r->flags = fi->flags;
  r->lockOwner = fi->lock_owner;
  r->writepage = fi->writepage;
}

struct timespec MsToTimespec(double ms) {
  struct timespec ts {};
  double sec = std::floor(ms / 1000.0);
  ts.tv_sec = static_cast<time_t>(sec);
  ts.tv_nsec = static_cast<long>(std::llround((ms - sec * 1000.0) * 1e6));
  if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
  if (ts.tv_nsec < 0) ts.tv_nsec = 0;
  return ts;
}

double TimespecToMs(const struct timespec& ts) { return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6; }

bool ReadAttr(const Napi::Value& v, struct stat* st) {
  if (!v.IsTypedArray()) return false;
  auto ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_float64_array || ta.ElementLength() < kAttrLen) return false;
  const double* a = v.As<Napi::Float64Array>().Data();
  memset(st, 0, sizeof *st);
  st->st_ino = static_cast<ino_t>(a[0]);
  st->st_mode = static_cast<mode_t>(a[1]);
  st->st_nlink = static_cast<nlink_t>(a[2]);
  st->st_uid = static_cast<uid_t>(a[3]);
  st->st_gid = static_cast<gid_t>(a[4]);
  st->st_rdev = static_cast<dev_t>(a[5]);
  st->st_size = static_cast<off_t>(a[6]);
  st->st_blocks = static_cast<blkcnt_t>(a[7]);
  st->st_blksize = static_cast<blksize_t>(a[8]);
  st->st_atim = MsToTimespec(a[9]);
  st->st_mtim = MsToTimespec(a[10]);
  st->st_ctim = MsToTimespec(a[11]);
  return true;
}

void FillOpenFlags(struct fuse_file_info* fi, uint64_t fh, uint32_t flags) {
  memset(fi, 0, sizeof *fi);
  fi->fh = fh;
  fi->direct_io = (flags & kOpenDirectIo) != 0;
  fi->keep_cache = (flags & kOpenKeepCache) != 0;
  fi->nonseekable = (flags & kOpenNonSeekable) != 0;
  fi->cache_readdir = (flags & kOpenCacheReaddir) != 0;
  fi->noflush = (flags & kOpenNoFlush) != 0;
}

// ---- libfuse op trampolines (worker threads) ----

#define BEGIN(op)                                        \
  Session* s = SessionOf(req);                           \
  std::unique_ptr<Request> r = s->begin(req, Op::op);    \
  if (!r) return

void OpInit(void* userdata, struct fuse_conn_info* conn) { static_cast<Session*>(userdata)->onInit(conn); }
void OpDestroy(void*) {}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  BEGIN(Lookup);
  r->ino = parent;
  r->name = name;
  s->submit(std::move(r));
}
void OpForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  BEGIN(Forget);
  r->ino = ino;
  r->size = nlookup;
  s->submit(std::move(r));
}
void OpForgetMulti(fuse_req_t req, size_t count, struct fuse_forget_data* forgets) {
  BEGIN(ForgetMulti);
  r->forgets.assign(forgets, forgets + count);
  s->submit(std::move(r));
}
void OpGetattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  BEGIN(Getattr);
  r->ino = ino;
  FillFi(r.get(), fi);
  s->submit(std::move(r));
}
void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, struct fuse_file_info* fi) {
  BEGIN(Setattr);
  r->ino = ino;
  r->attr = *attr;
  FillFi(r.get(), fi);
  r->flags = to_set;
  s->submit(std::move(r));
}
void OpReadlink(fuse_req_t req, fuse_ino_t ino) {
  BEGIN(Readlink);
  r->ino = ino;
  s->submit(std::move(r));
}
void OpMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  BEGIN(Mknod);
  r->ino = parent;
  r->name = name;
  r->mode = mode;
  r->rdev = rdev;
  s->submit(std::move(r));
}
void OpMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  BEGIN(Mkdir);
  r->ino = parent;
  r->name = name;
  r->mode = mode;
  s->submit(std::move(r));
}
void OpUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  BEGIN(Unlink);
  r->ino = parent;
  r->name = name;
  s->submit(std::move(r));
}
void OpRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  BEGIN(Rmdir);
  r->ino = parent;
  r->name = name;
  s->submit(std::move(r));
}
void OpSymlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  BEGIN(Symlink);
  r->name2 = link;
  r->ino = parent;
  r->name = name;
  s->submit(std::move(r));
}
void OpRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent, const char* newname,
              unsigned int flags) {
  BEGIN(Rename);
  r->ino = parent;
  r->name = name;
  r->ino2 = newparent;
  r->name2 = newname;
  r->flags = static_cast<int32_t>(flags);
  s->submit(std::move(r));
}
void OpLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  BEGIN(Link);
  r->ino = ino;
  r->ino2 = newparent;
  r->name = newname;
  s->submit(std::move(r));
}
void OpOpen(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  BEGIN(Open);
  r->ino = ino;
  FillFi(r.get(), fi);
  s->submit(std::move(r));
}
void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info* fi) {
  BEGIN(Read);
  r->ino = ino;
  r->size = size;
  r->off = off;
  FillFi(r.get(), fi);
  s->submit(std::move(r));
}
void OpWrite(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
             struct fuse_file_info* fi) {
  BEGIN(Write);
  r->ino = ino;
  r->size = size;
  r->off = off;
  r->payload = buf;
  FillFi(r.get(), fi);
  s->stealReceiveBuffer(r.get());
  s->submit(std::move(r));
}
void OpFlush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  BEGIN(Flush);
  r->ino = ino;
  FillFi(r.get(), fi);
  s->submit(std::move(r));
}
void OpRelease(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  BEGIN(Release);
  r->ino = ino;
  FillFi(r.get(), fi);
  s->submit(std::move(r));
}
void OpFsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info* fi) {
  BEGIN(Fsync);
  r->ino = ino;
  FillFi(r.get(), fi);
  r->mode = datasync ? 1 : 0;
  s->submit(std::move(r));
}
void OpOpendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  BEGIN(Opendir);
  r->ino = ino;
  FillFi(r.get(), fi);
  s->submit(std::move(r));
}
void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info* fi) {
  BEGIN(Readdir);
  r->ino = ino;
  r->size = size;
  r->off = off;
  FillFi(r.get(), fi);
  s->submit(std::move(r));
}
void OpReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info* fi) {
  BEGIN(Readdirplus);
  r->ino = ino;
  r->size = size;
  r->off = off;
  FillFi(r.get(), fi);
  s->submit(std::move(r));
}
void OpReleasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info* fi) {
  BEGIN(Releasedir);
  r->ino = ino;
  FillFi(r.get(), fi);
  s->submit(std::move(r));
}
void OpFsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info* fi) {
  BEGIN(Fsyncdir);
  r->ino = ino;
  FillFi(r.get(), fi);
  r->mode = datasync ? 1 : 0;
  s->submit(std::move(r));
}
void OpStatfs(fuse_req_t req, fuse_ino_t ino) {
  BEGIN(Statfs);
  r->ino = ino;
  s->submit(std::move(r));
}
void OpSetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size, int flags) {
  BEGIN(Setxattr);
  r->ino = ino;
  r->name = name;
  r->value.assign(value, size);
  r->flags = flags;
  s->submit(std::move(r));
}
void OpGetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  BEGIN(Getxattr);
  r->ino = ino;
  r->name = name;
  r->size = size;
  s->submit(std::move(r));
}
void OpListxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  BEGIN(Listxattr);
  r->ino = ino;
  r->size = size;
  s->submit(std::move(r));
}
void OpRemovexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  BEGIN(Removexattr);
  r->ino = ino;
  r->name = name;
  s->submit(std::move(r));
}
void OpAccess(fuse_req_t req, fuse_ino_t ino, int mask) {
  BEGIN(Access);
  r->ino = ino;
  r->flags = mask;
  s->submit(std::move(r));
}
void OpCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, struct fuse_file_info* fi) {
  BEGIN(Create);
  r->ino = parent;
  r->name = name;
  r->mode = mode;
  FillFi(r.get(), fi);
  s->submit(std::move(r));
}
void OpFallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                 struct fuse_file_info* fi) {
  BEGIN(Fallocate);
  r->ino = ino;
  FillFi(r.get(), fi);
  r->mode = static_cast<uint32_t>(mode);
  r->off = offset;
  r->size = static_cast<uint64_t>(length);
  s->submit(std::move(r));
}
void OpCopyFileRange(fuse_req_t req, fuse_ino_t ino_in, off_t off_in, struct fuse_file_info* fi_in,
                     fuse_ino_t ino_out, off_t off_out, struct fuse_file_info* fi_out, size_t len, int flags) {
  BEGIN(CopyFileRange);
  r->ino = ino_in;
  r->off = off_in;
  r->fh = fi_in ? fi_in->fh : 0;
  r->ino2 = ino_out;
  r->off2 = off_out;
  r->fh2 = fi_out ? fi_out->fh : 0;
  r->size = len;
  r->flags = flags;
  s->submit(std::move(r));
}
void OpLseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info* fi) {
  BEGIN(Lseek);
  r->ino = ino;
  FillFi(r.get(), fi);
  r->off = off;
  r->mode = static_cast<uint32_t>(whence);
  s->submit(std::move(r));
}
#undef BEGIN

struct fuse_lowlevel_ops MakeOps() {
  struct fuse_lowlevel_ops o {};
  o.init = OpInit;
  o.destroy = OpDestroy;
  o.lookup = OpLookup;
  o.forget = OpForget;
  o.forget_multi = OpForgetMulti;
  o.getattr = OpGetattr;
  o.setattr = OpSetattr;
  o.readlink = OpReadlink;
  o.mknod = OpMknod;
  o.mkdir = OpMkdir;
  o.unlink = OpUnlink;
  o.rmdir = OpRmdir;
  o.symlink = OpSymlink;
  o.rename = OpRename;
  o.link = OpLink;
  o.open = OpOpen;
  o.read = OpRead;
  o.write = OpWrite;
  o.flush = OpFlush;
  o.release = OpRelease;
  o.fsync = OpFsync;
  o.opendir = OpOpendir;
  o.readdir = OpReaddir;
  o.readdirplus = OpReaddirplus;
  o.releasedir = OpReleasedir;
  o.fsyncdir = OpFsyncdir;
  o.statfs = OpStatfs;
  o.setxattr = OpSetxattr;
  o.getxattr = OpGetxattr;
  o.listxattr = OpListxattr;
  o.removexattr = OpRemovexattr;
  o.access = OpAccess;
  o.create = OpCreate;
  o.fallocate = OpFallocate;
  o.copy_file_range = OpCopyFileRange;
  o.lseek = OpLseek;
  return o;
}
const struct fuse_lowlevel_ops kOps = MakeOps();

bool IsForget(Op op) { return op == Op::Forget || op == Op::ForgetMulti; }

Napi::Error ErrnoError(Napi::Env env, const std::string& msg, int err) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err));
  return e;
}

}  // namespace

Request::~Request() {
  if (recv.mem != nullptr) recv.owner->free(recv.mem, recv.size);
}

// ---- JS class ----

Napi::Function Session::Define(Napi::Env env) {
  return DefineClass(env, "FuseSession",
                     {
                         InstanceMethod<&Session::Mount>("mount"),
                         InstanceMethod<&Session::Close>("close"),
                         InstanceMethod<&Session::Stats>("stats"),
                         InstanceMethod<&Session::ReplyErr>("replyErr"),
                         InstanceMethod<&Session::ReplyNone>("replyNone"),
                         InstanceMethod<&Session::ReplyEntry>("replyEntry"),
                         InstanceMethod<&Session::ReplyCreate>("replyCreate"),
                         InstanceMethod<&Session::ReplyAttr>("replyAttr"),
                         InstanceMethod<&Session::ReplyOpen>("replyOpen"),
                         InstanceMethod<&Session::ReplyWrite>("replyWrite"),
                         InstanceMethod<&Session::ReplyBuf>("replyBuf"),
                         InstanceMethod<&Session::ReplyStatfs>("replyStatfs"),
                         InstanceMethod<&Session::ReplyReadlink>("replyReadlink"),
                         InstanceMethod<&Session::ReplyXattr>("replyXattr"),
                         InstanceMethod<&Session::ReplyLseek>("replyLseek"),
                         InstanceMethod<&Session::DirAdd>("dirAdd"),
                         InstanceMethod<&Session::DirAddPlus>("dirAddPlus"),
                         InstanceMethod<&Session::ReplyDir>("replyDir"),
                     });
}

// new FuseSession(onEvent: (kind: string, info: object) => void)
Session::Session(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Session>(info) {
  env_ = info.Env();
  allocator_ = &defaultAllocator();
  if (info.Length() < 1 || !info[0].IsFunction()) {
    Napi::TypeError::New(info.Env(), "FuseSession(onEvent)").ThrowAsJavaScriptException();
    return;
  }
  onEvent_ = Napi::Persistent(info[0].As<Napi::Function>());
}

Session::~Session() { closeNative(nullptr); }

void Session::CleanupHook(void* arg) {
  auto* s = static_cast<Session*>(arg);
  s->cleanupHook_ = false;
  s->closeNative(nullptr);
}

// mount(mountpoint, argv: string[], workers, maxWrite, maxRead, implemented: Uint8Array(kOpCount),
//       onRequest: (op, id, args, uid, gid, pid) => void, allocator?: External<AllocatorHandle>,
//       flags?: number): undefined. flags: kMountWritebackCache asks for FUSE_CAP_WRITEBACK_CACHE.
// Throws an Error with errno on failure.
Napi::Value Session::Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (mounted_ || closed_) {
    Napi::Error::New(env, "session already mounted or closed").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (info.Length() < 7 || !info[0].IsString() || !info[1].IsArray() || !info[2].IsNumber() ||
      !info[3].IsNumber() || !info[4].IsNumber() || !info[5].IsTypedArray() || !info[6].IsFunction()) {
    Napi::TypeError::New(env, "mount(mountpoint, argv, workers, maxWrite, maxRead, implemented, onRequest)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  mountpoint_ = info[0].As<Napi::String>().Utf8Value();
  Napi::Array argv = info[1].As<Napi::Array>();
  int workers = info[2].As<Napi::Number>().Int32Value();
  maxWrite_ = info[3].As<Napi::Number>().Uint32Value();
  maxRead_ = info[4].As<Napi::Number>().Uint32Value();
  Napi::Uint8Array impl = info[5].As<Napi::Uint8Array>();
  if (workers < 1 || workers > 256 || impl.ElementLength() != kOpCount) {
    Napi::RangeError::New(env, "workers must be 1..256 and implemented must have one byte per op")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  for (size_t i = 0; i < kOpCount; i++) implemented_[i] = impl[i] != 0;
  if (info.Length() > 7 && !info[7].IsUndefined()) {
    auto* h = info[7].IsExternal() ? info[7].As<Napi::External<AllocatorHandle>>().Data() : nullptr;
    if (h == nullptr || h->magic != AllocatorHandle::kMagic || !h->allocator) {
      Napi::TypeError::New(env, "mount: allocator must be a receive allocator handle (pool.receiveAllocator())")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    setAllocator(h->allocator);
  }
  uint32_t mountFlags = info.Length() > 8 && info[8].IsNumber() ? info[8].As<Napi::Number>().Uint32Value() : 0;
  writebackCache_ = (mountFlags & kMountWritebackCache) != 0;

  // libfuse reads up to its bufsize into the buffer it is given: FUSE_MAX_MAX_PAGES (256) pages plus one
  // header page in 3.14, never less than max_write plus that header.
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  bufSize_ = std::max<size_t>(256 * page + 4096, static_cast<size_t>(maxWrite_) + 4096);

  struct fuse_args args = FUSE_ARGS_INIT(0, nullptr);
  fuse_opt_add_arg(&args, "cubefs-mount");
  for (uint32_t i = 0; i < argv.Length(); i++) {
    std::string a = argv.Get(i).ToString().Utf8Value();
    fuse_opt_add_arg(&args, a.c_str());
  }
  tlsCapture = true;
  tlsLastLog.clear();
  se_ = fuse_session_new(&args, &kOps, sizeof kOps, this);
  fuse_opt_free_args(&args);
  if (se_ == nullptr) {
    tlsCapture = false;
    ErrnoError(env, "fuse_session_new failed: " + (tlsLastLog.empty() ? "bad options" : tlsLastLog), EINVAL)
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  errno = 0;
  int rc = fuse_session_mount(se_, mountpoint_.c_str());
  int err = errno;
  tlsCapture = false;
  if (rc != 0) {
    fuse_session_destroy(se_);
    se_ = nullptr;
    if (err == 0) err = EIO;
    std::string msg = "mount " + mountpoint_ + " failed: " + (tlsLastLog.empty() ? strerror(err) : tlsLastLog);
    ErrnoError(env, msg, err).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = fuse_session_fd(se_);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  stopFd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

  bridge_ = new Bridge{this};
  tsfn_ = Tsfn::New(env, info[6].As<Napi::Function>(), "cubefs-fuse", 0, 1, bridge_,
                    [](Napi::Env, void*, Bridge* b) { delete b; });
  Ref();
  mounted_ = true;
  napi_add_env_cleanup_hook(env, CleanupHook, this);
  cleanupHook_ = true;
  live_ = workers;
  for (int i = 0; i < workers; i++) workers_.emplace_back([this] { workerMain(); });
  return env.Undefined();
}

Napi::Value Session::Close(const Napi::CallbackInfo& info) {
  closeNative(info.Env());
  return info.Env().Undefined();
}

// Stops the workers, answers what JS still holds with EIO, unmounts, destroys. `env` is null when called
// from the env cleanup hook or the destructor (no JS calls then).
void Session::closeNative(napi_env env) {
  if (closed_) return;
  closed_ = true;
  if (!mounted_) return;
  stop_ = true;
  uint64_t one = 1;
  if (write(stopFd_, &one, sizeof one) < 0) { /* eventfd write cannot fail short of overflow */ }
  for (auto& t : workers_) t.join();
  workers_.clear();
  std::unordered_map<uint64_t, std::unique_ptr<Request>> left;
  {
    std::lock_guard<std::mutex> lk(requestsMu_);
    left.swap(requests_);
  }
  for (auto& [id, r] : left) {
    if (IsForget(r->op)) fuse_reply_none(r->req);
    else fuse_reply_err(r->req, EIO);
    release(env, std::move(r));
  }
  fuse_session_unmount(se_);
  fuse_session_destroy(se_);
  se_ = nullptr;
  close(stopFd_);
  stopFd_ = -1;
  if (cleanupHook_ && env != nullptr) napi_remove_env_cleanup_hook(env, CleanupHook, this);
  cleanupHook_ = false;
  bridge_->s = nullptr;
  if (env != nullptr) {
    tsfn_.Release();
    Unref();
  }
}

Napi::Value Session::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  Napi::Object counts = Napi::Object::New(env);
  for (size_t i = 0; i < kOpCount; i++) {
    uint64_t n = counts_[i].load(std::memory_order_relaxed);
    if (n) counts.Set(kOpNames[i], Napi::Number::New(env, static_cast<double>(n)));
  }
  o.Set("requests", counts);
  o.Set("maxWriteSeen", Napi::Number::New(env, static_cast<double>(maxWriteSeen_.load())));
  o.Set("heldBuffers", Napi::Number::New(env, static_cast<double>(heldBuffers_.load())));
  o.Set("fallbackBuffers", Napi::Number::New(env, static_cast<double>(fallbackBuffers_.load())));
  o.Set("receiveBufferSize", Napi::Number::New(env, static_cast<double>(bufSize_)));
  {
    std::lock_guard<std::mutex> lk(requestsMu_);
    o.Set("outstanding", Napi::Number::New(env, static_cast<double>(requests_.size())));
  }
  o.Set("liveWorkers", Napi::Number::New(env, live_.load()));
  return o;
}

// ---- workers ----

RecvBuf Session::allocBuf() {
  RecvBuf b;
  b.size = bufSize_;
  b.owner = allocator_;
  b.mem = allocator_->alloc(bufSize_);
  if (b.mem == nullptr && allocator_ != &defaultAllocator()) {
    fallbackBuffers_++;
    b.owner = &defaultAllocator();
    b.mem = b.owner->alloc(bufSize_);
  }
  return b;
}

void Session::workerMain() {
  RecvBuf buf = allocBuf();
  tlsRecv = &buf;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev {};
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.u32 = 0;
  epoll_ctl(ep, EPOLL_CTL_ADD, fuse_session_fd(se_), &ev);
  ev.events = EPOLLIN;
  ev.data.u32 = 1;
  epoll_ctl(ep, EPOLL_CTL_ADD, stopFd_, &ev);
  int err = 0;
  while (!stop_.load(std::memory_order_relaxed)) {
    if (buf.mem == nullptr) buf = allocBuf();
    if (buf.mem == nullptr) { err = ENOMEM; break; }
    struct fuse_buf fb {};
    fb.mem = buf.mem;
    fb.size = buf.size;
    int res = fuse_session_receive_buf(se_, &fb);
    if (res == -EAGAIN || res == -EINTR) {
      struct epoll_event evs[2];
      epoll_wait(ep, evs, 2, -1);
      continue;
    }
    if (res == 0 || fuse_session_exited(se_)) break;
    if (res < 0) { err = -res; break; }
    fuse_session_process_buf(se_, &fb);
  }
  tlsRecv = nullptr;
  if (buf.mem != nullptr) buf.owner->free(buf.mem, buf.size);
  close(ep);
  if (err != 0) workerErrno_ = err;
  // A worker that leaves on its own (unmount from outside, a device error) ends the session for all.
  if (!stop_.load()) {
    fuse_session_exit(se_);
    uint64_t one = 1;
    if (write(stopFd_, &one, sizeof one) < 0) {}
  }
  if (--live_ == 0 && !stop_.load()) postEvent(kEventEnded);
}

void Session::stealReceiveBuffer(Request* r) {
  if (tlsRecv == nullptr || tlsRecv->mem == nullptr) return;
  r->recv = *tlsRecv;
  *tlsRecv = RecvBuf{};
  heldBuffers_++;
  uint64_t n = r->size, prev = maxWriteSeen_.load();
  while (n > prev && !maxWriteSeen_.compare_exchange_weak(prev, n)) {}
}

void Session::onInit(struct fuse_conn_info* conn) {
  conn->max_write = maxWrite_;
  conn->max_read = maxRead_;
  conn->max_readahead = maxWrite_;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  // libfuse asks for READDIRPLUS because the op is wired; without a JS handler the kernel must use readdir.
  if (!implemented_[static_cast<size_t>(Op::Readdirplus)]) {
    conn->want &= ~(FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO);
  }
#ifdef FUSE_CAP_BIG_WRITES
  if (conn->capable & FUSE_CAP_BIG_WRITES) conn->want |= FUSE_CAP_BIG_WRITES;
#endif
  // Writeback cache: the kernel buffers writes in the page cache and sends them as large asynchronous
  // WRITEs; it then owns the size and times of cached regular files (see src/fs/mount.ts). Only on request.
  if (writebackCache_ && (conn->capable & FUSE_CAP_WRITEBACK_CACHE)) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
  else conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  conn_ = *conn;
  gotInit_ = true;
  postEvent(kEventInit);
}

void Session::postEvent(uint64_t kind) { tsfn_.NonBlockingCall(reinterpret_cast<void*>(kind)); }

std::unique_ptr<Request> Session::begin(fuse_req_t req, Op op) {
  counts_[static_cast<size_t>(op)].fetch_add(1, std::memory_order_relaxed);
  if (!implemented_[static_cast<size_t>(op)]) {
    if (IsForget(op)) fuse_reply_none(req);
    else fuse_reply_err(req, ENOSYS);
    return nullptr;
  }
  auto r = std::make_unique<Request>();
  r->req = req;
  r->op = op;
  const struct fuse_ctx* ctx = fuse_req_ctx(req);
  r->uid = ctx->uid;
  r->gid = ctx->gid;
  r->pid = ctx->pid;
  r->umask = ctx->umask;
  r->id = nextId_.fetch_add(1, std::memory_order_relaxed);
  return r;
}

void Session::submit(std::unique_ptr<Request> r) {
  uint64_t id = r->id;
  {
    std::lock_guard<std::mutex> lk(requestsMu_);
    requests_.emplace(id, std::move(r));
  }
  if (tsfn_.NonBlockingCall(reinterpret_cast<void*>(id)) != napi_ok) {
    std::unique_ptr<Request> back = take(id);
    if (back) {
      replyNatively(back.get(), EIO);
      if (back->recv.mem != nullptr) heldBuffers_--;
    }
  }
}

void Session::replyNatively(Request* r, int err) {
  if (IsForget(r->op)) fuse_reply_none(r->req);
  else fuse_reply_err(r->req, err);
}

// ---- JS thread: delivery ----

void Session::CallJs(Napi::Env env, Napi::Function cb, Bridge* b, void* data) {
  Session* s = b->s;
  if (env == nullptr || s == nullptr || s->closed_) return;
  uint64_t id = reinterpret_cast<uint64_t>(data);
  if (id < 16) s->deliverEvent(env, id);
  else s->deliver(env, cb, id);
}

void Session::deliverEvent(Napi::Env env, uint64_t kind) {
  Napi::Object o = Napi::Object::New(env);
  const char* name = "ended";
  if (kind == kEventInit) {
    name = "init";
    o.Set("protoMajor", conn_.proto_major);
    o.Set("protoMinor", conn_.proto_minor);
    o.Set("maxWrite", conn_.max_write);
    o.Set("maxRead", conn_.max_read);
    o.Set("maxReadahead", conn_.max_readahead);
    o.Set("capable", conn_.capable);
    o.Set("want", conn_.want);
  } else {
    o.Set("errno", workerErrno_.load());
  }
  onEvent_.Call({Napi::String::New(env, name), o});
}

Request* Session::peek(uint64_t id) {
  std::lock_guard<std::mutex> lk(requestsMu_);
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

std::unique_ptr<Request> Session::take(uint64_t id) {
  std::lock_guard<std::mutex> lk(requestsMu_);
  auto it = requests_.find(id);
  if (it == requests_.end()) return nullptr;
  std::unique_ptr<Request> r = std::move(it->second);
  requests_.erase(it);
  return r;
}

// After the reply: the JS view of a write payload is detached, then the receive buffer goes back.
void Session::release(napi_env env, std::unique_ptr<Request> r) {
  if (r->payloadRef != nullptr) {
    if (env != nullptr) {
      napi_value buf;
      if (napi_get_reference_value(env, r->payloadRef, &buf) == napi_ok && buf != nullptr) {
        napi_value ab;
        if (napi_get_typedarray_info(env, buf, nullptr, nullptr, nullptr, &ab, nullptr) == napi_ok) {
          napi_detach_arraybuffer(env, ab);
        }
      }
      napi_delete_reference(env, r->payloadRef);
    }
    r->payloadRef = nullptr;
  }
  if (r->recv.mem != nullptr) heldBuffers_--;
}

void Session::deliver(Napi::Env env, Napi::Function cb, uint64_t id) {
  Request* r = peek(id);  // only this thread erases, so r stays valid here
  if (r == nullptr) return;
  Napi::Object a = Napi::Object::New(env);
  auto num = [&](const char* k, double v) { a.Set(k, Napi::Number::New(env, v)); };
  auto str = [&](const char* k, const std::string& v) { a.Set(k, Napi::String::New(env, v)); };
  auto fh = [&]() {
    if (r->hasFh) num("fh", static_cast<double>(r->fh));
  };
  switch (r->op) {
    case Op::Lookup: case Op::Unlink: case Op::Rmdir:
      num("parent", r->ino);
      str("name", r->name);
      break;
    case Op::Forget:
      num("ino", r->ino);
      num("nlookup", static_cast<double>(r->size));
      break;
    case Op::ForgetMulti: {
      Napi::Array arr = Napi::Array::New(env, r->forgets.size());
      for (size_t i = 0; i < r->forgets.size(); i++) {
        Napi::Object f = Napi::Object::New(env);
        f.Set("ino", Napi::Number::New(env, static_cast<double>(r->forgets[i].ino)));
        f.Set("nlookup", Napi::Number::New(env, static_cast<double>(r->forgets[i].nlookup)));
        arr.Set(static_cast<uint32_t>(i), f);
      }
      a.Set("forgets", arr);
      break;
    }
    case Op::Getattr: case Op::Readlink: case Op::Statfs:
      num("ino", r->ino);
      fh();
      break;
    case Op::Setattr: {
      int v = r->flags;
      num("ino", r->ino);
      num("valid", v);
      fh();
      if (v & FUSE_SET_ATTR_MODE) num("mode", r->attr.st_mode);
      if (v & FUSE_SET_ATTR_UID) num("uid", r->attr.st_uid);
      if (v & FUSE_SET_ATTR_GID) num("gid", r->attr.st_gid);
      if (v & FUSE_SET_ATTR_SIZE) num("size", static_cast<double>(r->attr.st_size));
      if (v & FUSE_SET_ATTR_ATIME) num("atime", TimespecToMs(r->attr.st_atim));
      if (v & FUSE_SET_ATTR_MTIME) num("mtime", TimespecToMs(r->attr.st_mtim));
      if (v & FUSE_SET_ATTR_CTIME) num("ctime", TimespecToMs(r->attr.st_ctim));
      break;
    }
    case Op::Mknod: case Op::Mkdir: case Op::Create:
      num("parent", r->ino);
      str("name", r->name);
      num("mode", r->mode);
      num("umask", r->umask);
      if (r->op == Op::Mknod) num("rdev", static_cast<double>(r->rdev));
      if (r->op == Op::Create) num("flags", r->flags);
      break;
    case Op::Symlink:
      str("target", r->name2);
      num("parent", r->ino);
      str("name", r->name);
      break;
    case Op::Rename:
      num("parent", r->ino);
      str("name", r->name);
      num("newParent", r->ino2);
      str("newName", r->name2);
      num("flags", r->flags);
      break;
    case Op::Link:
      num("ino", r->ino);
      num("newParent", r->ino2);
      str("newName", r->name);
      break;
    case Op::Open: case Op::Opendir:
      num("ino", r->ino);
      num("flags", r->flags);
      break;
    case Op::Read: case Op::Readdir: case Op::Readdirplus:
      num("ino", r->ino);
      num("size", static_cast<double>(r->size));
      num("offset", static_cast<double>(r->off));
      fh();
      if (r->op == Op::Read) num("flags", r->flags);
      break;
    case Op::Write: {
      num("ino", r->ino);
      num("offset", static_cast<double>(r->off));
      fh();
      num("flags", r->flags);
      a.Set("writepage", Napi::Boolean::New(env, r->writepage));
      napi_value buf;
      if (napi_create_external_buffer(env, r->size, const_cast<char*>(r->payload), nullptr, nullptr, &buf) ==
          napi_ok) {
        napi_create_reference(env, buf, 0, &r->payloadRef);
        a.Set("data", Napi::Value(env, buf));
      } else {
        a.Set("data", Napi::Buffer<char>::Copy(env, r->payload, r->size));
      }
      break;
    }
    case Op::Flush:
      num("ino", r->ino);
      fh();
      a.Set("lockOwner", Napi::BigInt::New(env, r->lockOwner));
      break;
    case Op::Release:
      num("ino", r->ino);
      fh();
      num("flags", r->flags);
      break;
    case Op::Releasedir:
      num("ino", r->ino);
      fh();
      break;
    case Op::Fsync: case Op::Fsyncdir:
      num("ino", r->ino);
      fh();
      a.Set("datasync", Napi::Boolean::New(env, r->mode != 0));
      break;
    case Op::Setxattr:
      num("ino", r->ino);
      str("name", r->name);
      a.Set("value", Napi::Buffer<char>::Copy(env, r->value.data(), r->value.size()));
      num("flags", r->flags);
      break;
    case Op::Getxattr:
      num("ino", r->ino);
      str("name", r->name);
      num("size", static_cast<double>(r->size));
      break;
    case Op::Listxattr:
      num("ino", r->ino);
      num("size", static_cast<double>(r->size));
      break;
    case Op::Removexattr:
      num("ino", r->ino);
      str("name", r->name);
      break;
    case Op::Access:
      num("ino", r->ino);
      num("mask", r->flags);
      break;
    case Op::Fallocate:
      num("ino", r->ino);
      fh();
      num("mode", r->mode);
      num("offset", static_cast<double>(r->off));
      num("length", static_cast<double>(r->size));
      break;
    case Op::CopyFileRange:
      num("inoIn", r->ino);
      num("offIn", static_cast<double>(r->off));
      num("fhIn", static_cast<double>(r->fh));
      num("inoOut", r->ino2);
      num("offOut", static_cast<double>(r->off2));
      num("fhOut", static_cast<double>(r->fh2));
      num("len", static_cast<double>(r->size));
      num("flags", r->flags);
      break;
    case Op::Lseek:
      num("ino", r->ino);
      fh();
      num("offset", static_cast<double>(r->off));
      num("whence", r->mode);
      break;
    case Op::Count:
      break;
  }
  cb.Call({Napi::Number::New(env, static_cast<double>(r->op)), Napi::Number::New(env, static_cast<double>(id)), a,
           Napi::Number::New(env, r->uid), Napi::Number::New(env, r->gid), Napi::Number::New(env, r->pid)});
}

// ---- JS thread: replies. Each returns true when sent, false when the id is not outstanding. ----

namespace {
bool IdArg(const Napi::CallbackInfo& info, uint64_t* id) {
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(info.Env(), "request id expected").ThrowAsJavaScriptException();
    return false;
  }
  *id = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
  return true;
}
double NumArg(const Napi::CallbackInfo& info, size_t i) {
  return info.Length() > i && info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : 0.0;
}
}  // namespace

#define TAKE()                                              \
  Napi::Env env = info.Env();                               \
  uint64_t id;                                              \
  if (!IdArg(info, &id)) return env.Undefined();            \
  std::unique_ptr<Request> r = take(id);                    \
  if (!r) return Napi::Boolean::New(env, false)

#define DONE()          \
  release(env, std::move(r)); \
  return Napi::Boolean::New(env, true)

Napi::Value Session::ReplyErr(const Napi::CallbackInfo& info) {
  TAKE();
  int err = static_cast<int>(NumArg(info, 1));
  if (IsForget(r->op)) fuse_reply_none(r->req);
  else fuse_reply_err(r->req, err);
  DONE();
}

Napi::Value Session::ReplyNone(const Napi::CallbackInfo& info) {
  TAKE();
  fuse_reply_none(r->req);
  DONE();
}

// replyEntry(id, attr: Float64Array, generation, attrTimeout, entryTimeout); attr[0] (ino) 0 = negative entry
Napi::Value Session::ReplyEntry(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct fuse_entry_param e {};
  if (info.Length() < 5 || !ReadAttr(info[1], &e.attr)) {
    Napi::TypeError::New(env, "replyEntry(id, attr, generation, attrTimeout, entryTimeout)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint64_t id;
  if (!IdArg(info, &id)) return env.Undefined();
  std::unique_ptr<Request> r = take(id);
  if (!r) return Napi::Boolean::New(env, false);
  e.ino = e.attr.st_ino;
  e.generation = static_cast<uint64_t>(NumArg(info, 2));
  e.attr_timeout = NumArg(info, 3);
  e.entry_timeout = NumArg(info, 4);
  fuse_reply_entry(r->req, &e);
  DONE();
}

// replyCreate(id, attr, generation, attrTimeout, entryTimeout, fh, openFlags)
Napi::Value Session::ReplyCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct fuse_entry_param e {};
  if (info.Length() < 7 || !ReadAttr(info[1], &e.attr)) {
    Napi::TypeError::New(env, "replyCreate(id, attr, generation, attrTimeout, entryTimeout, fh, flags)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint64_t id;
  if (!IdArg(info, &id)) return env.Undefined();
  std::unique_ptr<Request> r = take(id);
  if (!r) return Napi::Boolean::New(env, false);
  e.ino = e.attr.st_ino;
  e.generation = static_cast<uint64_t>(NumArg(info, 2));
  e.attr_timeout = NumArg(info, 3);
  e.entry_timeout = NumArg(info, 4);
  struct fuse_file_info fi;
  FillOpenFlags(&fi, static_cast<uint64_t>(NumArg(info, 5)), static_cast<uint32_t>(NumArg(info, 6)));
  fuse_reply_create(r->req, &e, &fi);
  DONE();
}

// replyAttr(id, attr, timeout)
Napi::Value Session::ReplyAttr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct stat st;
  if (info.Length() < 3 || !ReadAttr(info[1], &st)) {
    Napi::TypeError::New(env, "replyAttr(id, attr, timeout)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint64_t id;
  if (!IdArg(info, &id)) return env.Undefined();
  std::unique_ptr<Request> r = take(id);
  if (!r) return Napi::Boolean::New(env, false);
  fuse_reply_attr(r->req, &st, NumArg(info, 2));
  DONE();
}

// replyOpen(id, fh, openFlags)
Napi::Value Session::ReplyOpen(const Napi::CallbackInfo& info) {
  TAKE();
  struct fuse_file_info fi;
  FillOpenFlags(&fi, static_cast<uint64_t>(NumArg(info, 1)), static_cast<uint32_t>(NumArg(info, 2)));
  fuse_reply_open(r->req, &fi);
  DONE();
}

Napi::Value Session::ReplyWrite(const Napi::CallbackInfo& info) {
  TAKE();
  fuse_reply_write(r->req, static_cast<size_t>(NumArg(info, 1)));
  DONE();
}

// replyBuf(id, data?: Uint8Array): zero-length when data is missing.
Napi::Value Session::ReplyBuf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* p = nullptr;
  size_t n = 0;
  if (info.Length() > 1 && info[1].IsTypedArray()) {
    auto ta = info[1].As<Napi::TypedArray>();
    napi_value ab;
    void* data = nullptr;
    size_t len = 0, off = 0;
    napi_typedarray_type t;
    napi_get_typedarray_info(env, ta, &t, &len, &data, &ab, &off);
    p = static_cast<const char*>(data);
    n = ta.ByteLength();
  }
  uint64_t id;
  if (!IdArg(info, &id)) return env.Undefined();
  std::unique_ptr<Request> r = take(id);
  if (!r) return Napi::Boolean::New(env, false);
  fuse_reply_buf(r->req, p, n);
  DONE();
}

// replyStatfs(id, Float64Array(10))
Napi::Value Session::ReplyStatfs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsTypedArray() ||
      info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      info[1].As<Napi::TypedArray>().ElementLength() < kStatfsLen) {
    Napi::TypeError::New(env, "replyStatfs(id, Float64Array(10))").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const double* a = info[1].As<Napi::Float64Array>().Data();
  uint64_t id;
  if (!IdArg(info, &id)) return env.Undefined();
  std::unique_ptr<Request> r = take(id);
  if (!r) return Napi::Boolean::New(env, false);
  struct statvfs sv {};
  sv.f_bsize = static_cast<unsigned long>(a[0]);
  sv.f_frsize = static_cast<unsigned long>(a[1]);
  sv.f_blocks = static_cast<fsblkcnt_t>(a[2]);
  sv.f_bfree = static_cast<fsblkcnt_t>(a[3]);
  sv.f_bavail = static_cast<fsblkcnt_t>(a[4]);
  sv.f_files = static_cast<fsfilcnt_t>(a[5]);
  sv.f_ffree = static_cast<fsfilcnt_t>(a[6]);
  sv.f_favail = static_cast<fsfilcnt_t>(a[7]);
  sv.f_fsid = static_cast<unsigned long>(a[8]);
  sv.f_namemax = static_cast<unsigned long>(a[9]);
  fuse_reply_statfs(r->req, &sv);
  DONE();
}

Napi::Value Session::ReplyReadlink(const Napi::CallbackInfo& info) {
  TAKE();
  std::string target = info.Length() > 1 ? info[1].ToString().Utf8Value() : std::string();
  fuse_reply_readlink(r->req, target.c_str());
  DONE();
}

Napi::Value Session::ReplyXattr(const Napi::CallbackInfo& info) {
  TAKE();
  fuse_reply_xattr(r->req, static_cast<size_t>(NumArg(info, 1)));
  DONE();
}

Napi::Value Session::ReplyLseek(const Napi::CallbackInfo& info) {
  TAKE();
  fuse_reply_lseek(r->req, static_cast<off_t>(NumArg(info, 1)));
  DONE();
}

// dirAdd(id, name, ino, mode, nextOffset): false when the entry does not fit (reply with what is there).
Napi::Value Session::DirAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  if (!IdArg(info, &id)) return env.Undefined();
  if (info.Length() < 5 || !info[1].IsString()) {
    Napi::TypeError::New(env, "dirAdd(id, name, ino, mode, nextOffset)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Request* r = peek(id);
  if (r == nullptr || (r->op != Op::Readdir && r->op != Op::Readdirplus)) return Napi::Boolean::New(env, false);
  if (r->dir.empty()) r->dir.resize(r->size);
  std::string name = info[1].As<Napi::String>().Utf8Value();
  struct stat st {};
  st.st_ino = static_cast<ino_t>(NumArg(info, 2));
  st.st_mode = static_cast<mode_t>(NumArg(info, 3));
  size_t left = r->dir.size() - r->dirUsed;
  size_t need = fuse_add_direntry(r->req, r->dir.data() + r->dirUsed, left, name.c_str(), &st,
                                  static_cast<off_t>(NumArg(info, 4)));
  if (need > left) return Napi::Boolean::New(env, false);
  r->dirUsed += need;
  return Napi::Boolean::New(env, true);
}

// dirAddPlus(id, name, attr, generation, attrTimeout, entryTimeout, nextOffset): as dirAdd, with the entry
// (each entry other than "." and ".." counts as a lookup in the kernel).
Napi::Value Session::DirAddPlus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t id;
  if (!IdArg(info, &id)) return env.Undefined();
  struct fuse_entry_param e {};
  if (info.Length() < 7 || !info[1].IsString() || !ReadAttr(info[2], &e.attr)) {
    Napi::TypeError::New(env, "dirAddPlus(id, name, attr, generation, attrTimeout, entryTimeout, nextOffset)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Request* r = peek(id);
  if (r == nullptr || r->op != Op::Readdirplus) return Napi::Boolean::New(env, false);
  if (r->dir.empty()) r->dir.resize(r->size);
  std::string name = info[1].As<Napi::String>().Utf8Value();
  e.ino = e.attr.st_ino;
  e.generation = static_cast<uint64_t>(NumArg(info, 3));
  e.attr_timeout = NumArg(info, 4);
  e.entry_timeout = NumArg(info, 5);
  size_t left = r->dir.size() - r->dirUsed;
  size_t need = fuse_add_direntry_plus(r->req, r->dir.data() + r->dirUsed, left, name.c_str(), &e,
                                       static_cast<off_t>(NumArg(info, 6)));
  if (need > left) return Napi::Boolean::New(env, false);
  r->dirUsed += need;
  return Napi::Boolean::New(env, true);
}

Napi::Value Session::ReplyDir(const Napi::CallbackInfo& info) {
  TAKE();
  fuse_reply_buf(r->req, r->dir.data(), r->dirUsed);
  DONE();
}

#undef TAKE
#undef DONE

void RegisterFuse(Napi::Env env, Napi::Object exports) {
  fuse_set_log_func(LogFunc);
  exports.Set("FuseSession", Session::Define(env));
  Napi::Array names = Napi::Array::New(env, kOpCount);
  for (size_t i = 0; i < kOpCount; i++) names.Set(static_cast<uint32_t>(i), kOpNames[i]);
  exports.Set("fuseOpNames", names);
  exports.Set("fuseVersion", Napi::Number::New(env, fuse_version()));
}

}  // namespace cubefs::fuse
