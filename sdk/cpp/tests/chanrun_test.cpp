// Runs on the fd channel, on a real SOCK_SEQPACKET socket pair with real
// memfds, the test playing the host: payloads cut into frames and joined
// again, and runs driven through the Mailbox, Stages and ChannelRuns as a
// plugin process wires them (serve.cpp): results and END codes, a payload of
// several frames, CANCEL, dynamic outputs, and a protocol violation closing
// the fds that came with it.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "chanrun.hpp"
#include "pipehost/pipehost.hpp"
#include "run.hpp"
#include "fdtest.hpp"
#include "shm.hpp"

using namespace pipehost;
using namespace pipehost::detail;
using fdtest::open_count;
using fdtest::Pair;
using fdtest::send_raw;
namespace pb = pipehost::v1;

namespace {

constexpr int kOk = 0, kCancelled = 1, kInvalidArgument = 3, kNotFound = 5, kAborted = 10;

// frame is one datagram: a header and body.
std::string frame(MsgType t, uint64_t token, uint64_t total, uint64_t size, const std::string& body) {
  const auto h = encode_header(Message{t, token, total, size});
  return std::string(reinterpret_cast<const char*>(h.data()), h.size()) + body;
}

// ChannelHost is the host's side of a plugin's fd channel, with the
// plugin's Mailbox, Stages and ChannelRuns wired as serve() wires them.
class ChannelHost {
 public:
  explicit ChannelHost(std::vector<Stage> stages) {
    Pair p;
    raw_ = p.host.get();
    // A plugin that never answers fails the test instead of hanging it.
    const struct timeval limit = {20, 0};
    ::setsockopt(raw_, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    host_ = std::make_unique<FdChannel>(std::move(p.host));
    plugin_ = std::make_unique<FdChannel>(std::move(p.plugin));
    mailbox_ = std::make_unique<Mailbox>(*plugin_, [this](Mailbox::End why, const std::string& msg) {
      // serve() exits here; the test records it, and runs in flight are
      // cancelled as the exit would end them.
      runs_->cancel_all();
      std::lock_guard<std::mutex> lock(mu_);
      end_ = why;
      end_msg_ = msg;
      cv_.notify_all();
    });
    stages_ = std::make_unique<Stages>(std::move(stages), plugin_.get(), mailbox_.get());
    runs_ = std::make_unique<ChannelRuns>(*stages_, *plugin_);
    mailbox_->route([this](const Message& m, std::string&& payload) { return runs_->route(m, std::move(payload)); });
  }
  ~ChannelHost() {
    mailbox_.reset();  // the reader stops first: nothing routes to the runs any more
    runs_.reset();     // waits for every run's thread
  }

  // segment sends a memfd as the SEGMENT for a fresh token.
  uint64_t segment(const Segment& s, uint64_t id) {
    const uint64_t token = ++token_;
    host_->send(Message{MsgType::Segment, token, id, s.size()}, s.fd());
    return token;
  }
  uint64_t start(const pb::RunRequest& req) { return start(req.SerializeAsString()); }
  uint64_t start(const std::string& payload) {
    const uint64_t token = ++token_;
    host_->send_payload(MsgType::Run, token, payload);
    return token;
  }
  void cancel(uint64_t token) { host_->send(Message{MsgType::Cancel, token, 0, 0}, -1); }

  // read files the plugin's next message; ADOPTs go to adopted in order.
  void read() {
    auto r = host_->recv(true);
    ASSERT_EQ(r.status, FdChannel::Status::Ok) << r.error;
    order_.push_back(r.msg.type);
    if (r.msg.type == MsgType::Adopt) {
      adopted_[r.msg.token] = std::move(r.fd);
      return;
    }
    ASSERT_EQ(ended_.count(r.msg.token), 0u) << "nothing comes after a run's END";
    if (r.msg.type == MsgType::Event) {
      pb::RunEvent ev;
      ASSERT_TRUE(ev.ParseFromString(r.payload));
      events_[r.msg.token].push_back(ev);
    } else {
      ASSERT_EQ(r.msg.type, MsgType::End);
      pb::RunEnd end;
      ASSERT_TRUE(end.ParseFromString(r.payload));
      ended_[r.msg.token] = end;
    }
  }
  // until reads until the run has sent an event of this case.
  void until(uint64_t token, pb::RunEvent::EventCase c) {
    for (;;) {
      for (const auto& ev : events_[token]) {
        if (ev.event_case() == c) return;
      }
      read();
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  // end reads until the run's END and returns its events and END.
  std::pair<std::vector<pb::RunEvent>, pb::RunEnd> end(uint64_t token) {
    while (ended_.count(token) == 0 && !::testing::Test::HasFatalFailure()) read();
    return {events_[token], ended_[token]};
  }
  // wait_end waits for the Mailbox's end.
  Mailbox::End wait_end() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(10), [this] { return end_ != Mailbox::End::None; });
    return end_;
  }

  int raw_ = -1;  // the host's socket, for datagrams that break the rules
  std::unique_ptr<FdChannel> host_, plugin_;
  std::unique_ptr<Mailbox> mailbox_;
  std::unique_ptr<Stages> stages_;
  std::unique_ptr<ChannelRuns> runs_;
  uint64_t token_ = 0;
  std::vector<MsgType> order_;
  std::map<uint64_t, UniqueFd> adopted_;
  std::map<uint64_t, std::vector<pb::RunEvent>> events_;
  std::map<uint64_t, pb::RunEnd> ended_;
  std::mutex mu_;
  std::condition_variable cv_;
  Mailbox::End end_ = Mailbox::End::None;
  std::string end_msg_;
};

constexpr uint64_t kW = 8, kH = 4;

pb::RunRequest request(const std::string& kind) {
  pb::RunRequest req;
  req.set_run_id("r");
  req.set_stage("s");
  req.set_kind(kind);
  auto* l = req.add_levels();
  l->set_level(0);
  l->set_width(kW);
  l->set_height(kH);
  return req;
}

void bind_grid(pb::RunRequest& req, const std::string& port, uint64_t token, uint64_t id, uint64_t seg_size) {
  auto* b = req.add_outputs();
  b->set_port(port);
  b->set_fd_token(token);
  auto* h = b->mutable_handle();
  h->set_segment_id(id);
  h->set_segment_size(seg_size);
  h->set_nbytes(kW * kH * 4);
  h->set_dtype(pb::DTYPE_F32);
  h->add_shape(kH);
  h->add_shape(kW);
  h->add_strides(kW * 4);
  h->add_strides(4);
  h->set_kind(pb::PORT_KIND_GRID);
  h->set_format(pb::FORMAT_RAW);
}

}  // namespace

TEST(ChannelPayload, CutIntoFramesAndJoinedAgain) {
  for (const size_t n : {size_t{0}, size_t{1}, kMaxFrame, kMaxFrame + 1, size_t{200000}}) {
    Pair p;
    const int raw = p.host.get();
    FdChannel plugin(std::move(p.plugin));
    std::string payload(n, '\0');
    for (size_t i = 0; i < n; ++i) payload[i] = static_cast<char>(i * 31 + 7);
    // More than the socket buffers: the sender runs while the frames are read.
    std::thread sender([&] { plugin.send_payload(MsgType::Event, 7, payload); });
    std::string joined;
    size_t frames = 0;
    std::vector<char> buf(kHeaderSize + kMaxFrame + 1);
    do {
      const ssize_t got = ::recv(raw, buf.data(), buf.size(), 0);
      ASSERT_GE(got, static_cast<ssize_t>(kHeaderSize)) << n;
      Message m;
      std::string why;
      ASSERT_TRUE(decode_header(reinterpret_cast<const uint8_t*>(buf.data()), static_cast<size_t>(got), m, why, true))
          << why;
      EXPECT_EQ(m.type, MsgType::Event);
      EXPECT_EQ(m.token, 7u);
      EXPECT_EQ(m.segment_id, n) << "every frame repeats the whole length";
      EXPECT_EQ(m.size, std::min(kMaxFrame, n - joined.size())) << "frames are as full as they can be";
      joined.append(buf.data() + kHeaderSize, static_cast<size_t>(got) - kHeaderSize);
      ++frames;
    } while (joined.size() < n);
    sender.join();
    EXPECT_EQ(frames, std::max<size_t>(1, (n + kMaxFrame - 1) / kMaxFrame)) << n;
    EXPECT_EQ(joined, payload) << n;
    // And the receiver joins them.
    FdChannel host(std::move(p.host));
    std::thread again([&] { plugin.send_payload(MsgType::Event, 8, payload); });
    auto r = host.recv(true);
    again.join();
    ASSERT_EQ(r.status, FdChannel::Status::Ok) << r.error;
    EXPECT_EQ(r.msg.type, MsgType::Event);
    EXPECT_EQ(r.msg.token, 8u);
    EXPECT_EQ(r.payload, payload) << n;
  }
}

TEST(ChannelPayload, FramesOfOnePayloadAreNeverInterleaved) {
  Pair p;
  FdChannel host(std::move(p.host)), plugin(std::move(p.plugin));
  std::map<uint64_t, std::string> sent;
  for (uint64_t t = 1; t <= 4; ++t) sent[t] = std::string(150000, static_cast<char>('a' + t));
  std::vector<std::thread> senders;
  for (const auto& [t, payload] : sent) {
    senders.emplace_back([&, t = t] { plugin.send_payload(MsgType::Event, t, sent.at(t)); });
  }
  std::map<uint64_t, std::string> got;
  for (size_t i = 0; i < sent.size(); ++i) {
    auto r = host.recv(true);
    ASSERT_EQ(r.status, FdChannel::Status::Ok) << r.error;
    got[r.msg.token] = std::move(r.payload);
  }
  for (auto& t : senders) t.join();
  EXPECT_EQ(got, sent);
}

TEST(ChannelPayload, TheSenderKeepsTheRules) {
  Pair p;
  FdChannel plugin(std::move(p.plugin));
  const std::string big(kMaxPayload + 1, 'x');
  try {
    plugin.send_payload(MsgType::Event, 1, big);
    FAIL() << "sent a payload over the limit";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than the limit of 67108864"), std::string::npos) << e.what();
  }
  EXPECT_THROW(plugin.send_payload(MsgType::Cancel, 1, ""), Error);
  EXPECT_THROW(plugin.send_payload(MsgType::Event, 0, "x"), Error);
  EXPECT_THROW(plugin.send(Message{MsgType::Event, 1, 0, 0}, -1), Error);
  char c;
  EXPECT_EQ(::recv(p.host.get(), &c, 1, MSG_DONTWAIT), -1) << "nothing went out";
}

TEST(ChannelRuns, ARunWritesItsOutputAndEndsOk) {
  ChannelHost host({Stage{"t.fill", "1"}.output(grid_port("out", DType::F32)).run([](Context& ctx) {
    auto g = ctx.output_grid<float>("out");
    for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(i) * 3;
    ctx.info("filled");
  })});
  Segment out = Segment::create("chan.out", kW * kH * 4);
  pb::RunRequest req = request("t.fill");
  bind_grid(req, "out", host.segment(out, 11), 11, out.size());
  const uint64_t token = host.start(req);
  const auto [events, end] = host.end(token);
  EXPECT_EQ(end.code(), kOk) << end.message();
  EXPECT_EQ(end.message(), "");
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].log().message(), "filled");
  ASSERT_TRUE(events[1].has_result());
  EXPECT_GE(events[1].result().stats().end_ns(), events[1].result().stats().start_ns());
  EXPECT_GT(events[1].result().stats().start_ns(), 0);
  // The plugin let go of its writable view before the Result: the host's
  // write seal succeeds, and the bytes are the stage's.
  out.seal_write();
  Mapping m = Mapping::map_ro(out);
  const auto* f = reinterpret_cast<const float*>(m.data());
  for (size_t i = 0; i < kW * kH; ++i) ASSERT_EQ(f[i], static_cast<float>(i) * 3) << i;
  EXPECT_EQ(open_count("chan.out"), 1) << "the plugin closed its segment";
  EXPECT_EQ(host.runs_->in_flight(), 0u);
}

