#include <algorithm>

#include "context_impl.hpp"
#include "trace_marker.hpp"

namespace pipehost {

using detail::ContextImpl;
namespace pb = pipehost::v1;

namespace detail {

std::map<std::string, ParamValue> decode_params(const StageDef& def,
                                                const google::protobuf::Map<std::string, pb::Value>& in) {
  std::map<std::string, ParamValue> out;
  for (const ParamSpec& spec : def.params) {
    ParamValue v;
    auto it = in.find(spec.name);
    if (it == in.end()) {
      if (!spec.default_value) throw Error("param \"" + spec.name + "\" is required");
      v = *spec.default_value;
    } else {
      const pb::Value& pv = it->second;
      switch (pv.kind_case()) {
        case pb::Value::kBoolValue: v = pv.bool_value(); break;
        case pb::Value::kIntValue: v = static_cast<int64_t>(pv.int_value()); break;
        case pb::Value::kFloatValue: v = pv.float_value(); break;
        case pb::Value::kStringValue: v = pv.string_value(); break;
        default: throw Error("param \"" + spec.name + "\": has no value");
      }
    }
    if (spec.check) {
      const std::string why = spec.check(v);
      if (!why.empty()) throw Error("param \"" + spec.name + "\": " + why);
    }
    out[spec.name] = std::move(v);
  }
  return out;
}

void ContextImpl::send_span(uint64_t id, uint64_t parent, const std::string& name, int64_t start, int64_t end) {
  pb::RunEvent ev;
  auto* s = ev.mutable_span();
  s->set_id(id);
  s->set_parent_id(parent);
  s->set_name(name);
  s->set_start_ns(start);
  s->set_end_ns(end);
  send(ev);
}

}  // namespace detail

// --- TimedSpan -----------------------------------------------------------------------------

TimedSpan::TimedSpan(ContextImpl* c, uint64_t id, uint64_t parent, std::string name, bool nested)
    : c_(c), id_(id), parent_(parent), name_(std::move(name)), nested_(nested) {
  if (c_->markers) {
    // A nested span ends on its thread (B/E nest per thread); an explicit
    // one may end on another thread, so it is an async slice.
    if (nested_) {
      detail::trace::begin(name_);
    } else {
      detail::trace::async_begin(name_, c_->marker_base | id_);
    }
  }
  start_ns_ = detail::now_ns();
}

TimedSpan::TimedSpan(TimedSpan&& o) noexcept
    : c_(o.c_), id_(o.id_), parent_(o.parent_), name_(std::move(o.name_)), start_ns_(o.start_ns_), nested_(o.nested_) {
  o.c_ = nullptr;
}

TimedSpan& TimedSpan::operator=(TimedSpan&& o) noexcept {
  if (this != &o) {
    end();
    c_ = o.c_;
    id_ = o.id_;
    parent_ = o.parent_;
    name_ = std::move(o.name_);
    start_ns_ = o.start_ns_;
    nested_ = o.nested_;
    o.c_ = nullptr;
  }
  return *this;
}

TimedSpan::~TimedSpan() {
  try {
    end();
  } catch (...) {
  }
}

void TimedSpan::end() {
  if (c_ == nullptr) return;
  ContextImpl* c = c_;
  c_ = nullptr;
  const int64_t end_ns = detail::now_ns();
  if (c->markers) {
    if (nested_) {
      detail::trace::end();
    } else {
      detail::trace::async_end(name_, c->marker_base | id_);
    }
  }
  if (nested_) {
    std::lock_guard<std::mutex> lock(c->span_mu);
    auto it = std::find(c->stack.rbegin(), c->stack.rend(), id_);
    if (it != c->stack.rend()) c->stack.erase(std::next(it).base());
  }
  c->send_span(id_, parent_, name_, start_ns_, end_ns);
}

TimedSpan TimedSpan::child(std::string name) const {
  if (c_ == nullptr) throw Error("TimedSpan::child(\"" + name + "\"): the span has ended");
  return TimedSpan(c_, c_->span_next.fetch_add(1) + 1, id_, std::move(name), false);
}

// --- Context ---------------------------------------------------------------------------------

const std::string& Context::run_id() const { return impl_->run_id; }
const std::string& Context::stage() const { return impl_->stage; }
const std::string& Context::kind() const { return impl_->kind; }
uint64_t Context::seed() const { return impl_->req->seed(); }
unsigned Context::attempt() const { return impl_->req->attempt(); }
const std::vector<Level>& Context::levels() const { return impl_->levels; }

const Topology& Context::topology() const {
  std::call_once(impl_->topo_once, [this] {
    const pb::Topology& t = impl_->req->topology();
    if (impl_->levels.empty()) {
      impl_->topo_error = "the run request has no grid levels";
      return;
    }
    try {
      impl_->topo = Topology::from_wire(t.kind(), static_cast<Wrap>(t.wrap_x()), static_cast<Wrap>(t.wrap_y()),
                                        t.radius(), t.minor_radius(), impl_->levels[0].width,
                                        impl_->levels[0].height);
    } catch (const Error& e) {
      impl_->topo_error = e.what();
    }
  });
  if (!impl_->topo) throw Error(impl_->topo_error);
  return *impl_->topo;
}

Topology Context::topology(unsigned level) const {
  const Topology& native = topology();
  if (level >= impl_->levels.size()) {
    throw Error("grid level " + std::to_string(level) + " is not in this run's pyramid (" +
                std::to_string(impl_->levels.size()) + " levels)");
  }
  const Level& l = impl_->levels[level];
  return native.with_size(l.width, l.height);
}

const ParamValue& Context::param_value(const std::string& name, ParamType want) const {
  for (const ParamSpec& spec : impl_->def->params) {
    if (spec.name != name) continue;
    if (spec.type != want) {
      static const char* names[] = {"", "bool", "int", "float", "string"};
      throw Error("param \"" + name + "\" is declared as " + names[static_cast<int>(spec.type)] + ", read as " +
                  names[static_cast<int>(want)]);
    }
    return impl_->params.at(name);
  }
  throw Error("stage kind " + impl_->kind + " declares no param \"" + name + "\"");
}

bool Context::has_input(const std::string& name) const {
  std::lock_guard<std::mutex> lock(impl_->data->mu);
  return impl_->data->inputs.count(name) != 0;
}

detail::RawGrid Context::raw_grid(const std::string& name, DType dtype, bool input) {
  const char* what = input ? "input" : "output";
  detail::RunData& d = *impl_->data;
  std::lock_guard<std::mutex> lock(d.mu);
  auto& set = input ? d.inputs : d.outputs;
  auto it = set.find(name);
  if (it == set.end()) {
    throw Error("stage " + impl_->stage + " has no " + what + " \"" + name + "\" bound in this run");
  }
  detail::Buffer& b = it->second;
  const HandleDesc& h = b.handle;
  if (h.kind != static_cast<uint32_t>(PortKind::Grid) || h.shape.size() != 2 || !is_dense(h)) {
    throw Error(std::string(what) + " \"" + name + "\" is not a dense 2-D grid");
  }
  if (h.dtype != static_cast<uint32_t>(dtype)) {
    throw Error(std::string(what) + " \"" + name + "\" holds " + dtype_name(static_cast<DType>(h.dtype)) + ", not " +
                dtype_name(dtype));
  }
  void* p = b.bytes();
  return {p, static_cast<size_t>(h.shape[1]), static_cast<size_t>(h.shape[0]), h.level};
}

View<const uint8_t> Context::input_bytes(const std::string& name) {
  detail::RunData& d = *impl_->data;
  std::lock_guard<std::mutex> lock(d.mu);
  auto it = d.inputs.find(name);
  if (it == d.inputs.end()) {
    throw Error("stage " + impl_->stage + " has no input \"" + name + "\" bound in this run");
  }
  return View<const uint8_t>(it->second.bytes(), it->second.handle.nbytes);
}

const HandleDesc& Context::input_handle(const std::string& name) const {
  detail::RunData& d = *impl_->data;
  std::lock_guard<std::mutex> lock(d.mu);
  auto it = d.inputs.find(name);
  if (it == d.inputs.end()) {
    throw Error("stage " + impl_->stage + " has no input \"" + name + "\" bound in this run");
  }
  return it->second.handle;
}

namespace {
// dynamic_port checks that name is a table or blob output not yet produced.
const Port& dynamic_port(ContextImpl& c, const std::string& name) {
  const Port* port = nullptr;
  for (const Port& p : c.def->outputs) {
    if (p.name == name) port = &p;
  }
  if (port == nullptr) throw Error("stage kind " + c.kind + " has no output \"" + name + "\"");
  if (port->kind == PortKind::Grid) throw Error("output \"" + name + "\" is a grid: use output_grid");
  if (!c.data->has_channel()) throw Error("output \"" + name + "\": this plugin has no fd channel");
  for (const auto& d : c.data->dynamic) {
    if (d.port == name) throw Error("output \"" + name + "\" was already produced in this run");
  }
  return *port;
}
}  // namespace

View<uint8_t> Context::new_blob(const std::string& name, size_t size) {
  detail::RunData& d = *impl_->data;
  std::lock_guard<std::mutex> lock(d.mu);
  const Port& port = dynamic_port(*impl_, name);
  if (port.kind != PortKind::Blob) throw Error("output \"" + name + "\" is a table: use output_stream");
  detail::DynOutput out;
  out.port = name;
  out.kind = PortKind::Blob;
  out.seg.emplace(detail::Segment::create(impl_->stage + "." + name, size));
  out.map = detail::Mapping::map_rw(*out.seg);
  uint8_t* p = out.map.data();
  d.dynamic.push_back(std::move(out));
  return View<uint8_t>(p, size);
}

OutputStream& Context::output_stream(const std::string& name) {
  detail::RunData& d = *impl_->data;
  std::lock_guard<std::mutex> lock(d.mu);
  const Port& port = dynamic_port(*impl_, name);
  detail::DynOutput out;
  out.port = name;
  out.kind = port.kind;
  out.stream = std::make_unique<detail::StreamSegment>(impl_->stage + "." + name);
  OutputStream& s = *out.stream;
  d.dynamic.push_back(std::move(out));
  return s;
}

void Context::progress(double fraction, std::string_view message) {
  {
    std::lock_guard<std::mutex> lock(impl_->progress_mu);
    const auto now = std::chrono::steady_clock::now();
    if (fraction < 1 && impl_->progress_sent && now - impl_->last_progress < std::chrono::milliseconds(50)) return;
    impl_->last_progress = now;
    impl_->progress_sent = true;
  }
  pb::RunEvent ev;
  ev.mutable_progress()->set_fraction(fraction);
  ev.mutable_progress()->set_message(std::string(message));
  impl_->send(ev);
}

void Context::log(LogLevel level, std::string_view message) {
  pb::RunEvent ev;
  auto* l = ev.mutable_log();
  l->set_level(static_cast<pb::LogLevel>(level));
  l->set_message(std::string(message));
  l->set_time_ns(detail::now_ns());
  impl_->send(ev);
}

void Context::metric(const std::string& name, double value) {
  std::lock_guard<std::mutex> lock(impl_->metrics_mu);
  impl_->metrics[name] = value;
}

TimedSpan Context::timed(std::string name) {
  std::lock_guard<std::mutex> lock(impl_->span_mu);
  const uint64_t parent = impl_->stack.empty() ? 0 : impl_->stack.back();
  TimedSpan s(impl_, impl_->span_next.fetch_add(1) + 1, parent, std::move(name), true);
  impl_->stack.push_back(s.id());
  return s;
}

TimedSpan Context::span(std::string name) {
  return TimedSpan(impl_, impl_->span_next.fetch_add(1) + 1, 0, std::move(name), false);
}

bool Context::cancelled() const { return impl_->cancelled && impl_->cancelled(); }

}  // namespace pipehost
