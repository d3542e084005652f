#include "pipehost/testing.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>

#include "data.hpp"
#include "pipehost/seed.hpp"
#include "run.hpp"
#include "shm.hpp"

namespace pipehost {

namespace pb = pipehost::v1;

namespace detail {

struct TestOutputData {
  std::string port;
  HandleDesc handle;
  std::optional<Segment> seg;
  Mapping map;
  bool dynamic = false;
};

struct TestInput {
  pb::Handle handle;
  std::optional<Segment> seg;
};

struct TestRunData {
  StageDef def;
  std::string stage = "test";
  uint64_t run_seed = 0;
  std::string topo_kind = "plane";
  int64_t width = 64, height = 64;
  int nlevels = 1;
  TopologyOptions opts;
  std::optional<Topology> topo;
  std::vector<Level> levels;
  unsigned attempt = 0;
  std::function<bool()> cancel;
  std::map<std::string, ParamValue> params;
  std::map<std::string, TestInput> inputs;
  uint64_t next_segment = 1;

  std::string who() const { return "stage " + stage + " (" + def.kind + ")"; }

  const Port& port(const std::string& name, bool input) const {
    for (const Port& p : input ? def.inputs : def.outputs) {
      if (p.name == name) return p;
    }
    std::string have;
    for (const Port& p : input ? def.inputs : def.outputs) have += (have.empty() ? "" : ", ") + p.name;
    throw Error(who() + " has no " + (input ? "input" : "output") + " \"" + name + "\" (it has: " +
                (have.empty() ? "none" : have) + ")");
  }

  const Level& level_of(const Port& p) const {
    if (p.level >= levels.size()) {
      throw Error(who() + ": port \"" + p.name + "\" is on grid level " + std::to_string(p.level) + " but the run has " +
                  std::to_string(levels.size()) + " level(s): call grid(topology, width, height, levels) with more");
    }
    return levels[p.level];
  }

  void set_grid(const std::string& kind, int64_t w, int64_t h, int n, TopologyOptions o) {
    if (n < 1) throw Error("TestRun::grid: levels must be at least 1 (the native level)");
    Topology t = Topology::load(kind, w, h, o);
    std::vector<Level> ls = pipehost::levels(kind, w, h, n - 1);
    topo = std::move(t);
    levels = std::move(ls);
    topo_kind = kind;
    width = w;
    height = h;
    nlevels = n;
    opts = o;
  }

  // sealed_segment makes a memfd holding data, sealed as the host seals an
  // input: size at creation, then F_SEAL_WRITE|F_SEAL_SEAL.
  static Segment sealed_segment(const std::string& name, const void* data, size_t size) {
    Segment seg = Segment::create(name, size);
    if (size > 0) {
      Mapping m = Mapping::map_rw(seg);
      std::memcpy(m.data(), data, size);
      m.unmap();
    }
    seg.seal_write();
    return seg;
  }

