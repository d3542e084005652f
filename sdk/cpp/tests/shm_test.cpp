// Segments, mappings, the fd channel and a Run's buffers, on real memfds and
// a real SOCK_SEQPACKET socketpair (the test plays the host).
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>
#include <future>
#include <sys/syscall.h>
#include <linux/memfd.h>
#include <thread>

#include <gtest/gtest.h>

#include "data.hpp"
#include "pipehost/error.hpp"
#include "fdtest.hpp"
#include "shm.hpp"

using namespace pipehost::detail;
using fdtest::open_count;
using fdtest::Pair;
using fdtest::send_raw;
namespace pb = pipehost::v1;

namespace {

int open_fds() {
  int n = 0;
  for (int fd = 0; fd < 1024; ++fd) {
    if (::fcntl(fd, F_GETFD) >= 0) ++n;
  }
  return n;
}

Message segment_msg(uint64_t token, uint64_t id, uint64_t size) {
  Message m;
  m.type = MsgType::Segment;
  m.token = token;
  m.segment_id = id;
  m.size = size;
  return m;
}

void fill_grid(pb::Handle* h, uint64_t id, uint64_t seg_size, uint64_t height, uint64_t width) {
  h->set_segment_id(id);
  h->set_segment_size(seg_size);
  h->set_offset(0);
  h->set_nbytes(height * width * 4);
  h->set_dtype(pb::DTYPE_F32);
  h->add_shape(height);
  h->add_shape(width);
  h->add_strides(width * 4);
  h->add_strides(4);
  h->set_kind(pb::PORT_KIND_GRID);
  h->set_format(pb::FORMAT_RAW);
}

}  // namespace

TEST(Segment, CreateSealsTheSizeAtOnce) {
  Segment s = Segment::create("test.create", 4096);
  EXPECT_EQ(s.size(), 4096u);
  const int seals = s.seals();
  EXPECT_TRUE(seals & F_SEAL_SHRINK);
  EXPECT_TRUE(seals & F_SEAL_GROW);
  EXPECT_FALSE(seals & F_SEAL_WRITE);
  EXPECT_TRUE(::fcntl(s.fd(), F_GETFD) & FD_CLOEXEC);
  EXPECT_NE(::ftruncate(s.fd(), 8192), 0) << "the size is sealed";
  EXPECT_EQ(seal_string(seals & (F_SEAL_SHRINK | F_SEAL_GROW)), "shrink,grow");
}

TEST(Segment, OpenRefusesWhatIsNotASizeSealedMemfd) {
  // A memfd without size seals.
  int raw = static_cast<int>(::syscall(SYS_memfd_create, "plain", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  ASSERT_GE(raw, 0);
  ASSERT_EQ(::ftruncate(raw, 64), 0);
  try {
    Segment::open(UniqueFd(raw));
    FAIL() << "opened a segment without size seals";
  } catch (const pipehost::Error& e) {
    EXPECT_NE(std::string(e.what()).find("size is not sealed"), std::string::npos) << e.what();
  }
  // A pipe is not a file.
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  ::close(p[1]);
  EXPECT_THROW(Segment::open(UniqueFd(p[0])), pipehost::Error);
}

TEST(Mapping, ReadOnlyNeedsTheWriteSeal) {
  Segment s = Segment::create("test.ro", 4096);
  EXPECT_THROW(Mapping::map_ro(s), pipehost::Error);
  {
    Mapping w = Mapping::map_rw(s);
    std::memset(w.data(), 7, 4096);
    // While a writable mapping exists the kernel refuses the write seal.
    try {
      s.seal_write();
      FAIL() << "write-sealed a segment with a writable mapping";
    } catch (const pipehost::Error& e) {
      EXPECT_NE(std::string(e.what()).find("writable shared mapping"), std::string::npos) << e.what();
    }
    w.unmap();
    EXPECT_FALSE(w.mapped());
  }
  s.seal_write();
  EXPECT_TRUE(s.write_sealed());
  EXPECT_THROW(Mapping::map_rw(s), pipehost::Error);
  Mapping r = Mapping::map_ro(s);
  EXPECT_EQ(r.data()[4095], 7);
  // mprotect back to writable is refused for a sealed segment.
  EXPECT_NE(::mprotect(r.data(), 4096, PROT_READ | PROT_WRITE), 0);
}

TEST(MappingDeathTest, WritingToAReadOnlyInputFaults) {
  Segment s = Segment::create("test.segv", 4096);
  s.seal_write();
  Mapping r = Mapping::map_ro(s);
  EXPECT_EXIT({ const_cast<volatile uint8_t*>(r.data())[0] = 1; }, ::testing::KilledBySignal(SIGSEGV), "");
  EXPECT_EQ(r.data()[0], 0);
}

TEST(Mapping, EmptySegmentIsAnEmptyView) {
  Segment s = Segment::create("test.empty", 0);
  Mapping w = Mapping::map_rw(s);
  EXPECT_EQ(w.data(), nullptr);
  EXPECT_EQ(w.size(), 0u);
}

// RssShmem of this process in bytes: the shared pages it has mapped.
int64_t rss_shmem() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("RssShmem:", 0) == 0) return std::stoll(line.substr(9)) * 1024;
  }
  return -1;
}