TEST(ChannelRuns, DynamicOutputsAreAdoptedBeforeTheResult) {
  ChannelHost host({Stage{"t.blob", "1"}.output(blob_port("out")).run([](Context& ctx) {
    auto b = ctx.new_blob("out", 100);
    std::memset(b.data(), 0x5a, b.size());
  })});
  const uint64_t token = host.start(request("t.blob"));
  const auto [events, end] = host.end(token);
  ASSERT_EQ(end.code(), kOk) << end.message();
  ASSERT_EQ(host.order_, (std::vector<MsgType>{MsgType::Adopt, MsgType::Event, MsgType::End}));
  ASSERT_EQ(events.size(), 1u);
  const auto& dyn = events[0].result().dynamic_outputs();
  ASSERT_EQ(dyn.size(), 1);
  ASSERT_EQ(host.adopted_.count(dyn[0].fd_token()), 1u) << "the Result names the ADOPT's token";
  Segment seg = Segment::open(std::move(host.adopted_[dyn[0].fd_token()]));
  EXPECT_EQ(seg.size(), 100u);
  seg.seal_write();  // no writable mapping is left in the plugin
  Mapping m = Mapping::map_ro(seg);
  EXPECT_EQ(m.data()[99], 0x5a);
}

TEST(ChannelRuns, PayloadsOfSeveralFramesArriveWhole) {
  ChannelHost host({Stage{"t.echo", "1"}.param(Param<std::string>{"text", ""}).run([](Context& ctx) {
    const std::string text = ctx.param<std::string>("text");
    ctx.metric("length", static_cast<double>(text.size()));
    ctx.warn(text + text);
  })});
  std::string text;
  for (int i = 0; text.size() < 100000; ++i) text += std::to_string(i) + ",";
  pb::RunRequest req = request("t.echo");
  (*req.mutable_params())["text"].set_string_value(text);
  ASSERT_GT(req.ByteSizeLong(), 3 * kMaxFrame) << "the RUN comes in several frames";
  const auto [events, end] = host.end(host.start(req));
  ASSERT_EQ(end.code(), kOk) << end.message();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].log().message(), text + text) << "an EVENT of several frames";
  EXPECT_EQ(events[0].log().level(), pb::LOG_LEVEL_WARN);
  EXPECT_EQ(events[1].result().metrics().at("length"), static_cast<double>(text.size()));
}

