// misbehave-cpp offers stages that break the rules in ways the host must
// survive, written with the C++ SDK: keeping a writable mapping of an output
// (itself or in a forked child), writing to a read-only input, crashing,
// hanging.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>

#include <pipehost/pipehost.hpp>

namespace {

void say(const char* line) {
  // Plain stderr lines: the host quotes the last ones when the stage fails.
  std::fprintf(stderr, "%s\n", line);
  std::fflush(stderr);
}

// keepmap fills its output, then maps the same pages a second time and
// leaks that writable mapping: the host cannot write-seal the segment.
void keepmap(pipehost::Context& ctx) {
  auto out = ctx.output_grid<float>("out");
  for (float& v : out) v = 1.0f;
  const long page = ::sysconf(_SC_PAGESIZE);
  auto base = reinterpret_cast<uintptr_t>(out.data()) & ~static_cast<uintptr_t>(page - 1);
  const size_t len = out.size() * sizeof(float) + (reinterpret_cast<uintptr_t>(out.data()) - base);
  // mremap with old size 0 duplicates a shared mapping.
  void* dup = ::mremap(reinterpret_cast<void*>(base), 0, len, MREMAP_MAYMOVE);
  if (dup == MAP_FAILED) throw pipehost::Error("bad-cpp.keepmap: could not duplicate the mapping");
  say("bad-cpp.keepmap: returning with a second writable mapping of my output");
}

// The forked child below may only make system calls (the plugin has other
// threads): these build its note lines without allocating.
size_t put(char* dst, const char* s) {
  size_t n = 0;
  while (s[n] != '\0') {
    dst[n] = s[n];
    ++n;
  }
  return n;
}

size_t put(char* dst, unsigned long v) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  for (size_t i = 0; i < n; ++i) dst[i] = tmp[n - 1 - i];
  return n;
}

void note(const char* path, const char* line, size_t n) {
  if (path[0] == '\0') return;
  const int fd = ::open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  (void)!::write(fd, line, n);
  ::close(fd);
}

// wait_byte waits up to ms for a byte on fd: true with the byte, false on
// EOF (the plugin is gone), an error or the timeout.
bool wait_byte(int fd, int ms, char* c) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, ms) != 1) return false;
  return ::read(fd, c, 1) == 1;
}

constexpr int kChildLifeMs = 10000;  // bounds the child's life

// forkmap_child holds the writable mapping it inherited, writes the marker
// into the output a moment after the stage returned (go), and exits once
// the plugin is gone (go reads EOF) or after kChildLifeMs.
[[noreturn]] void forkmap_child(const char* path, float* cells, size_t bytes, int ready, int go) {
  char line[128];
  size_t n = put(line, "child ");
  n += put(line + n, static_cast<unsigned long>(::getpid()));
  n += put(line + n, " mapped ");
  n += put(line + n, static_cast<unsigned long>(bytes));
  n += put(line + n, " bytes writable (fork)\n");
  note(path, line, n);
  (void)!::write(ready, "r", 1);
  char c;
  if (!wait_byte(go, kChildLifeMs, &c)) ::_exit(0);
  const timespec late{0, 20 * 1000 * 1000};
  ::nanosleep(&late, nullptr);
  *static_cast<volatile float*>(cells) = -7.0f;
  n = put(line, "child ");
  n += put(line + n, static_cast<unsigned long>(::getpid()));
  n += put(line + n, " wrote after the stage returned\n");
  note(path, line, n);
  while (wait_byte(go, kChildLifeMs, &c)) {
  }
  ::_exit(0);
}

// forkmap fills its output, then forks. The child inherits the SDK's
// writable mapping of the output (fork copies shared mappings) and keeps it
// after the SDK unmaps its own view before the Result.
void forkmap(pipehost::Context& ctx) {
  auto out = ctx.output_grid<float>("out");
  for (float& v : out) v = 1.0f;
  const std::string path = ctx.param<std::string>("note");
  int ready[2], go[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) throw pipehost::Error("bad-cpp.forkmap: pipe");
  if (::pipe2(go, O_CLOEXEC) != 0) {
    ::close(ready[0]);
    ::close(ready[1]);
    throw pipehost::Error("bad-cpp.forkmap: pipe");
  }
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(ready[0]);
    ::close(go[1]);
    forkmap_child(path.c_str(), out.data(), out.size() * sizeof(float), ready[1], go[0]);
  }
  ::close(ready[1]);
  ::close(go[0]);
  char c = 0;
  const bool ok = pid > 0 && wait_byte(ready[0], 5000, &c) && c == 'r';
  ::close(ready[0]);
  if (!ok) {
    ::close(go[1]);
    throw pipehost::Error("bad-cpp.forkmap: the forked child did not get ready");
  }
  // go[1] stays open as long as the plugin lives: the child's lifeline.
  (void)!::write(go[1], "g", 1);
  say("bad-cpp.forkmap: returning while a forked child maps my output writable");
}

// writeinput writes to its sealed, read-only input: the process dies of
// SIGSEGV, and the segment stays unchanged for other consumers.
void writeinput(pipehost::Context& ctx) {
  auto in = ctx.input_grid<float>("in");
  say("bad-cpp.writeinput: writing to my read-only input");
  volatile float* p = const_cast<float*>(in.data());
  p[0] = 42.0f;
  say("bad-cpp.writeinput: the write did not fault");
}

void crash(pipehost::Context& ctx) {
  (void)ctx.output_grid<float>("out");
  say("bad-cpp.crash: about to abort");
  std::abort();
}

// hang sleeps forever and never looks at cancellation.
void hang(pipehost::Context&) {
  say("bad-cpp.hang: sleeping forever");
  for (;;) ::pause();
}

}  // namespace

int main() {
  using pipehost::DType;
  using pipehost::grid_port;
  using pipehost::Stage;
  pipehost::serve({
      Stage{"bad-cpp.keepmap", "1"}.output(grid_port("out", DType::F32)).run(keepmap),
      Stage{"bad-cpp.forkmap", "1"}
          .output(grid_port("out", DType::F32))
          .param(pipehost::Param<std::string>{"note", "", "file to append progress lines to"})
          .run(forkmap),
      Stage{"bad-cpp.writeinput", "1"}.input(grid_port("in", DType::F32)).run(writeinput),
      Stage{"bad-cpp.crash", "1"}.output(grid_port("out", DType::F32)).run(crash),
      Stage{"bad-cpp.hang", "1"}.output(grid_port("out", DType::F32)).run(hang),
  });
}