// A writable mapping of 1 MiB or more has every page present at once (zero),
// before the stage writes anything; a smaller one is left to the faults.
TEST(Mapping, LargeWritableMappingIsPopulated) {
  constexpr uint64_t size = 32 << 20;
  Segment s = Segment::create("test.populate", size);
  const int64_t before = rss_shmem();
  ASSERT_GE(before, 0) << "no RssShmem in /proc/self/status";
  Mapping w = Mapping::map_rw(s);
  EXPECT_GE(rss_shmem() - before, static_cast<int64_t>(size * 9 / 10));
  EXPECT_EQ(w.data()[0], 0);
  EXPECT_EQ(w.data()[size - 1], 0);
  Segment small = Segment::create("test.small", 256 << 10);
  const int64_t mid = rss_shmem();
  Mapping ws = Mapping::map_rw(small);
  EXPECT_LT(rss_shmem() - mid, 128 << 10);
}

TEST(Mapping, ShmemThpSettingIsParsed) {
  EXPECT_TRUE(shmem_thp_allows("always within_size [advise] never deny force"));
  EXPECT_FALSE(shmem_thp_allows("always within_size advise [never] deny force"));
  EXPECT_FALSE(shmem_thp_allows("garbage"));
}

TEST(FdChannel, HeaderLayoutIsLittleEndian) {
  Message m = segment_msg(0x0102030405060708ULL, 0x1112131415161718ULL, 0x2122232425262728ULL);
  const auto b = encode_header(m);
  const uint8_t want[32] = {0x50, 0x48, 0x46, 0x44, 1, 0, 1, 0, 8, 7, 6, 5, 4, 3, 2, 1,
                            0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11, 0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21};
  EXPECT_EQ(std::memcmp(b.data(), want, 32), 0);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.data()), 4), "PHFD");
  Message back;
  std::string why;
  ASSERT_TRUE(decode_header(b.data(), b.size(), back, why)) << why;
  EXPECT_EQ(back.token, m.token);
  EXPECT_EQ(back.segment_id, m.segment_id);
  EXPECT_EQ(back.size, m.size);
}

TEST(FdChannel, DecodeRejects) {
  auto check = [](std::array<uint8_t, 32> b, size_t n, const char* want) {
    Message m;
    std::string why;
    EXPECT_FALSE(decode_header(b.data(), n, m, why)) << want;
    EXPECT_NE(why.find(want), std::string::npos) << why;
  };
  const auto good = encode_header(segment_msg(1, 1, 1));
  check(good, 31, "31 bytes");
  auto bad = good;
  bad[0] = 'X';
  check(bad, 32, "bad magic");
  bad = good;
  bad[4] = 2;
  check(bad, 32, "header version 2");
  bad = good;
  bad[6] = 4;
  check(bad, 32, "unknown message type 4");
  Message m;
  m.type = MsgType::Segment;
  m.token = 0;
  check(encode_header(m), 32, "not a host token");
  m.token = kPluginTokenBit | 1;
  check(encode_header(m), 32, "not a host token");
  m.type = MsgType::Adopt;
  m.token = 5;
  check(encode_header(m), 32, "not a plugin token");
}

