#include "trace_marker.hpp"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <mutex>

namespace pipehost::detail::trace {
namespace {

// The kernel cuts a marker at 4 KiB; names are cut well below.
constexpr size_t kMaxName = 512;

std::once_flag g_once;
int g_fd = -1;
char g_pid[24];
size_t g_pid_len = 0;
std::atomic<uint64_t> g_bases{0};

char* put(char* p, const char* s, size_t n) {
  memcpy(p, s, n);
  return p + n;
}

char* put_uint(char* p, uint64_t v) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) *p++ = tmp[--n];
  return p;
}

// '|' and line breaks would split the marker's fields or lines.
char* put_name(char* p, const std::string& name) {
  const size_t n = name.size() < kMaxName ? name.size() : kMaxName;
  for (size_t i = 0; i < n; i++) {
    const char c = name[i];
    *p++ = (c == '|' || c == '\n' || c == '\r') ? '_' : c;
  }
  return p;
}

void emit(char kind, const std::string* name, bool with_num, uint64_t num) {
  if (g_fd < 0) return;
  char buf[kMaxName + 64];
  char* p = buf;
  *p++ = kind;
  *p++ = '|';
  p = put(p, g_pid, g_pid_len);
  if (name != nullptr) {
    *p++ = '|';
    p = put_name(p, *name);
  }
  if (with_num) {
    *p++ = '|';
    p = put_uint(p, num);
  }
  // One write(2) is one trace event. A full or stopped trace is not the
  // stage's problem: the result is ignored.
  ssize_t r = ::write(g_fd, buf, static_cast<size_t>(p - buf));
  (void)r;
}

}  // namespace

bool open(const std::string& path) {
  std::call_once(g_once, [&] {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
      std::fprintf(stderr, "trace markers: open %s: %s; no trace markers from this plugin\n", path.c_str(),
                   strerror(errno));
      return;
    }
    g_pid_len = static_cast<size_t>(put_uint(g_pid, static_cast<uint64_t>(::getpid())) - g_pid);
    g_fd = fd;
  });
  return g_fd >= 0;
}

uint64_t next_base() { return (g_bases.fetch_add(1) + 1) << 32; }

void begin(const std::string& name) { emit('B', &name, false, 0); }
void end() { emit('E', nullptr, false, 0); }
void async_begin(const std::string& name, uint64_t cookie) { emit('S', &name, true, cookie); }
void async_end(const std::string& name, uint64_t cookie) { emit('F', &name, true, cookie); }

}  // namespace pipehost::detail::trace
