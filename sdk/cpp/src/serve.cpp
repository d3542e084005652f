// The plugin side of go-plugin's handshake and pipehost's Stage service.
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "chanrun.hpp"
#include "context_impl.hpp"
#include "data.hpp"
#include "run.hpp"
#include "goplugin/controller.grpc.pb.h"
#include "goplugin/stdio.grpc.pb.h"
#include "pipehost/log.hpp"
#include "pipehost/stage.hpp"
#include "pipehost/v1/stage.grpc.pb.h"
#include "shm.hpp"
#include "trace_marker.hpp"

namespace pipehost {

namespace pb = pipehost::v1;
using detail::now_ns;

namespace {

constexpr const char* kCookieKey = "PIPEHOST_PLUGIN_COOKIE";
constexpr const char* kCookieValue = "8f3c1e2a-pipehost-stage-plugin-v1";
constexpr int kCoreProtocolVersion = 1;  // go-plugin's own handshake version
constexpr int kAppProtocolVersion = 1;   // pipehost's stage protocol
constexpr uint32_t kProtocolRevision = 1;
constexpr int kMaxMessageSize = 64 << 20;

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "pipehost plugin: %s\n", msg.c_str());
  std::fflush(stderr);
  std::exit(1);
}

// --- Shutdown ---------------------------------------------------------------------------------

struct Lifecycle {
  std::mutex mu;
  std::condition_variable cv;
  bool shutdown = false;

  void request() {
    {
      std::lock_guard<std::mutex> lock(mu);
      shutdown = true;
    }
    cv.notify_all();
  }
  bool wait_for(std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, d, [this] { return shutdown; });
  }
};

Lifecycle g_life;
std::string g_socket_path;

// Exits without running destructors or atexit handlers: other threads may
// be inside a stage, and nobody is left to read their results.
[[noreturn]] void exit_now(int code) {
  if (!g_socket_path.empty()) ::unlink(g_socket_path.c_str());
  std::fflush(stderr);
  ::_exit(code);
}

// --- Describe ------------------------------------------------------------------------------

void fill_value(pb::Value* out, const ParamValue& v) {
  if (std::holds_alternative<bool>(v)) {
    out->set_bool_value(std::get<bool>(v));
  } else if (std::holds_alternative<int64_t>(v)) {
    out->set_int_value(std::get<int64_t>(v));
  } else if (std::holds_alternative<double>(v)) {
    out->set_float_value(std::get<double>(v));
  } else {
    out->set_string_value(std::get<std::string>(v));
  }
}

void fill_port(pb::Port* out, const Port& p) {
  out->set_name(p.name);
  out->set_kind(static_cast<pb::PortKind>(p.kind));
  out->set_dtype(static_cast<pb::DType>(p.dtype));
  out->set_level(p.level);
  out->set_optional(p.optional);
  out->set_doc(p.doc);
}

pb::StageDescriptor descriptor(const StageDef& d) {
  pb::StageDescriptor out;
  out.set_kind(d.kind);
  out.set_version(d.version);
  out.set_doc(d.doc);
  for (const Port& p : d.inputs) fill_port(out.add_inputs(), p);
  for (const Port& p : d.outputs) fill_port(out.add_outputs(), p);
  for (const ParamSpec& s : d.params) {
    auto* ps = out.add_params();
    ps->set_name(s.name);
    ps->set_type(static_cast<pb::ParamType>(s.type));
    ps->set_doc(s.doc);
    if (s.default_value) fill_value(ps->mutable_default_(), *s.default_value);
  }
  auto* caps = out.mutable_capabilities();
  caps->set_concurrent_runs(d.concurrent);
  caps->set_threads(d.threads);
  for (const auto& [name, count] : d.resources) {
    auto* r = caps->add_resources();
    r->set_name(name);
    r->set_count(count);
  }
  return out;
}

// --- The services --------------------------------------------------------------------------

