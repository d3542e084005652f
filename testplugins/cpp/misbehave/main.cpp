// misbehave-cpp offers stages that break the rules in ways the host must
// survive, written with the C++ SDK: keeping a writable mapping of an output,
// writing to a read-only input, crashing, hanging.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

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
      Stage{"bad-cpp.writeinput", "1"}.input(grid_port("in", DType::F32)).run(writeinput),
      Stage{"bad-cpp.crash", "1"}.output(grid_port("out", DType::F32)).run(crash),
      Stage{"bad-cpp.hang", "1"}.output(grid_port("out", DType::F32)).run(hang),
  });
}