TEST(ChannelRuns, CancelReachesTheStageAndTheRunEndsCancelled) {
  std::atomic<bool> saw{false};
  ChannelHost host({Stage{"t.wait", "1"}.run([&](Context& ctx) {
    ctx.info("waiting");
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!ctx.cancelled() && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    saw = ctx.cancelled();
    ctx.throw_if_cancelled();
  })});
  const uint64_t token = host.start(request("t.wait"));
  host.cancel(token + 100);  // no such run: ignored
  host.until(token, pb::RunEvent::kLog);
  EXPECT_EQ(host.runs_->in_flight(), 1u);
  host.cancel(token);
  const auto [events, end] = host.end(token);
  EXPECT_TRUE(saw) << "the stage saw the cancellation";
  EXPECT_EQ(end.code(), kCancelled) << end.message();
  EXPECT_NE(end.message().find("cancelled"), std::string::npos) << end.message();
  host.cancel(token);  // after its END: ignored too
  const auto [ev2, end2] = host.end(host.start(request("t.nope")));
  EXPECT_EQ(end2.code(), kNotFound) << "the channel carries on";
  EXPECT_EQ(host.mailbox_->ended(), Mailbox::End::None);
}

TEST(ChannelRuns, AnUnknownKindEndsNotFoundAndItsFdsAreLetGo) {
  ChannelHost host({Stage{"t.noop", "1"}.run([](Context&) {})});
  Segment out = Segment::create("chan.notfound", kW * kH * 4);
  pb::RunRequest req = request("t.nope");
  bind_grid(req, "out", host.segment(out, 3), 3, out.size());
  const auto [events, end] = host.end(host.start(req));
  EXPECT_TRUE(events.empty());
  EXPECT_EQ(end.code(), kNotFound);
  EXPECT_EQ(end.message(), "this plugin has no stage kind \"t.nope\"");
  EXPECT_EQ(open_count("chan.notfound"), 1) << "the plugin closed the fd of the run it could not run";
}

