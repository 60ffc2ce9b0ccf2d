// punchHole for the extent store (see punch_hole.h). No C++ exception crosses into JS.
#include "punch_hole.h"

#include <fcntl.h>
#include <linux/falloc.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <string>

namespace cubefs::store {
namespace {

// Offsets travel as JS numbers: beyond 2^53 they are no longer exact integers.
constexpr double kMaxSafeInteger = 9007199254740991.0;

// A non-negative integer argument no larger than `max`, or a TypeError thrown (returns false).
bool IntArg(const Napi::CallbackInfo& info, size_t i, const char* name, double max, double* out) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) {
    Napi::TypeError::New(env, std::string("punchHole(fd, offset, length): ") + name + " must be a number")
        .ThrowAsJavaScriptException();
    return false;
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(v) || std::trunc(v) != v || v < 0 || v > max) {
    Napi::TypeError::New(env, std::string("punchHole(fd, offset, length): ") + name +
                                  " must be a non-negative integer (got " + info[i].ToString().Utf8Value() + ")")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = v;
  return true;
}

const char* ErrnoName(int err) {
  const char* n = strerrorname_np(err);
  return n != nullptr ? n : "EIO";
}

Napi::Value PunchHole(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double fd, offset, length;
  if (!IntArg(info, 0, "fd", INT_MAX, &fd) || !IntArg(info, 1, "offset", kMaxSafeInteger, &offset) ||
      !IntArg(info, 2, "length", kMaxSafeInteger, &length)) {
    return env.Undefined();
  }
  if (offset + length > kMaxSafeInteger) {
    Napi::TypeError::New(env, "punchHole(fd, offset, length): offset + length is past 2^53")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // fallocate refuses a zero length (EINVAL); an empty range has nothing to give back.
  if (length == 0) return env.Undefined();
  int rc;
  do {
    rc = fallocate(static_cast<int>(fd), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                   static_cast<off_t>(length));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int err = errno;
    Napi::Error e = Napi::Error::New(env, std::string("fallocate(PUNCH_HOLE) of [") +
                                              std::to_string(static_cast<long long>(offset)) + ", +" +
                                              std::to_string(static_cast<long long>(length)) + ") on fd " +
                                              std::to_string(static_cast<int>(fd)) + ": " + strerror(err));
    e.Set("code", Napi::String::New(env, ErrnoName(err)));
    e.Set("errno", Napi::Number::New(env, err));
    e.Set("syscall", Napi::String::New(env, "fallocate"));
    e.ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

}  // namespace

void RegisterStore(Napi::Env env, Napi::Object exports) {
  exports.Set("punchHole", Napi::Function::New(env, PunchHole, "punchHole"));
}

}  // namespace cubefs::store