TEST(FdChannel, SendAndReceiveAnFd) {
  Pair p;
  FdChannel host(std::move(p.host)), plugin(std::move(p.plugin));
  Segment s = Segment::create("test.chan", 128);
  host.send(segment_msg(5, 42, 128), s.fd());
  auto r = plugin.recv();
  ASSERT_EQ(r.status, FdChannel::Status::Ok) << r.error;
  EXPECT_EQ(r.msg.token, 5u);
  EXPECT_EQ(r.msg.segment_id, 42u);
  ASSERT_TRUE(r.fd);
  EXPECT_NE(r.fd.get(), s.fd()) << "the receiver gets its own descriptor";
  EXPECT_TRUE(::fcntl(r.fd.get(), F_GETFD) & FD_CLOEXEC) << "MSG_CMSG_CLOEXEC";
  Segment got = Segment::open(std::move(r.fd));
  EXPECT_EQ(got.size(), 128u);

  Message close;
  close.type = MsgType::Close;
  plugin.send(close, -1);
  auto c = host.recv();
  EXPECT_EQ(c.status, FdChannel::Status::Ok);
  EXPECT_EQ(c.msg.type, MsgType::Close);
  // A sender refuses to break the rules itself.
  EXPECT_THROW(host.send(close, s.fd()), pipehost::Error);
  EXPECT_THROW(host.send(segment_msg(6, 1, 1), -1), pipehost::Error);
  EXPECT_THROW(host.send(segment_msg(0, 1, 1), s.fd()), pipehost::Error);
}

TEST(FdChannel, RejectedMessagesLeakNoFds) {
  Pair p;
  FdChannel plugin(std::move(p.plugin));
  Segment s = Segment::create("test.leak", 64);
  const int before = open_fds();
  auto expect_protocol = [&](const char* want) {
    auto r = plugin.recv();
    EXPECT_EQ(r.status, FdChannel::Status::Protocol) << want;
    EXPECT_NE(r.error.find(want), std::string::npos) << r.error;
    EXPECT_EQ(open_fds(), before) << "fds of a rejected message are closed: " << want;
  };
  auto hdr = encode_header(segment_msg(1, 1, 64));
  send_raw(p.host.get(), hdr.data(), 32, {s.fd(), s.fd()});
  expect_protocol("carries 2 fds");
  std::vector<int> many(20, s.fd());
  send_raw(p.host.get(), hdr.data(), 32, many);
  expect_protocol("control data truncated");
  uint8_t longer[40] = {};
  std::memcpy(longer, hdr.data(), 32);
  send_raw(p.host.get(), longer, sizeof longer, {s.fd()});
  expect_protocol("longer than 32 bytes");
  send_raw(p.host.get(), hdr.data(), 16, {s.fd()});
  expect_protocol("16 bytes");
  send_raw(p.host.get(), hdr.data(), 32, {});
  expect_protocol("carries 0 fds");
  Message close;
  close.type = MsgType::Close;
  auto ch = encode_header(close);
  send_raw(p.host.get(), ch.data(), 32, {s.fd()});
  expect_protocol("carries 1 fds");
  // EOF once the host's end is closed.
  p.host.reset();
  EXPECT_EQ(plugin.recv().status, FdChannel::Status::Eof);
}

TEST(Mailbox, FilesFdsByTokenAndReportsTheEnd) {
  Pair p;
  FdChannel host(std::move(p.host)), plugin(std::move(p.plugin));
  std::mutex mu;
  std::condition_variable cv;
  Mailbox::End end = Mailbox::End::None;
  Mailbox mb(plugin, [&](Mailbox::End why, const std::string&) {
    std::lock_guard<std::mutex> lock(mu);
    end = why;
    cv.notify_all();
  });
  Segment a = Segment::create("a", 64), b = Segment::create("b", 128);
  host.send(segment_msg(2, 20, 128), b.fd());
  host.send(segment_msg(1, 10, 64), a.fd());
  auto [m1, fd1] = mb.take(1, std::chrono::milliseconds(2000));
  EXPECT_EQ(m1.segment_id, 10u);
  auto [m2, fd2] = mb.take(2, std::chrono::milliseconds(2000));
  EXPECT_EQ(m2.size, 128u);
  // A token that never comes times out.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(mb.take(3, std::chrono::milliseconds(100)), pipehost::Error);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(100));
  // A token sent after the wait began is delivered.
  std::thread later([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    host.send(segment_msg(4, 40, 64), a.fd());
  });
  auto [m4, fd4] = mb.take(4, std::chrono::milliseconds(5000));
  later.join();
  EXPECT_EQ(m4.segment_id, 40u);
  // The same token twice while the first still waits is a violation.
  host.send(segment_msg(9, 1, 64), a.fd());
  host.send(segment_msg(9, 1, 64), a.fd());
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(5), [&] { return end != Mailbox::End::None; }));
  EXPECT_EQ(end, Mailbox::End::Protocol);
}

