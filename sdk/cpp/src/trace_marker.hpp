// Trace markers: stage and subtask begin/end written to the kernel's tracefs
// trace_marker in the systrace text format Perfetto and trace-cmd read
// (docs/protocol.md, "Trace markers"). The host names the file in the Run
// request; nothing is opened or written unless it does.
#pragma once

#include <cstdint>
#include <string>

namespace pipehost::detail::trace {

// open opens path for markers once per process (later calls return the first
// call's result) and reports whether markers can be written. A failure is
// reported once on stderr.
bool open(const std::string& path);
// next_base returns a process-unique base for one Run's async-slice cookies.
uint64_t next_base();

// One write(2) each. begin/end nest per thread; async_begin/async_end pair
// by name and cookie from any thread.
void begin(const std::string& name);
void end();
void async_begin(const std::string& name, uint64_t cookie);
void async_end(const std::string& name, uint64_t cookie);

}  // namespace pipehost::detail::trace