class StageService final : public pb::Stage::Service {
 public:
  explicit StageService(const detail::Stages& stages) : stages_(stages) {
    for (const Stage& s : stages_.all()) descriptors_.push_back(descriptor(s.def()));
  }

  grpc::Status Describe(grpc::ServerContext*, const pb::DescribeRequest*, pb::DescribeResponse* resp) override {
    resp->set_sdk("cpp");
    resp->set_sdk_version(sdk_version());
    resp->set_protocol_revision(kProtocolRevision);
    // The host sends runs on the fd channel (ChannelRuns) unless told to
    // use this service's Run.
    resp->set_channel_runs(true);
    for (const auto& d : descriptors_) *resp->add_stages() = d;
    return grpc::Status::OK;
  }

  grpc::Status Run(grpc::ServerContext* sctx, const pb::RunRequest* req,
                   grpc::ServerWriter<pb::RunEvent>* writer) override {
    std::mutex send_mu;
    const auto send = [&](const pb::RunEvent& ev) {
      std::lock_guard<std::mutex> lock(send_mu);
      // A synchronous write: with a buffer hint it would wait for a flush
      // that never comes.
      writer->Write(ev);
    };
    const detail::RunStatus st = stages_.run(*req, send, [sctx] { return sctx->IsCancelled(); });
    if (st.ok()) return grpc::Status::OK;
    return grpc::Status(static_cast<grpc::StatusCode>(st.code), st.message);
  }

 private:
  const detail::Stages& stages_;
  std::vector<pb::StageDescriptor> descriptors_;
};

class ControllerService final : public plugin::GRPCController::Service {
 public:
  grpc::Status Shutdown(grpc::ServerContext*, const plugin::Empty*, plugin::Empty*) override {
    g_life.request();
    return grpc::Status::OK;
  }
};

// StdioService keeps go-plugin's stdio stream open and sends nothing: the
// plugin logs to stderr directly.
class StdioService final : public plugin::GRPCStdio::Service {
 public:
  grpc::Status StreamStdio(grpc::ServerContext* ctx, const google::protobuf::Empty*,
                           grpc::ServerWriter<plugin::StdioData>*) override {
    while (!ctx->IsCancelled()) {
      if (g_life.wait_for(std::chrono::milliseconds(200))) break;
    }
    return grpc::Status::OK;
  }
};

// --- Handshake -------------------------------------------------------------------------------

void check_started_by_host() {
  const char* cookie = ::getenv(kCookieKey);
  if (cookie != nullptr && std::strcmp(cookie, kCookieValue) == 0) return;
  std::fprintf(stderr,
               "This program is a pipehost stage plugin. It is not meant to be run by hand: the pipehost host "
               "starts it, talks to it over a private socket and hands it shared memory, and it offers the "
               "stages it implements to pipelines that name them. To use it, put it in a plugin directory (for "
               "example with `pipehost run pipeline.toml --plugin-dir DIR`) and list its stages with "
               "`pipehost plugins --plugin-dir DIR`.\n");
  std::exit(1);
}

void negotiate_version() {
  const char* v = ::getenv("PLUGIN_PROTOCOL_VERSIONS");
  if (v == nullptr || *v == '\0') return;  // the host takes our version
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (std::atoi(item.c_str()) == kAppProtocolVersion && item.find_first_not_of("0123456789 ") == std::string::npos) {
      return;
    }
  }
  die(std::string("this plugin speaks pipehost protocol version ") + std::to_string(kAppProtocolVersion) +
      ", but the host accepts only versions " + v + "; rebuild the plugin with a matching SDK");
}

void check_no_mtls() {
  const char* cert = ::getenv("PLUGIN_CLIENT_CERT");
  if (cert != nullptr && *cert != '\0') {
    die("the host asked for mutual TLS (PLUGIN_CLIENT_CERT is set), which the pipehost C++ SDK does not "
        "support; pipehost itself never asks for it (it uses a unix socket in a private directory instead)");
  }
}

