// The SDK as a real process: the minimal plugin started the way go-plugin
// starts it (environment, fd 3, socket directory), talked to over gRPC on
// its unix socket, and stopped by Shutdown, CLOSE or EOF.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "goplugin/controller.grpc.pb.h"
#include "pipehost/v1/stage.grpc.pb.h"
#include "shm.hpp"
#include "testdata.hpp"

using namespace pipehost::detail;
namespace pb = pipehost::v1;

namespace {

constexpr const char* kCookie = "PIPEHOST_PLUGIN_COOKIE=8f3c1e2a-pipehost-stage-plugin-v1";

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Plugin is one started plugin process.
struct Plugin {
  pid_t pid = -1;
  UniqueFd out, err, host;  // stdout, stderr pipes; the host's end of the fd channel
  std::string dir;

  // start runs the minimal plugin with env; with_channel passes fd 3.
  void start(std::vector<std::string> env, bool with_channel = true) {
    char tmpl[] = "/tmp/pipehost-sdk-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir = tmpl;
    env.push_back("PLUGIN_UNIX_SOCKET_DIR=" + dir);
    if (with_channel) env.push_back("PIPEHOST_FD_CHANNEL=3");
    int o[2], e[2], s[2];
    ASSERT_EQ(::pipe2(o, O_CLOEXEC), 0);
    ASSERT_EQ(::pipe2(e, O_CLOEXEC), 0);
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, s), 0);
    std::vector<char*> envp;
    for (auto& v : env) envp.push_back(v.data());
    envp.push_back(nullptr);
    const char* path = PIPEHOST_MINIMAL_PLUGIN;
    pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::dup2(o[1], 1);
      ::dup2(e[1], 2);
      if (with_channel) ::dup2(s[1], 3);  // dup2 clears FD_CLOEXEC on 3
      char* argv[] = {const_cast<char*>(path), nullptr};
      ::execve(path, argv, envp.data());
      ::_exit(127);
    }
    ::close(o[1]);
    ::close(e[1]);
    ::close(s[1]);
    out.reset(o[0]);
    err.reset(e[0]);
    host.reset(s[0]);
  }

  // wait_exit waits up to timeout and returns the wait status, or -1.
  int wait_exit(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int st = 0;
      const pid_t r = ::waitpid(pid, &st, WNOHANG);
      if (r == pid) {
        pid = -1;
        return st;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return -1;
  }

  // first_line reads stdout up to the first newline.
  std::string first_line() {
    std::string line;
    char c;
    while (::read(out.get(), &c, 1) == 1) {
      if (c == '\n') return line;
      line.push_back(c);
    }
    return line;
  }

  ~Plugin() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (!dir.empty()) {
      const std::string cmd = "rm -rf '" + dir + "'";
      if (std::system(cmd.c_str()) != 0) {
      }
    }
  }
};

// Started is a plugin past its handshake, with a gRPC channel.
struct Started : Plugin {
  std::string socket;
  std::shared_ptr<grpc::Channel> channel;

  void up() {
    start({kCookie, "PLUGIN_PROTOCOL_VERSIONS=1"});
    const std::string line = first_line();
    // 1|1|unix|<dir>/plugin...|grpc
    const std::string prefix = "1|1|unix|" + dir + "/plugin";
    ASSERT_EQ(line.rfind(prefix, 0), 0u) << line;
    ASSERT_GE(line.size(), 5u);
    ASSERT_EQ(line.substr(line.size() - 5), "|grpc") << line;
    socket = line.substr(9, line.size() - 9 - 5);
    struct stat st;
    ASSERT_EQ(::stat(socket.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    channel = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
  }
};

pb::RunRequest request(const std::string& kind) {
  pb::RunRequest req;
  req.set_run_id("t");
  req.set_stage("s1");
  req.set_kind(kind);
  req.set_seed(7);
  req.mutable_topology()->set_kind("plane");
  auto* l = req.add_levels();
  l->set_width(8);
  l->set_height(4);
  return req;
}

grpc::Status run(pb::Stage::Stub& stub, const pb::RunRequest& req, std::vector<pb::RunEvent>& events) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto reader = stub.Run(&ctx, req);
  pb::RunEvent ev;
  while (reader->Read(&ev)) events.push_back(ev);
  return reader->Finish();
}

}  // namespace