TEST(ChannelRuns, ARunRequestThatDoesNotDecodeEndsInvalidArgument) {
  ChannelHost host({Stage{"t.noop", "1"}.run([](Context&) {})});
  const uint64_t token = host.start(std::string("\xff\xff\xff", 3));
  const auto [events, end] = host.end(token);
  EXPECT_TRUE(events.empty());
  EXPECT_EQ(end.code(), kInvalidArgument);
  EXPECT_NE(end.message().find("is not a RunRequest"), std::string::npos) << end.message();
}

TEST(ChannelRuns, AStageThatThrowsEndsAborted) {
  ChannelHost host({Stage{"t.bad", "1"}.run([](Context& ctx) {
    ctx.info("about to fail");
    throw Error("bad input");
  })});
  const auto [events, end] = host.end(host.start(request("t.bad")));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_TRUE(events[0].has_log());
  EXPECT_EQ(end.code(), kAborted);
  EXPECT_EQ(end.message(), "bad input");
}

TEST(ChannelRuns, TwoRunsAreInFlightAtOnce) {
  std::mutex mu;
  std::condition_variable cv;
  int started = 0;
  ChannelHost host({Stage{"t.pair", "1"}.param(Param<int64_t>{"n", 0}).concurrent().run([&](Context& ctx) {
    const int64_t n = ctx.param<int64_t>("n");
    ctx.info("run " + std::to_string(n) + " started");
    std::unique_lock<std::mutex> lock(mu);
    ++started;
    cv.notify_all();
    // Each waits for the other to have started.
    if (!cv.wait_for(lock, std::chrono::seconds(20), [&] { return started == 2; })) throw Error("ran alone");
    ctx.metric("n", static_cast<double>(n));
  })});
  std::vector<uint64_t> tokens;
  for (int64_t n : {1, 2}) {
    pb::RunRequest req = request("t.pair");
    (*req.mutable_params())["n"].set_int_value(n);
    tokens.push_back(host.start(req));
  }
  for (int64_t n : {1, 2}) {
    const auto [events, end] = host.end(tokens[n - 1]);
    ASSERT_EQ(end.code(), kOk) << end.message();
    EXPECT_EQ(events.front().log().message(), "run " + std::to_string(n) + " started");
    EXPECT_EQ(events.back().result().metrics().at("n"), static_cast<double>(n));
  }
}