TEST(Mailbox, CloseAndEof) {
  for (bool clean : {true, false}) {
    Pair p;
    FdChannel host(std::move(p.host)), plugin(std::move(p.plugin));
    std::promise<Mailbox::End> ended;
    Mailbox mb(plugin, [&](Mailbox::End why, const std::string&) { ended.set_value(why); });
    if (clean) {
      Message close;
      close.type = MsgType::Close;
      host.send(close, -1);
    } else {
      host.~FdChannel();  // the host's end closes: EOF
      new (&host) FdChannel(UniqueFd());
    }
    auto f = ended.get_future();
    ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
    EXPECT_EQ(f.get(), clean ? Mailbox::End::Closed : Mailbox::End::Eof);
    EXPECT_THROW(mb.take(1, std::chrono::milliseconds(10)), pipehost::Error);
  }
}

TEST(Tokens, PluginTokensHaveTheTopBit) {
  const uint64_t a = next_plugin_token(), b = next_plugin_token();
  EXPECT_TRUE(a & kPluginTokenBit);
  EXPECT_NE(a, b);
  EXPECT_NE(a & ~kPluginTokenBit, 0u);
}

// --- A Run's buffers ------------------------------------------------------------------

class RunBuffers : public ::testing::Test {
 protected:
  void SetUp() override {
    Pair p;
    host_ = std::make_unique<FdChannel>(std::move(p.host));
    plugin_ = std::make_unique<FdChannel>(std::move(p.plugin));
    mb_ = std::make_unique<Mailbox>(*plugin_, [](Mailbox::End, const std::string&) {});
  }
  void TearDown() override { mb_.reset(); }

  // bind_io sends a sealed 4x8 input and a writable 4x8 output.
  void bind_io(pb::RunRequest& req, Segment& in, Segment& out) {
    {
      Mapping w = Mapping::map_rw(in);
      auto* f = reinterpret_cast<float*>(w.data());
      for (int i = 0; i < 32; ++i) f[i] = static_cast<float>(i);
    }
    in.seal_write();
    auto* bi = req.add_inputs();
    bi->set_port("in");
    bi->set_fd_token(1);
    fill_grid(bi->mutable_handle(), 1, in.size(), 4, 8);
    auto* bo = req.add_outputs();
    bo->set_port("out");
    bo->set_fd_token(2);
    fill_grid(bo->mutable_handle(), 2, out.size(), 4, 8);
    host_->send(segment_msg(1, 1, in.size()), in.fd());
    host_->send(segment_msg(2, 2, out.size()), out.fd());
  }

  std::unique_ptr<FdChannel> host_, plugin_;
  std::unique_ptr<Mailbox> mb_;
};

TEST_F(RunBuffers, InputsReadOnlyOutputsWritableUntilFinish) {
  Segment in = Segment::create("in", 128), out = Segment::create("out", 128);
  pb::RunRequest req;
  bind_io(req, in, out);
  RunData data(plugin_.get(), mb_.get());
  data.bind(req);
  const auto* src = reinterpret_cast<const float*>(data.inputs.at("in").bytes());
  EXPECT_EQ(src[31], 31.0f);
  auto* dst = reinterpret_cast<float*>(data.outputs.at("out").bytes());
  for (int i = 0; i < 32; ++i) dst[i] = src[i] * 2;
  EXPECT_THROW(out.seal_write(), pipehost::Error) << "the plugin still maps its output";
  const auto dyn = data.finish();
  EXPECT_TRUE(dyn.empty());
  out.seal_write();  // the host's step succeeds once finish unmapped the output
  Mapping check = Mapping::map_ro(out);
  EXPECT_EQ(reinterpret_cast<const float*>(check.data())[31], 62.0f);
}

TEST_F(RunBuffers, ReleaseUnmapsEverything) {
  Segment in = Segment::create("in", 128), out = Segment::create("out", 128);
  pb::RunRequest req;
  bind_io(req, in, out);
  {
    RunData data(plugin_.get(), mb_.get());
    data.bind(req);
    data.outputs.at("out").bytes()[0] = 1;
    // No finish: a failed stage. The destructor releases the mapping.
  }
  out.seal_write();
}