TEST(PluginProcess, ByHandItExplainsAndExits1) {
  Plugin p;
  p.start({}, false);
  const std::string err = read_all(p.err.get());
  const std::string out = read_all(p.out.get());
  const int st = p.wait_exit(std::chrono::seconds(5));
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 1);
  EXPECT_EQ(out, "") << "nothing on stdout";
  EXPECT_NE(err.find("pipehost stage plugin"), std::string::npos) << err;
  EXPECT_NE(err.find("not meant to be run by hand"), std::string::npos) << err;
}

TEST(PluginProcess, RefusesWhatItCannotDo) {
  struct Case {
    std::vector<std::string> env;
    bool channel;
    const char* want;
  } cases[] = {
      {{kCookie, "PLUGIN_PROTOCOL_VERSIONS=2,3"}, true, "protocol version 1"},
      {{kCookie, "PLUGIN_CLIENT_CERT=-----BEGIN CERTIFICATE-----"}, true, "mutual TLS"},
      {{kCookie}, false, "PIPEHOST_FD_CHANNEL is not set"},
      {{kCookie, "PIPEHOST_FD_CHANNEL=0"}, false, "is not a socket"},
  };
  for (auto& c : cases) {
    Plugin p;
    p.start(c.env, c.channel);
    const std::string err = read_all(p.err.get());
    const std::string out = read_all(p.out.get());
    const int st = p.wait_exit(std::chrono::seconds(5));
    ASSERT_TRUE(WIFEXITED(st)) << c.want;
    EXPECT_EQ(WEXITSTATUS(st), 1) << c.want;
    EXPECT_EQ(out, "") << c.want << ": no handshake, no certificate";
    EXPECT_NE(err.find(c.want), std::string::npos) << err;
  }
}

