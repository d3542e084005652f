// Declaring stages: ports, typed params and the run function, and serve(),
// which runs the plugin.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "pipehost/types.hpp"

namespace pipehost {

class Context;

// Port declares one input or output of a stage.
struct Port {
  std::string name;
  PortKind kind = PortKind::Grid;
  DType dtype = DType::Unspecified;  // grids only
  unsigned level = 0;                // grids only: pyramid level
  bool optional = false;             // inputs only
  std::string doc;

  // make_optional marks an input that a pipeline may leave unwired.
  Port& make_optional() {
    optional = true;
    return *this;
  }
  Port& with_doc(std::string d) {
    doc = std::move(d);
    return *this;
  }
};

// grid_port declares a grid of dtype at a pyramid level (0 = native).
inline Port grid_port(std::string name, DType dtype, unsigned level = 0) {
  Port p;
  p.name = std::move(name);
  p.kind = PortKind::Grid;
  p.dtype = dtype;
  p.level = level;
  return p;
}
// table_port declares an Arrow IPC table (written with Context::output_stream).
inline Port table_port(std::string name) {
  Port p;
  p.name = std::move(name);
  p.kind = PortKind::Table;
  return p;
}
// blob_port declares opaque bytes (Context::new_blob or output_stream).
inline Port blob_port(std::string name) {
  Port p;
  p.name = std::move(name);
  p.kind = PortKind::Blob;
  return p;
}

enum class ParamType : uint32_t { Bool = 1, Int = 2, Float = 3, String = 4 };

// ParamValue is a decoded param: exactly one of bool, int64, double, string.
using ParamValue = std::variant<bool, int64_t, double, std::string>;

// The C++ types a Param<T> may have and the protocol type each maps to.
template <class T, class = void>
struct param_type_of;
template <>
struct param_type_of<bool> {
  static constexpr ParamType value = ParamType::Bool;
};
template <class T>
struct param_type_of<T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>>> {
  static constexpr ParamType value = ParamType::Int;
};
template <class T>
struct param_type_of<T, std::enable_if_t<std::is_floating_point_v<T>>> {
  static constexpr ParamType value = ParamType::Float;
};
template <>
struct param_type_of<std::string> {
  static constexpr ParamType value = ParamType::String;
};

// ParamSpec is the type-erased declaration of a param.
struct ParamSpec {
  std::string name;
  ParamType type = ParamType::Int;
  std::optional<ParamValue> default_value;  // none: the param is required
  std::string doc;
  // check returns "" when the value fits the C++ type, else why not.
  std::function<std::string(const ParamValue&)> check;
};

namespace detail {
std::string describe_value(const ParamValue& v);

template <class T>
std::string check_param(const ParamValue& v) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!std::holds_alternative<bool>(v)) return "expected a boolean, got " + describe_value(v);
  } else if constexpr (std::is_integral_v<T>) {
    if (!std::holds_alternative<int64_t>(v)) return "expected an integer, got " + describe_value(v);
    const int64_t i = std::get<int64_t>(v);
    if constexpr (std::is_signed_v<T>) {
      if (i < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
          i > static_cast<int64_t>(std::numeric_limits<T>::max())) {
        return std::to_string(i) + " does not fit in a " + std::to_string(sizeof(T) * 8) + "-bit integer";
      }
    } else {
      if (i < 0 || static_cast<uint64_t>(i) > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
        return std::to_string(i) + " does not fit in an unsigned " + std::to_string(sizeof(T) * 8) +
               "-bit integer";
      }
    }
  } else if constexpr (std::is_floating_point_v<T>) {
    if (std::holds_alternative<double>(v)) {
      const double d = std::get<double>(v);
      if constexpr (sizeof(T) < sizeof(double)) {
        if (d == d && (d > static_cast<double>(std::numeric_limits<T>::max()) ||
                       d < -static_cast<double>(std::numeric_limits<T>::max())) &&
            d != std::numeric_limits<double>::infinity() && d != -std::numeric_limits<double>::infinity()) {
          return describe_value(v) + " does not fit in a float";
        }
      }
    } else if (!std::holds_alternative<int64_t>(v)) {
      return "expected a number, got " + describe_value(v);
    }
  } else {
    if (!std::holds_alternative<std::string>(v)) return "expected a string, got " + describe_value(v);
  }
  return "";
}

