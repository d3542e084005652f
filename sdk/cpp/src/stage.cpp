#include <sstream>
#include <stdexcept>

#include "pipehost/stage.hpp"

namespace pipehost {

namespace detail {
std::string describe_value(const ParamValue& v) {
  std::ostringstream o;
  if (std::holds_alternative<bool>(v)) {
    o << "boolean " << (std::get<bool>(v) ? "true" : "false");
  } else if (std::holds_alternative<int64_t>(v)) {
    o << "integer " << std::get<int64_t>(v);
  } else if (std::holds_alternative<double>(v)) {
    o.precision(17);
    o << "float " << std::get<double>(v);
  } else {
    o << "string \"" << std::get<std::string>(v) << '"';
  }
  return o.str();
}
}  // namespace detail

Stage::Stage(std::string kind, std::string version) {
  if (kind.empty()) throw std::invalid_argument("pipehost::Stage: the kind is empty");
  if (version.empty()) {
    throw std::invalid_argument("pipehost::Stage(" + kind +
                                "): the version is empty; give one, e.g. Stage{\"" + kind +
                                "\", \"1.0.0\"}, and bump it whenever the output changes (it is part of the cache key)");
  }
  def_.kind = std::move(kind);
  def_.version = std::move(version);
}

Stage& Stage::doc(std::string text) {
  def_.doc = std::move(text);
  return *this;
}

void Stage::add_port(Port port, bool input) {
  const std::string where = "pipehost::Stage(" + def_.kind + "): ";
  if (port.name.empty()) throw std::invalid_argument(where + "a port has no name");
  for (const auto* list : {&def_.inputs, &def_.outputs}) {
    for (const Port& p : *list) {
      if (p.name == port.name) throw std::invalid_argument(where + "port name \"" + port.name + "\" is used twice");
    }
  }
  if (port.kind == PortKind::Unspecified) throw std::invalid_argument(where + "port \"" + port.name + "\" has no kind");
  if (port.kind == PortKind::Grid && dtype_size(port.dtype) == 0) {
    throw std::invalid_argument(where + "grid port \"" + port.name + "\" has no dtype");
  }
  if (!input && port.optional) {
    throw std::invalid_argument(where + "output \"" + port.name + "\" is optional; only inputs can be");
  }
  (input ? def_.inputs : def_.outputs).push_back(std::move(port));
}

Stage& Stage::input(Port port) {
  add_port(std::move(port), true);
  return *this;
}

Stage& Stage::output(Port port) {
  add_port(std::move(port), false);
  return *this;
}

Stage& Stage::add_param(ParamSpec spec) {
  const std::string where = "pipehost::Stage(" + def_.kind + "): ";
  if (spec.name.empty()) throw std::invalid_argument(where + "a param has no name");
  for (const ParamSpec& p : def_.params) {
    if (p.name == spec.name) throw std::invalid_argument(where + "param \"" + spec.name + "\" is declared twice");
  }
  if (spec.default_value && spec.check) {
    const std::string why = spec.check(*spec.default_value);
    if (!why.empty()) throw std::invalid_argument(where + "param \"" + spec.name + "\": default: " + why);
  }
  def_.params.push_back(std::move(spec));
  return *this;
}

Stage& Stage::concurrent(bool yes) {
  def_.concurrent = yes;
  return *this;
}

Stage& Stage::threads(unsigned n) {
  def_.threads = n;
  return *this;
}

Stage& Stage::resource(std::string name, unsigned count) {
  def_.resources.emplace_back(std::move(name), count);
  return *this;
}

Stage& Stage::run(std::function<void(Context&)> fn) {
  def_.run = std::move(fn);
  return *this;
}

const char* sdk_version() { return PIPEHOST_SDK_VERSION; }

}  // namespace pipehost