TEST(PluginProcess, HandshakeServicesAndShutdown) {
  Started p;
  ASSERT_NO_FATAL_FAILURE(p.up());
  // grpc.health.v1.Health/Check for service "plugin": SERVING.
  {
    grpc::GenericStub stub(p.channel);
    const char req_bytes[] = "\x0a\x06plugin";  // field 1 (service) = "plugin"
    grpc::Slice slice(req_bytes, sizeof req_bytes - 1);
    grpc::ByteBuffer req(&slice, 1), resp;
    grpc::ClientContext ctx;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                   [&](grpc::Status s) { done.set_value(s); });
    const grpc::Status st = done.get_future().get();
    ASSERT_TRUE(st.ok()) << st.error_message();
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(resp.Dump(&slices).ok());
    std::string body;
    for (auto& s : slices) body.append(reinterpret_cast<const char*>(s.begin()), s.size());
    EXPECT_EQ(body, std::string("\x08\x01", 2)) << "status SERVING";
  }
  auto stub = pb::Stage::NewStub(p.channel);
  {
    grpc::ClientContext ctx;
    pb::DescribeRequest req;
    req.set_protocol_revision(1);
    pb::DescribeResponse resp;
    ASSERT_TRUE(stub->Describe(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.sdk(), "cpp");
    EXPECT_EQ(resp.protocol_revision(), 1u);
    ASSERT_EQ(resp.stages_size(), 8);
    EXPECT_EQ(resp.stages(1).kind(), "minimal-cpp.fill");
    EXPECT_EQ(resp.stages(1).outputs(0).dtype(), pb::DTYPE_F32);
    EXPECT_EQ(resp.stages(1).params(0).type(), pb::PARAM_TYPE_FLOAT);
    EXPECT_EQ(resp.stages(1).params(0).default_().float_value(), 1.0);
    EXPECT_TRUE(resp.stages(0).capabilities().concurrent_runs());
  }
  // A no-op run ends with exactly one Result carrying stats.
  {
    std::vector<pb::RunEvent> events;
    ASSERT_TRUE(run(*stub, request("minimal-cpp.noop"), events).ok());
    ASSERT_EQ(events.size(), 1u);
    ASSERT_TRUE(events[0].has_result());
    const auto& st = events[0].result().stats();
    EXPECT_LE(st.start_ns(), st.end_ns());
    EXPECT_GT(st.peak_rss_bytes(), 0u);
    EXPECT_FALSE(st.peak_shared());
  }
  // Unknown kinds and bad params are errors with a message.
  {
    std::vector<pb::RunEvent> events;
    grpc::Status st = run(*stub, request("minimal-cpp.nope"), events);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
    auto req = request("minimal-cpp.fill");
    (*req.mutable_params())["value"].set_string_value("x");
    st = run(*stub, req, events);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("param \"value\""), std::string::npos) << st.error_message();
  }
  // fill writes its pre-allocated output; the host can seal it afterwards.
  FdChannel host(std::move(p.host));
  {
    Segment out = Segment::create("s1.out", 8 * 4 * 4);
    auto req = request("minimal-cpp.fill");
    (*req.mutable_params())["value"].set_float_value(2.5);
    auto* b = req.add_outputs();
    b->set_port("out");
    b->set_fd_token(1);
    auto* h = b->mutable_handle();
    h->set_segment_id(3);
    h->set_segment_size(out.size());
    h->set_nbytes(out.size());
    h->set_dtype(pb::DTYPE_F32);
    h->add_shape(4);
    h->add_shape(8);
    h->add_strides(32);
    h->add_strides(4);
    h->set_kind(pb::PORT_KIND_GRID);
    h->set_format(pb::FORMAT_RAW);
    Message m;
    m.type = MsgType::Segment;
    m.token = 1;
    m.segment_id = 3;
    m.size = out.size();
    host.send(m, out.fd());
    std::vector<pb::RunEvent> events;
    const grpc::Status st = run(*stub, req, events);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_FALSE(events.empty());
    EXPECT_TRUE(events.back().has_result());
    out.seal_write();  // throws if the plugin kept a writable mapping
    Mapping r = Mapping::map_ro(out);
    for (int i = 0; i < 32; ++i) ASSERT_EQ(reinterpret_cast<const float*>(r.data())[i], 2.5f);
  }
  // stdout after the handshake goes to stderr; the blob comes back by ADOPT.
  {
    std::vector<pb::RunEvent> events;
    const grpc::Status st = run(*stub, request("minimal-cpp.stdout"), events);
    ASSERT_TRUE(st.ok()) << st.error_message();
    std::map<std::string, pb::Span> spans;
    const pb::Result* res = nullptr;
    bool logged = false;
    for (const auto& ev : events) {
      if (ev.has_span()) spans[ev.span().name()] = ev.span();
      if (ev.has_result()) res = &ev.result();
      if (ev.has_log()) logged = ev.log().message() == "logged through the host";
    }
    EXPECT_TRUE(logged);
    ASSERT_EQ(spans.size(), 2u);
    EXPECT_EQ(spans["inner"].parent_id(), spans["outer"].id());
    ASSERT_NE(res, nullptr);
    ASSERT_EQ(res->dynamic_outputs_size(), 1);
    const auto& b = res->dynamic_outputs(0);
    EXPECT_EQ(b.port(), "text");
    auto r = host.recv();
    ASSERT_EQ(r.status, FdChannel::Status::Ok) << r.error;
    EXPECT_EQ(r.msg.type, MsgType::Adopt);
    EXPECT_EQ(r.msg.token, b.fd_token());
    Segment seg = Segment::open(std::move(r.fd));
    seg.seal_write();
    Mapping m = Mapping::map_ro(seg);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(m.data()), m.size()), "minimal-cpp: a stray line on stdout");
  }
  // Cancellation reaches the stage: a 10 s sleep cancelled after 100 ms
  // ends, so the next run is not counted as overlapping it.
  {
    auto req = request("minimal-cpp.sleep");
    (*req.mutable_params())["ms"].set_int_value(10000);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    auto reader = stub->Run(&ctx, req);
    pb::RunEvent ev;
    while (reader->Read(&ev)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    bool overlapped = true;
    for (int i = 0; i < 100 && overlapped; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      std::vector<pb::RunEvent> events;
      ASSERT_TRUE(run(*stub, request("minimal-cpp.noop"), events).ok());
      overlapped = events.back().result().stats().peak_shared();
    }
    EXPECT_FALSE(overlapped) << "the cancelled stage is still running";
  }
  // Shutdown: the process exits promptly with status 0.
  {
    auto ctl = plugin::GRPCController::NewStub(p.channel);
    grpc::ClientContext ctx;
    plugin::Empty req, resp;
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(ctl->Shutdown(&ctx, req, &resp).ok());
    const int st = p.wait_exit(std::chrono::seconds(3));
    ASSERT_NE(st, -1) << "the plugin did not exit after Shutdown";
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  }
  const std::string out = read_all(p.out.get());
  const std::string err = read_all(p.err.get());
  EXPECT_EQ(out, "") << "stdout carried more than the handshake";
  EXPECT_NE(err.find("minimal-cpp: a stray line on stdout\n"), std::string::npos) << err;
  EXPECT_NE(err.find("(printf)"), std::string::npos) << err;
  struct stat st;
  EXPECT_NE(::stat(p.socket.c_str(), &st), 0) << "socket file left behind";
}