template <class T>
T convert_param(const ParamValue& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return std::get<bool>(v);
  } else if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(std::get<int64_t>(v));
  } else if constexpr (std::is_floating_point_v<T>) {
    // An integer goes through double first, as the host sends a config
    // integer for a float param: a float rounds as in every SDK.
    if (std::holds_alternative<int64_t>(v)) return static_cast<T>(static_cast<double>(std::get<int64_t>(v)));
    return static_cast<T>(std::get<double>(v));
  } else {
    return std::get<std::string>(v);
  }
}

template <class T>
ParamValue to_param_value(const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return ParamValue(v);
  } else if constexpr (std::is_integral_v<T>) {
    return ParamValue(static_cast<int64_t>(v));
  } else if constexpr (std::is_floating_point_v<T>) {
    return ParamValue(static_cast<double>(v));
  } else {
    return ParamValue(std::string(v));
  }
}
}  // namespace detail

// Param<T> declares a typed param and reads it back type-safely:
//
//   const pipehost::Param<int> kOctaves{"octaves", 4, "noise octaves, 1..8"};
//   ... stage.param(kOctaves) ...
//   int octaves = ctx[kOctaves];
//
// T is bool, an integer type, float/double or std::string. Values that do
// not fit T (a 300 for a uint8_t) fail the stage before it runs.
template <class T>
class Param {
  static_assert(std::is_same_v<T, bool> || std::is_integral_v<T> || std::is_floating_point_v<T> ||
                    std::is_same_v<T, std::string>,
                "Param<T>: T must be bool, an integer, a floating-point type or std::string");

 public:
  Param(std::string name, T default_value, std::string doc = "")
      : name_(std::move(name)), default_(std::move(default_value)), doc_(std::move(doc)) {}

  // required declares a param without default: the pipeline must set it.
  static Param required(std::string name, std::string doc = "") {
    return Param(RequiredTag{}, std::move(name), std::move(doc));
  }

  const std::string& name() const { return name_; }

  ParamSpec spec() const {
    ParamSpec s;
    s.name = name_;
    s.type = param_type_of<T>::value;
    if (default_) s.default_value = detail::to_param_value(*default_);
    s.doc = doc_;
    s.check = &detail::check_param<T>;
    return s;
  }

 private:
  struct RequiredTag {};
  Param(RequiredTag, std::string name, std::string doc) : name_(std::move(name)), doc_(std::move(doc)) {}

  std::string name_;
  std::optional<T> default_;
  std::string doc_;
};

// StageDef is everything a stage declares; Stage builds one.
struct StageDef {
  std::string kind;
  std::string version = "0.0.0";
  std::string doc;
  std::vector<Port> inputs;
  std::vector<Port> outputs;
  std::vector<ParamSpec> params;
  bool concurrent = false;
  unsigned threads = 0;
  std::vector<std::pair<std::string, unsigned>> resources;
  std::function<void(Context&)> run;
};

// Stage declares one stage kind:
//
//   pipehost::Stage{"terrain.fbm", "1.0.0"}
//       .doc("fractal noise")
//       .output(pipehost::grid_port("height", pipehost::DType::F32))
//       .param(kOctaves)
//       .run([](pipehost::Context& ctx) { ... });
//
// Mistakes in a declaration (empty kind, a port name used twice, a grid port
// without dtype, a default that does not fit its type) throw
// std::invalid_argument at once.
class Stage {
 public:
  explicit Stage(std::string kind, std::string version = "0.0.0");

  Stage& doc(std::string text);
  Stage& input(Port port);
  Stage& output(Port port);
  template <class T>
  Stage& param(const Param<T>& p) {
    return add_param(p.spec());
  }
  // concurrent lets the host run several instances at once in this process.
  Stage& concurrent(bool yes = true);
  // threads is how many threads the stage keeps busy (a scheduling hint).
  Stage& threads(unsigned n);
  // resource names something the stage holds while it runs, e.g. ("gpu", 1).
  Stage& resource(std::string name, unsigned count = 1);
  Stage& run(std::function<void(Context&)> fn);

  const StageDef& def() const { return def_; }

 private:
  Stage& add_param(ParamSpec spec);
  void add_port(Port port, bool input);

  StageDef def_;
};

// serve runs the plugin: the go-plugin handshake, then Describe and Run
// calls from the host until it stops the plugin. It never returns. Started
// by hand (not by pipehost) it explains that on stderr and exits 1.
[[noreturn]] void serve(std::vector<Stage> stages);

// sdk_version is this SDK's version, reported in Describe.
const char* sdk_version();

}  // namespace pipehost