TEST_F(RunBuffers, RejectsAnUnsealedInput) {
  Segment in = Segment::create("in", 128);
  pb::RunRequest req;
  auto* bi = req.add_inputs();
  bi->set_port("in");
  bi->set_fd_token(7);
  fill_grid(bi->mutable_handle(), 3, 128, 4, 8);
  host_->send(segment_msg(7, 3, 128), in.fd());
  RunData data(plugin_.get(), mb_.get());
  try {
    data.bind(req);
    FAIL() << "bound an input that is not write-sealed";
  } catch (const pipehost::Error& e) {
    EXPECT_NE(std::string(e.what()).find("input \"in\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not write-sealed"), std::string::npos) << e.what();
  }
}

TEST_F(RunBuffers, RejectsAnInvalidHandle) {
  Segment out = Segment::create("out", 128);
  pb::RunRequest req;
  auto* bo = req.add_outputs();
  bo->set_port("out");
  bo->set_fd_token(8);
  fill_grid(bo->mutable_handle(), 5, 128, 5, 8);  // 160 bytes in a 128-byte segment
  bo->mutable_handle()->set_segment_size(128);
  host_->send(segment_msg(8, 5, 128), out.fd());
  RunData data(plugin_.get(), mb_.get());
  try {
    data.bind(req);
    FAIL() << "accepted a handle past the segment";
  } catch (const pipehost::Error& e) {
    EXPECT_NE(std::string(e.what()).find("port \"out\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("segment 5"), std::string::npos) << e.what();
  }
}

TEST_F(RunBuffers, WaitsForTheFdWithATimeout) {
  pb::RunRequest req;
  auto* bo = req.add_outputs();
  bo->set_port("out");
  bo->set_fd_token(99);
  fill_grid(bo->mutable_handle(), 1, 128, 4, 8);
  RunData data(plugin_.get(), mb_.get());
  EXPECT_THROW(data.bind(req, std::chrono::milliseconds(50)), pipehost::Error);
}

TEST_F(RunBuffers, DynamicOutputsAreAdoptedBeforeTheResult) {
  RunData data(plugin_.get(), mb_.get());
  DynOutput blob;
  blob.port = "blob";
  blob.kind = pipehost::PortKind::Blob;
  blob.seg.emplace(Segment::create("blob", 100));
  blob.map = Mapping::map_rw(*blob.seg);
  std::memset(blob.map.data(), 0xab, 100);
  data.dynamic.push_back(std::move(blob));
  DynOutput table;
  table.port = "table";
  table.kind = pipehost::PortKind::Table;
  table.stream = std::make_unique<StreamSegment>("table");
  table.stream->write("ARROW1\0\0", 8);
  const std::string body(1000, 'x');
  table.stream->write(body.data(), body.size());
  EXPECT_EQ(table.stream->size(), 1008u);
  data.dynamic.push_back(std::move(table));

  const auto out = data.finish();
  ASSERT_EQ(out.size(), 2u);
  for (const auto& b : out) {
    EXPECT_TRUE(b.fd_token() & kPluginTokenBit);
    auto r = host_->recv();
    ASSERT_EQ(r.status, FdChannel::Status::Ok) << r.error;
    EXPECT_EQ(r.msg.type, MsgType::Adopt);
    EXPECT_EQ(r.msg.token, b.fd_token());
    Segment seg = Segment::open(std::move(r.fd));
    EXPECT_EQ(seg.size(), r.msg.size);
    EXPECT_EQ(seg.size(), b.handle().segment_size());
    // The plugin kept no writable mapping: the host can seal it.
    seg.seal_write();
    const auto check = pipehost::validate_handle(handle_desc(b.handle()), seg.size());
    EXPECT_TRUE(check.ok()) << check.message;
    if (b.port() == "blob") {
      EXPECT_EQ(b.handle().format(), pb::FORMAT_RAW);
      EXPECT_EQ(b.handle().dtype(), pb::DTYPE_U8);
      Mapping m = Mapping::map_ro(seg);
      EXPECT_EQ(m.data()[99], 0xab);
    } else {
      EXPECT_EQ(b.handle().format(), pb::FORMAT_ARROW_IPC);
      EXPECT_EQ(b.handle().kind(), pb::PORT_KIND_TABLE);
      EXPECT_EQ(seg.size(), 1008u);
    }
  }
}