TEST(PluginProcess, ExitsAtOnceWhenTheHostGoes) {
  for (bool clean : {true, false}) {
    Started p;
    ASSERT_NO_FATAL_FAILURE(p.up());
    const auto t0 = std::chrono::steady_clock::now();
    if (clean) {
      FdChannel host(std::move(p.host));
      Message m;
      m.type = MsgType::Close;
      host.send(m, -1);
      const int st = p.wait_exit(std::chrono::seconds(3));
      ASSERT_NE(st, -1);
      EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "CLOSE: exit 0, got " << st;
    } else {
      p.host.reset();  // EOF: the host died
      const int st = p.wait_exit(std::chrono::seconds(3));
      ASSERT_NE(st, -1);
      EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 3) << "EOF: exit 3, got " << st;
      const std::string err = read_all(p.err.get());
      EXPECT_NE(err.find("\"@message\":\"pipehost plugin: host is gone"), std::string::npos) << err;
    }
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1000));
  }
}

TEST(PluginProcess, ProtocolViolationOnTheChannelEndsThePlugin) {
  Started p;
  ASSERT_NO_FATAL_FAILURE(p.up());
  uint8_t junk[32] = {'J', 'U', 'N', 'K'};
  ASSERT_EQ(::send(p.host.get(), junk, sizeof junk, MSG_NOSIGNAL), 32);
  const int st = p.wait_exit(std::chrono::seconds(3));
  ASSERT_NE(st, -1);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 3) << st;
  EXPECT_NE(read_all(p.err.get()).find("bad magic"), std::string::npos);
}

namespace {

// call makes one unary gRPC call by method path with raw protobuf bytes.
grpc::Status call(const std::shared_ptr<grpc::Channel>& ch, const std::string& path, const std::string& body,
                  std::string& reply, std::chrono::milliseconds timeout) {
  grpc::GenericStub stub(ch);
  grpc::Slice slice(body.data(), body.size());
  grpc::ByteBuffer req(&slice, 1), resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, path, grpc::StubOptions(), &req, &resp, [&](grpc::Status s) { done.set_value(s); });
  const grpc::Status st = done.get_future().get();
  reply.clear();
  std::vector<grpc::Slice> slices;
  if (st.ok() && resp.Dump(&slices).ok()) {
    for (auto& s : slices) reply.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return st;
}

}  // namespace

