// minimal-cpp: the smallest C++ plugin, for launch-time and per-stage
// overhead measurements and the SDK's process tests. minimal-cpp.noop does
// nothing; minimal-cpp.fill writes its output grid once; minimal-cpp.stdout
// prints to stdout (which must end up on stderr) and returns a blob;
// minimal-cpp.sleep sleeps (concurrency); minimal-cpp.alloc touches mb MiB (peak memory);
// minimal-cpp.blob / minimal-cpp.blobsum make and read blobs of n bytes;
// minimal-cpp.tablebytes looks at an Arrow table made elsewhere.
#include <chrono>
#include <cstdio>
#include <thread>
#include <cstring>
#include <iostream>
#include <vector>

#include <pipehost/pipehost.hpp>

int main() {
  pipehost::serve({
      pipehost::Stage{"minimal-cpp.noop", "1"}
          .doc("Does nothing.")
          .concurrent()
          .run([](pipehost::Context&) {}),
      pipehost::Stage{"minimal-cpp.fill", "1"}
          .doc("Fills its output grid with value.")
          .output(pipehost::grid_port("out", pipehost::DType::F32))
          .param(pipehost::Param<double>{"value", 1.0, "the value of every cell"})
          .concurrent()
          .run([](pipehost::Context& ctx) {
            const float v = static_cast<float>(ctx.param<double>("value"));
            for (float& x : ctx.output_grid<float>("out")) x = v;
          }),
      pipehost::Stage{"minimal-cpp.stdout", "1"}
          .doc("Prints a line to stdout and returns it as a blob.")
          .output(pipehost::blob_port("text"))
          .run([](pipehost::Context& ctx) {
            const char* line = "minimal-cpp: a stray line on stdout";
            std::cout << line << std::endl;
            std::printf("%s (printf)\n", line);
            std::fflush(stdout);
            auto blob = ctx.new_blob("text", std::strlen(line));
            std::memcpy(blob.data(), line, blob.size());
            auto span = ctx.timed("outer");
            auto inner = ctx.timed("inner");
            ctx.info("logged through the host");
          }),
      pipehost::Stage{"minimal-cpp.sleep", "1"}
          .doc("Sleeps ms milliseconds, honouring cancellation.")
          .param(pipehost::Param<int64_t>{"ms", 100})
          .concurrent()
          .run([](pipehost::Context& ctx) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ctx.param<int64_t>("ms"));
            while (std::chrono::steady_clock::now() < until) {
              ctx.throw_if_cancelled();
              std::this_thread::sleep_for(std::chrono::milliseconds(5));
            }
          }),
      pipehost::Stage{"minimal-cpp.alloc", "1"}
          .doc("Allocates and touches mb MiB, then frees them.")
          .param(pipehost::Param<int64_t>{"mb", 200})
          .concurrent()
          .run([](pipehost::Context& ctx) {
            std::vector<uint8_t> block(static_cast<size_t>(ctx.param<int64_t>("mb")) << 20);
            for (size_t i = 0; i < block.size(); i += 4096) block[i] = static_cast<uint8_t>(i >> 12);
            ctx.metric("touched", static_cast<double>(block.size()));
          }),
      pipehost::Stage{"minimal-cpp.blob", "1"}
          .doc("Writes n bytes (i*7 mod 251) to a blob of unknown size, in chunks.")
          .output(pipehost::blob_port("out"))
          .param(pipehost::Param<int64_t>{"n", 1000})
          .concurrent()
          .run([](pipehost::Context& ctx) {
            const int64_t n = ctx.param<int64_t>("n");
            auto& out = ctx.output_stream("out");
            std::vector<uint8_t> chunk;
            double sum = 0;
            for (int64_t i = 0; i < n; ++i) {
              chunk.push_back(static_cast<uint8_t>(i * 7 % 251));
              sum += chunk.back();
              if (chunk.size() == 4096 || i == n - 1) {
                out.write(chunk.data(), chunk.size());
                chunk.clear();
              }
            }
            ctx.metric("sum", sum);
            ctx.metric("n", static_cast<double>(out.size()));
          }),
      pipehost::Stage{"minimal-cpp.blobsum", "1"}
          .doc("Adds up the bytes of a blob.")
          .input(pipehost::blob_port("in"))
          .concurrent()
          .run([](pipehost::Context& ctx) {
            double sum = 0;
            const auto bytes = ctx.input_bytes("in");
            for (uint8_t b : bytes) sum += b;
            ctx.metric("sum", sum);
            ctx.metric("n", static_cast<double>(bytes.size()));
          }),
      pipehost::Stage{"minimal-cpp.tablebytes", "1"}
          .doc("Reports the size and format of a table input and whether it is an Arrow IPC file.")
          .input(pipehost::table_port("in"))
          .run([](pipehost::Context& ctx) {
            const auto bytes = ctx.input_bytes("in");
            const auto& h = ctx.input_handle("in");
            const bool arrow = bytes.size() >= 12 && std::memcmp(bytes.data(), "ARROW1", 6) == 0 &&
                               std::memcmp(bytes.data() + bytes.size() - 6, "ARROW1", 6) == 0;
            ctx.metric("n", static_cast<double>(bytes.size()));
            ctx.metric("format", static_cast<double>(h.format));
            ctx.metric("arrow", arrow ? 1 : 0);
          }),
  });
}