  static void set_output(TestOutput& o, std::shared_ptr<const TestOutputData> d) { o.d_ = std::move(d); }
};

namespace {

const char* status_name(RunStatus::Code c) {
  switch (c) {
    case RunStatus::Ok: return "OK";
    case RunStatus::Cancelled: return "CANCELLED";
    case RunStatus::InvalidArgument: return "INVALID_ARGUMENT";
    case RunStatus::NotFound: return "NOT_FOUND";
    case RunStatus::FailedPrecondition: return "FAILED_PRECONDITION";
    case RunStatus::Aborted: return "ABORTED";
    case RunStatus::Internal: return "INTERNAL";
  }
  return "UNKNOWN";
}

pb::Handle grid_handle(uint64_t seg_id, uint64_t seg_size, DType dt, const Level& l) {
  const uint64_t es = dtype_size(dt);
  pb::Handle h;
  h.set_segment_id(seg_id);
  h.set_segment_size(seg_size);
  h.set_offset(0);
  h.set_nbytes(static_cast<uint64_t>(l.width) * static_cast<uint64_t>(l.height) * es);
  h.set_dtype(static_cast<pb::DType>(dt));
  h.add_shape(static_cast<uint64_t>(l.height));
  h.add_shape(static_cast<uint64_t>(l.width));
  h.add_strides(static_cast<uint64_t>(l.width) * es);
  h.add_strides(es);
  h.set_kind(pb::PORT_KIND_GRID);
  h.set_level(static_cast<uint32_t>(l.level));
  h.set_format(pb::FORMAT_RAW);
  return h;
}

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

}  // namespace
}  // namespace detail

using detail::TestOutputData;
using detail::TestRunData;

// --- TestOutput ---------------------------------------------------------------------------------

const std::string& TestOutput::port() const { return d_->port; }
const HandleDesc& TestOutput::handle() const { return d_->handle; }
int TestOutput::seals() const { return d_->seg->seals(); }
bool TestOutput::dynamic() const { return d_->dynamic; }

View<const uint8_t> TestOutput::bytes() const {
  if (!d_->map.mapped()) return View<const uint8_t>();
  return View<const uint8_t>(d_->map.data() + d_->handle.offset, d_->handle.nbytes);
}

void TestOutput::check_grid(uint32_t dtype) const {
  const HandleDesc& h = d_->handle;
  if (h.kind != static_cast<uint32_t>(PortKind::Grid) || h.shape.size() != 2 || !is_dense(h)) {
    throw Error("output \"" + d_->port + "\" is not a dense 2-D grid");
  }
  if (h.dtype != dtype) {
    throw Error("output \"" + d_->port + "\" holds " + dtype_name(static_cast<DType>(h.dtype)) + ", not " +
                dtype_name(static_cast<DType>(dtype)));
  }
}

// --- TestResult ----------------------------------------------------------------------------------

const TestOutput& TestResult::output(const std::string& port) const {
  auto it = outputs.find(port);
  if (it != outputs.end()) return it->second;
  std::string have;
  for (const auto& [name, o] : outputs) have += (have.empty() ? "" : ", ") + name;
  throw Error("the run has no output \"" + port + "\"" + (ok() ? "" : " (the stage failed: " + error + ")") +
              "; outputs: " + (have.empty() ? "none" : have));
}

const TestSpan* TestResult::span(const std::string& name) const {
  for (const TestSpan& s : spans) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

bool TestResult::logged(const std::string& text) const {
  for (const TestLog& l : logs) {
    if (l.message.find(text) != std::string::npos) return true;
  }
  return false;
}

// --- TestRun -------------------------------------------------------------------------------------

TestRun::TestRun(const Stage& stage) : TestRun(stage.def()) {}

TestRun::TestRun(StageDef def) : d_(std::make_unique<TestRunData>()) {
  if (!def.run) throw Error("TestRun: stage kind \"" + def.kind + "\" has no run function");
  d_->def = std::move(def);
  d_->set_grid("plane", 64, 64, 1, {});
}

TestRun::~TestRun() = default;
TestRun::TestRun(TestRun&&) noexcept = default;
TestRun& TestRun::operator=(TestRun&&) noexcept = default;

TestRun& TestRun::stage_name(std::string name) {
  if (name.empty()) throw Error("TestRun::stage_name: the name is empty");
  d_->stage = std::move(name);
  return *this;
}

TestRun& TestRun::seed(uint64_t run_seed) {
  d_->run_seed = run_seed;
  return *this;
}

TestRun& TestRun::grid(const std::string& topology, int64_t width, int64_t height, int levels, TopologyOptions opts) {
  d_->set_grid(topology, width, height, levels, opts);
  return *this;
}

TestRun& TestRun::attempt(unsigned n) {
  d_->attempt = n;
  return *this;
}

TestRun& TestRun::cancel_when(std::function<bool()> f) {
  d_->cancel = std::move(f);
  return *this;
}

Level TestRun::level(unsigned n) const {
  if (n >= d_->levels.size()) {
    throw Error("TestRun::level(" + std::to_string(n) + "): the grid has " + std::to_string(d_->levels.size()) +
                " level(s)");
  }
  return d_->levels[n];
}

TestRun& TestRun::set_param(const std::string& name, ParamValue v) {
  bool declared = false;
  for (const ParamSpec& s : d_->def.params) declared = declared || s.name == name;
  // The host refuses an undeclared param when it plans the run.
  if (!declared) throw Error(d_->who() + " declares no param \"" + name + "\"");
  d_->params[name] = std::move(v);
  return *this;
}

TestRun& TestRun::grid_input(const std::string& name, uint32_t dtype, const void* data, size_t size) {
  const Port& p = d_->port(name, true);
  if (p.kind != PortKind::Grid) throw Error("input \"" + name + "\" is not a grid: give it with input_bytes");
  if (static_cast<uint32_t>(p.dtype) != dtype) {
    throw Error("input \"" + name + "\" is declared " + dtype_name(p.dtype) + ", given " +
                dtype_name(static_cast<DType>(dtype)));
  }
  const Level& l = d_->level_of(p);
  const uint64_t want = static_cast<uint64_t>(l.width) * static_cast<uint64_t>(l.height) * dtype_size(p.dtype);
  if (size != want) {
    throw Error("input \"" + name + "\": " + std::to_string(size / dtype_size(p.dtype)) + " cells given, level " +
                std::to_string(l.level) + " of the grid is " + std::to_string(l.width) + "x" +
                std::to_string(l.height) + " = " + std::to_string(want / dtype_size(p.dtype)) + " cells");
  }
  detail::TestInput in;
  const uint64_t id = d_->next_segment++;
  in.seg.emplace(TestRunData::sealed_segment("test." + name, data, size));
  in.handle = detail::grid_handle(id, size, p.dtype, l);
  d_->inputs[name] = std::move(in);
  return *this;
}

TestRun& TestRun::input_bytes(const std::string& name, const void* data, size_t size) {
  const Port& p = d_->port(name, true);
  if (p.kind == PortKind::Grid) throw Error("input \"" + name + "\" is a grid: give it with input<T>");
  detail::TestInput in;
  const uint64_t id = d_->next_segment++;
  in.seg.emplace(TestRunData::sealed_segment("test." + name, data, size));
  pb::Handle& h = in.handle;
  h.set_segment_id(id);
  h.set_segment_size(size);
  h.set_nbytes(size);
  if (p.kind == PortKind::Table) {
    h.set_kind(pb::PORT_KIND_TABLE);
    h.set_format(pb::FORMAT_ARROW_IPC);
  } else {
    h.set_kind(pb::PORT_KIND_BLOB);
    h.set_format(pb::FORMAT_RAW);
    h.set_dtype(pb::DTYPE_U8);
    h.add_shape(size);
    h.add_strides(1);
  }
  d_->inputs[name] = std::move(in);
  return *this;
}

TestResult TestRun::run() {
  using namespace detail;
  TestRunData& d = *d_;
  TestResult result;

  // The request, as the host builds it.
  pb::RunRequest req;
  req.set_run_id("test");
  req.set_stage(d.stage);
  req.set_kind(d.def.kind);
  req.set_seed(seed::stage_seed(d.run_seed, d.stage));
  req.set_attempt(d.attempt);
  auto* t = req.mutable_topology();
  t->set_kind(d.topo->kind_name());
  t->set_wrap_x(static_cast<pb::Wrap>(d.topo->grid().wrap_x()));
  t->set_wrap_y(static_cast<pb::Wrap>(d.topo->grid().wrap_y()));
  t->set_radius(d.topo->radius());
  t->set_minor_radius(d.topo->minor_radius());
  for (const Level& l : d.levels) {
    auto* g = req.add_levels();
    g->set_level(static_cast<uint32_t>(l.level));
    g->set_width(static_cast<uint32_t>(l.width));
    g->set_height(static_cast<uint32_t>(l.height));
  }
  for (const auto& [name, v] : d.params) fill_value(&(*req.mutable_params())[name], v);
  result.seed = req.seed();
  result.levels = d.levels;

  // The fd channel: the harness holds the host's end, the SDK the plugin's.
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    throw Error(std::string("TestRun: socketpair: ") + std::strerror(errno));
  }
  FdChannel host{UniqueFd(sv[0])};
  FdChannel plugin{UniqueFd(sv[1])};
  Mailbox mailbox(plugin, [](Mailbox::End, const std::string&) {});

  uint64_t token = 0;
  const auto bind = [&](google::protobuf::RepeatedPtrField<pb::Binding>* list, const std::string& port,
                        const pb::Handle& h, const Segment& seg) {
    Message m;
    m.type = MsgType::Segment;
    m.token = ++token;
    m.segment_id = h.segment_id();
    m.size = seg.size();
    host.send(m, seg.fd());
    pb::Binding* b = list->Add();
    b->set_port(port);
    b->set_fd_token(m.token);
    *b->mutable_handle() = h;
  };
  for (const Port& p : d.def.inputs) {
    auto it = d.inputs.find(p.name);
    if (it == d.inputs.end()) {
      if (p.optional) continue;
      throw Error(d.who() + ": input \"" + p.name + "\" is required: give it with " +
                  (p.kind == PortKind::Grid ? "input<T>" : "input_bytes") + "(\"" + p.name + "\", ...)");
    }
    const pb::Handle& h = it->second.handle;
    if (p.kind == PortKind::Grid) {
      const Level& l = d.level_of(p);
      if (h.shape(0) != static_cast<uint64_t>(l.height) || h.shape(1) != static_cast<uint64_t>(l.width)) {
        throw Error("input \"" + p.name + "\" was given as " + std::to_string(h.shape(1)) + "x" +
                    std::to_string(h.shape(0)) + " but the grid is now " + std::to_string(l.width) + "x" +
                    std::to_string(l.height) + ": set the grid before the inputs");
      }
    }
    bind(req.mutable_inputs(), p.name, h, *it->second.seg);
  }
  // Grid outputs are pre-allocated by the host: size-sealed, writable.
  std::map<std::string, std::shared_ptr<TestOutputData>> pre;
  for (const Port& p : d.def.outputs) {
    if (p.kind != PortKind::Grid) continue;
    const Level& l = d.level_of(p);
    const uint64_t size = static_cast<uint64_t>(l.width) * static_cast<uint64_t>(l.height) * dtype_size(p.dtype);
    auto o = std::make_shared<TestOutputData>();
    o->port = p.name;
    o->seg.emplace(Segment::create(d.stage + "." + p.name, size));
    const pb::Handle h = grid_handle(d.next_segment++, size, p.dtype, l);
    o->handle = handle_desc(h);
    bind(req.mutable_outputs(), p.name, h, *o->seg);
    pre[p.name] = std::move(o);
  }

  // Events, as the host's Run stream would deliver them.
  std::mutex mu;
  std::optional<pb::Result> final_result;
  const auto send = [&](const pb::RunEvent& ev) {
    std::lock_guard<std::mutex> lock(mu);
    switch (ev.event_case()) {
      case pb::RunEvent::kProgress:
        result.progress.push_back({ev.progress().fraction(), ev.progress().message()});
        break;
      case pb::RunEvent::kLog:
        result.logs.push_back({static_cast<LogLevel>(ev.log().level()), ev.log().message(), ev.log().time_ns()});
        break;
      case pb::RunEvent::kSpan: {
        const pb::Span& s = ev.span();
        result.spans.push_back({s.id(), s.parent_id(), s.name(), s.start_ns(), s.end_ns()});
        break;
      }
      case pb::RunEvent::kResult:
        final_result = ev.result();
        break;
      default:
        break;
    }
  };
  std::function<bool()> cancel = d.cancel;
  if (!cancel) cancel = [] { return false; };
  const RunStatus st = run_stage(d.def, req, &plugin, &mailbox, send, std::move(cancel));
  if (!st.ok()) {
    result.status = status_name(st.code);
    result.error = st.message;
    return result;
  }
  if (!final_result) {
    result.status = "INTERNAL";
    result.error = d.who() + ": the run ended without a Result";
    return result;
  }
  const pb::Result& res = *final_result;
  for (const auto& [k, v] : res.metrics()) result.metrics[k] = v;
  result.start_ns = res.stats().start_ns();
  result.end_ns = res.stats().end_ns();
  result.peak_rss_bytes = res.stats().peak_rss_bytes();

  // The host's step at the Result: every output write-sealed before anyone
  // reads it; a writable mapping anywhere makes that fail.
  const auto fail = [&](const std::string& msg) {
    result.status = "FAILED_PRECONDITION";
    result.error = msg;
    result.outputs.clear();
  };
  for (auto& [name, o] : pre) {
    try {
      o->seg->seal_write();
    } catch (const Error& e) {
      fail("stage \"" + d.stage + "\" kept a writable mapping of its output \"" + name +
           "\" after returning, so its bytes could still change: unmap every writable view of an output before "
           "the stage returns (" + e.what() + ")");
      return result;
    }
    o->map = Mapping::map_ro(*o->seg);
    TestOutput out;
    TestRunData::set_output(out, o);
    result.outputs[name] = std::move(out);
  }
  // Dynamic outputs: the ADOPT messages the SDK sent before the Result.
  std::map<uint64_t, std::pair<Message, UniqueFd>> adopted;
  for (int i = 0; i < res.dynamic_outputs_size(); ++i) {
    pollfd pfd{host.fd(), POLLIN, 0};
    if (::poll(&pfd, 1, 5000) != 1) {
      fail(d.who() + ": the Result names " + std::to_string(res.dynamic_outputs_size()) +
           " dynamic outputs but their ADOPT messages did not arrive");
      return result;
    }
    FdChannel::Received r = host.recv();
    if (r.status != FdChannel::Status::Ok || r.msg.type != MsgType::Adopt) {
      fail(d.who() + ": fd channel: expected an ADOPT message: " +
           (r.error.empty() ? std::string(msg_type_name(static_cast<uint16_t>(r.msg.type))) : r.error));
      return result;
    }
    adopted[r.msg.token] = {r.msg, std::move(r.fd)};
  }
  for (const pb::Binding& b : res.dynamic_outputs()) {
    const std::string what = "dynamic output \"" + b.port() + "\": ";
    try {
      const Port& p = d.port(b.port(), false);
      if (p.kind == PortKind::Grid) throw Error("is a grid, which the host pre-allocates");
      auto it = adopted.find(b.fd_token());
      if (it == adopted.end()) throw Error("no ADOPT message carries its token");
      auto o = std::make_shared<TestOutputData>();
      o->port = b.port();
      o->dynamic = true;
      o->seg.emplace(Segment::open(std::move(it->second.second)));
      o->handle = handle_desc(b.handle());
      const HandleCheck check = validate_handle(o->handle, o->seg->size());
      if (!check.ok()) throw Error(check.message);
      o->seg->seal_write();
      if (o->seg->size() > 0) o->map = Mapping::map_ro(*o->seg);
      TestOutput out;
      TestRunData::set_output(out, o);
      result.outputs[b.port()] = std::move(out);
    } catch (const Error& e) {
      fail(d.who() + ": " + what + e.what());
      return result;
    }
  }
  return result;
}

}  // namespace pipehost