// testdata/handshake.json: everything the plugin matches comes from the
// vectors — cookie, versions, the handshake line, the health service name,
// the controller and stdio method paths.
TEST(PluginProcess, MatchesTheHandshakeVectors) {
  const auto v = testdata::load("handshake.json");
  ASSERT_EQ(v["schema"], "pipehost.handshake/1");
  // Plugin::start passes the socket directory and fd channel the host's way.
  EXPECT_EQ(v["env"]["unix_socket_dir"], "PLUGIN_UNIX_SOCKET_DIR");
  EXPECT_EQ(v["env"]["fd_channel"], kEnvFdChannel);
  EXPECT_EQ(v["fd_channel_fd"], 3);
  const std::string cookie =
      v["magic_cookie_key"].get<std::string>() + "=" + v["magic_cookie_value"].get<std::string>();
  const std::string app = std::to_string(v["app_protocol_version"].get<int>());
  const std::string versions = v["env"]["protocol_versions"].get<std::string>() + "=";
  {
    // Another application protocol version only: refused, nothing on stdout.
    Plugin p;
    p.start({cookie, versions + std::to_string(v["app_protocol_version"].get<int>() + 1)});
    const std::string out = read_all(p.out.get());
    const int st = p.wait_exit(std::chrono::seconds(5));
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_NE(WEXITSTATUS(st), 0);
    EXPECT_EQ(out, "");
  }
  {
    // The cookie's value must match exactly.
    Plugin p;
    p.start({cookie + "x", versions + app});
    const std::string out = read_all(p.out.get());
    const int st = p.wait_exit(std::chrono::seconds(5));
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_EQ(WEXITSTATUS(st), 1);
    EXPECT_EQ(out, "");
  }
  Plugin p;
  p.start({cookie, versions + "0," + app});
  const std::string line = p.first_line() + "\n";
  // core|app|network|address|protocol
  std::vector<std::string> f;
  size_t at = 0;
  for (size_t bar; (bar = line.find('|', at)) != std::string::npos; at = bar + 1) {
    f.push_back(line.substr(at, bar - at));
  }
  f.push_back(line.substr(at));
  ASSERT_EQ(f.size(), 5u) << line;
  const std::string address = f[3];
  std::string want = v["handshake_line"].get<std::string>();
  const std::vector<std::pair<std::string, std::string>> fill = {
      {"{core}", std::to_string(v["core_protocol_version"].get<int>())}, {"{app}", app}, {"{address}", address}};
  for (const auto& [key, val] : fill) {
    ASSERT_NE(want.find(key), std::string::npos) << key;
    want.replace(want.find(key), key.size(), val);
  }
  EXPECT_EQ(line, want);
  EXPECT_EQ(f[2], v["network"].get<std::string>());
  EXPECT_EQ(address.rfind(p.dir + "/", 0), 0u) << address;
  EXPECT_LE(address.size() - p.dir.size() - 1, v["socket_name_max_bytes"].get<size_t>()) << address;
  auto ch = grpc::CreateChannel("unix:" + address, grpc::InsecureChannelCredentials());
  std::string reply;
  // Health: HealthCheckRequest{service} → HealthCheckResponse{status SERVING (1)}.
  const std::string service = v["health_service_name"].get<std::string>();
  ASSERT_EQ(v["health_status"], "SERVING");
  const std::string check = std::string("\x0a", 1) + static_cast<char>(service.size()) + service;
  grpc::Status st = call(ch, v["health_check_path"].get<std::string>(), check, reply, std::chrono::seconds(10));
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(reply, std::string("\x08\x01", 2));
  // Describe names the revision.
  {
    auto stub = pb::Stage::NewStub(ch);
    grpc::ClientContext ctx;
    pb::DescribeResponse resp;
    ASSERT_EQ(std::string(pb::Stage::service_full_name()), v["stage_service"].get<std::string>());
    ASSERT_TRUE(stub->Describe(&ctx, pb::DescribeRequest(), &resp).ok());
    EXPECT_EQ(resp.protocol_revision(), v["protocol_revision"].get<uint32_t>());
  }
  // StreamStdio exists: it stays open (an unknown method would be UNIMPLEMENTED).
  st = call(ch, v["stdio_stream_path"].get<std::string>(), "", reply, std::chrono::milliseconds(300));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  // Shutdown: Empty → Empty, and the process exits.
  st = call(ch, v["controller_shutdown_path"].get<std::string>(), "", reply, std::chrono::seconds(10));
  ASSERT_TRUE(st.ok()) << st.error_message();
  const int status = p.wait_exit(std::chrono::seconds(5));
  ASSERT_NE(status, -1) << "still running after Shutdown";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}