TEST(ChannelRuns, AProtocolViolationEndsTheChannelAndClosesItsFds) {
  struct Case {
    const char* name;
    std::vector<std::pair<std::string, int>> grams;  // bytes, fd count
    const char* says;
  };
  const std::string hold = request("t.hold").SerializeAsString();
  const std::vector<Case> cases = {
      {"an fd on a RUN", {{frame(MsgType::Run, 1, 3, 3, "abc"), 1}}, "RUN message for token 0x1 carries 1 fds, want 0"},
      {"an fd on a CANCEL", {{frame(MsgType::Cancel, 1, 0, 0, ""), 2}}, "carries 2 fds, want 0"},
      {"a SEGMENT inside a RUN payload",
       {{frame(MsgType::Run, 1, 40000, kMaxFrame, std::string(kMaxFrame, 'a')), 0},
        {frame(MsgType::Segment, 9, 1, 64, ""), 1}},
       "is incomplete"},
      {"a frame over what is missing",
       {{frame(MsgType::Run, 1, 40000, kMaxFrame, std::string(kMaxFrame, 'a')), 0},
        {frame(MsgType::Run, 1, 40000, 8000, std::string(8000, 'b')), 1}},
       "carries 1 fds, want 0"},
      {"an EVENT to a plugin", {{frame(MsgType::Event, 1, 0, 0, ""), 0}}, "a plugin never receives EVENT messages"},
      {"a RUN token twice",
       {{frame(MsgType::Run, 5, hold.size(), hold.size(), hold), 0}, {frame(MsgType::Run, 5, 0, 0, ""), 0}},
       "RUN for token 0x5, which is already running"},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string name = "chan.violation." + std::to_string(i++);
    std::atomic<bool> release{false};
    ChannelHost host({Stage{"t.hold", "1"}.run([&](Context& ctx) {
      // Long enough for a second RUN with the same token to find it.
      while (!release && !ctx.cancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    })});
    Segment seg = Segment::create(name, 64);
    for (const auto& [data, nfds] : c.grams) send_raw(host.raw_, data, seg.fd(), nfds);
    EXPECT_EQ(host.wait_end(), Mailbox::End::Protocol) << c.name;
    EXPECT_NE(host.end_msg_.find("fd channel protocol violation: "), std::string::npos)
        << c.name << ": " << host.end_msg_;
    EXPECT_NE(host.end_msg_.find(c.says), std::string::npos) << c.name << ": " << host.end_msg_;
    EXPECT_EQ(open_count(name), 1) << c.name << ": every fd that came with the bad datagram is closed";
    release = true;
  }
}