std::string socket_path() {
  const char* dir = ::getenv("PLUGIN_UNIX_SOCKET_DIR");
  std::string d = (dir && *dir) ? dir : "";
  if (d.empty()) {
    const char* tmp = ::getenv("TMPDIR");
    d = (tmp && *tmp) ? tmp : "/tmp";
  }
  std::string tmpl = d + "/pluginXXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  const int fd = ::mkstemp(buf.data());
  if (fd < 0) die("creating the plugin socket in " + d + ": " + std::strerror(errno));
  ::close(fd);
  ::unlink(buf.data());  // the name is ours; the socket takes its place
  return std::string(buf.data());
}

void redirect_stdout() {
  std::fflush(stdout);
  // Anything printed to stdout from now on goes to stderr, where the host
  // keeps it, instead of being lost or corrupting anything.
  ::dup2(STDERR_FILENO, STDOUT_FILENO);
}

}  // namespace

void serve(std::vector<Stage> stages) {
  check_started_by_host();
  std::map<std::string, int> seen;
  if (stages.empty()) die("serve was called with no stages");
  for (const Stage& s : stages) {
    if (!s.def().run) die("stage kind \"" + s.def().kind + "\" has no run function");
    if (seen[s.def().kind]++) die("stage kind \"" + s.def().kind + "\" is registered twice");
  }
  negotiate_version();
  check_no_mtls();
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGINT, SIG_IGN);  // the host handles Ctrl-C and stops us itself

  std::unique_ptr<detail::FdChannel> channel;
  try {
    channel = detail::FdChannel::from_env();
  } catch (const Error& e) {
    die(e.what());
  }
  // The host is gone (EOF), said goodbye (CLOSE) or broke the protocol:
  // exit at once, and the runs in flight with the process.
  detail::Mailbox mailbox(*channel, [](detail::Mailbox::End why, const std::string& msg) {
    if (why == detail::Mailbox::End::Closed) exit_now(0);
    log_error("pipehost plugin: host is gone: " + msg);
    exit_now(3);
  });

  detail::Stages table(std::move(stages), channel.get(), &mailbox);
  detail::ChannelRuns runs(table, *channel);
  mailbox.route([&runs](const detail::Message& m, std::string&& payload) { return runs.route(m, std::move(payload)); });

  g_socket_path = socket_path();
  grpc::EnableDefaultHealthCheckService(true);
  StageService stage_svc(table);
  ControllerService controller_svc;
  StdioService stdio_svc;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + g_socket_path, grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(kMaxMessageSize);
  builder.SetMaxSendMessageSize(-1);
  // No BDP probing: it answers each message with a ping the host must wake
  // up to acknowledge, and a local socket has no bandwidth-delay to learn.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.RegisterService(&stage_svc);
  builder.RegisterService(&controller_svc);
  builder.RegisterService(&stdio_svc);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) die("could not listen on unix socket " + g_socket_path);
  ::chmod(g_socket_path.c_str(), 0600);
  if (auto* health = server->GetHealthCheckService()) health->SetServingStatus("plugin", true);

  // The handshake line is the first and only thing this process writes to
  // stdout: core version | app version | network | address | protocol.
  std::printf("%d|%d|unix|%s|grpc\n", kCoreProtocolVersion, kAppProtocolVersion, g_socket_path.c_str());
  redirect_stdout();

  while (!g_life.wait_for(std::chrono::hours(1))) {
  }
  // Shutdown: stop accepting calls and give running ones a moment (the
  // reply to Shutdown itself goes out then); a stage that ignores
  // cancellation is left behind when the process exits.
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> stopped = done->get_future();
  std::thread([&server, done] {
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
    done->set_value();
  }).detach();
  stopped.wait_for(std::chrono::milliseconds(600));
  exit_now(0);
}

}  // namespace pipehost
