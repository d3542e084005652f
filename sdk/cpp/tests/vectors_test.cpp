// The shared vectors of testdata/ that pin behaviour the Go SDK defines:
// param conversion (params.json), fd channel framing on a real socket pair
// with real fds (fdchannel.json, and fdchannel-runs.json for the payloads of
// runs on the channel) and the handle of an adopted dynamic output
// (adopted.json). handshake.json is checked against a real plugin process in
// plugin_test.cpp.
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "context_impl.hpp"
#include "data.hpp"
#include "pipehost/pipehost.hpp"
#include "shm.hpp"
#include "fdtest.hpp"
#include "testdata.hpp"

using namespace pipehost;
using fdtest::open_count;
using fdtest::send_raw;
using nlohmann::json;
namespace pb = pipehost::v1;

namespace {

// ---- params ----------------------------------------------------------------------------------

pb::Value wire_value(const json& j) {
  pb::Value v;
  if (j.contains("bool")) {
    v.set_bool_value(j["bool"].get<bool>());
  } else if (j.contains("int")) {
    v.set_int_value(std::stoll(j["int"].get<std::string>()));
  } else if (j.contains("float_bits")) {
    const uint64_t bits = testdata::u64(j["float_bits"]);
    double d;
    std::memcpy(&d, &bits, sizeof d);
    v.set_float_value(d);
  } else if (j.contains("string")) {
    v.set_string_value(j["string"].get<std::string>());
  }
  return v;  // {}: no kind set
}

std::string hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

// Outcome is what the SDK made of one case: the value read, or the error.
struct Outcome {
  bool ok = false;
  std::string error;
  json result;
};

template <class T>
json result_of(const T& x) {
  if constexpr (std::is_same_v<T, bool>) {
    return json{{"bool", x}};
  } else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) {
    return json{{"int", std::to_string(static_cast<long long>(x))}};
  } else if constexpr (std::is_integral_v<T>) {
    return json{{"int", std::to_string(static_cast<unsigned long long>(x))}};
  } else if constexpr (std::is_same_v<T, float>) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    return json{{"f32_bits", hex32(bits)}};
  } else if constexpr (std::is_same_v<T, double>) {
    uint64_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    char b[24];
    std::snprintf(b, sizeof b, "0x%016llx", static_cast<unsigned long long>(bits));
    return json{{"f64_bits", std::string(b)}};
  } else {
    return json{{"string", x}};
  }
}

// read_as runs the SDK's own path: decode_params checks the value against
// the declared Param<T> (as a Run does), convert_param reads it.
template <class T>
Outcome read_as(const pb::Value& v) {
  StageDef def;
  def.kind = "vectors.params";
  def.params.push_back(Param<T>::required("v").spec());
  google::protobuf::Map<std::string, pb::Value> in;
  in["v"] = v;
  Outcome o;
  try {
    const auto values = detail::decode_params(def, in);
    o.result = result_of(detail::convert_param<T>(values.at("v")));
    o.ok = true;
  } catch (const Error& e) {
    o.error = e.what();
  }
  return o;
}

const std::map<std::string, Outcome (*)(const pb::Value&)> kReaders = {
    {"bool", &read_as<bool>},     {"i8", &read_as<int8_t>},     {"i16", &read_as<int16_t>},
    {"i32", &read_as<int32_t>},   {"i64", &read_as<int64_t>},   {"u8", &read_as<uint8_t>},
    {"u16", &read_as<uint16_t>},  {"u32", &read_as<uint32_t>},  {"u64", &read_as<uint64_t>},
    {"f32", &read_as<float>},     {"f64", &read_as<double>},    {"string", &read_as<std::string>},
};

const std::map<std::string, std::string> kParamPhrases = {
    {"no_value", "has no value"}, {"type", "expected "}, {"range", "does not fit"}};

bool is_nan_result(const json& r) {
  if (r.contains("f32_bits")) {
    const uint32_t b = static_cast<uint32_t>(std::stoul(r["f32_bits"].get<std::string>().substr(2), nullptr, 16));
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0;
  }
  if (r.contains("f64_bits")) {
    const uint64_t b = testdata::u64(r["f64_bits"]);
    return (b & 0x7ff0000000000000ull) == 0x7ff0000000000000ull && (b & 0x000fffffffffffffull) != 0;
  }
  return false;
}

// ---- fd channel ------------------------------------------------------------------------------

const std::map<std::string, std::string> kFramePhrases = {
    {"too_many_fds", "control data truncated"}, {"long", "longer than 32 bytes"},
    {"short", "bytes, want 32"},                {"bad_magic", "bad magic"},
    {"bad_version", "header version"},          {"unknown_type", "unknown message type"},
    {"host_token", "is not a host token"},      {"plugin_token", "is not a plugin token"},
    {"fd_count", "fds, want"}};

// The reason classes of fdchannel-runs.json, in this SDK's words (any one
// of them).
const std::map<std::string, std::vector<std::string>> kRunFramePhrases = {
    {"long", {"longer than 32800 bytes"}},
    {"short", {"bytes, want 32"}},
    {"unknown_type", {"unknown message type"}},
    {"run_token", {"is not a run token"}},
    {"cancel_fields", {"want 0 and 0"}},
    {"payload_too_big", {"more than the limit of 67108864"}},
    {"frame_size", {"more than a frame's 32768", "payload are missing"}},
    {"empty_frame", {"is empty, but its"}},
    {"length", {"want 32 + its size"}},
    {"interleaved", {"is incomplete"}},
    {"truncated", {"the channel ended inside"}},
    {"fd_count", {"fds, want 0"}}};

bool says_one_of(const std::string& error, const std::vector<std::string>& phrases) {
  for (const auto& p : phrases) {
    if (error.find(p) != std::string::npos) return true;
  }
  return false;
}

std::string u64hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%016llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace

TEST(Vectors, ParamConversion) {
  const auto v = testdata::load("params.json");
  ASSERT_EQ(v["schema"], "pipehost.params/1");
  for (const auto& [name, rule] : v["reasons"].items()) ASSERT_TRUE(kParamPhrases.count(name)) << name;
  size_t accepted = 0, rejected = 0;
  for (const auto& c : v["cases"]) {
    const std::string name = c["name"];
    const auto reader = kReaders.find(c["type"].get<std::string>());
    ASSERT_NE(reader, kReaders.end()) << name;
    const Outcome o = reader->second(wire_value(c["value"]));
    if (c["accept"].get<bool>()) {
      ++accepted;
      ASSERT_TRUE(o.ok) << name << ": refused: " << o.error;
      if (is_nan_result(c["result"])) {
        EXPECT_TRUE(is_nan_result(o.result)) << name << ": got " << o.result.dump();
      } else {
        EXPECT_EQ(o.result, c["result"]) << name;
      }
    } else {
      ++rejected;
      const std::string reason = c["reason"];
      ASSERT_FALSE(o.ok) << name << ": accepted as " << o.result.dump() << ", want " << reason;
      EXPECT_NE(o.error.find("param \"v\": "), std::string::npos) << name << ": " << o.error;
      EXPECT_NE(o.error.find(kParamPhrases.at(reason)), std::string::npos)
          << name << ": want a " << reason << " refusal, got: " << o.error;
    }
  }
  EXPECT_GT(accepted, 100u);
  EXPECT_GT(rejected, 100u);
}

TEST(Vectors, FdChannelFraming) {
  const auto v = testdata::load("fdchannel.json");
  ASSERT_EQ(v["schema"], "pipehost.fdchannel/1");
  for (const auto& [name, rule] : v["reasons"].items()) ASSERT_TRUE(kFramePhrases.count(name)) << name;
  std::set<std::string> seen;
  int i = 0;
  for (const auto& c : v["cases"]) {
    const std::string name = c["name"];
    const std::string memfd_name = "vec-frame-" + std::to_string(i++);
    detail::UniqueFd mem(::memfd_create(memfd_name.c_str(), MFD_CLOEXEC));
    ASSERT_GE(mem.get(), 0);
    fdtest::Pair pair;
    detail::UniqueFd& host = pair.host;
    detail::FdChannel ch{std::move(pair.plugin)};
    send_raw(host.get(), testdata::unhex(c["data"].get<std::string>()), mem.get(), c["fds"].get<int>());
    auto r = ch.recv();
    const std::string outcome = c["outcome"];
    if (outcome == "eof") {
      EXPECT_EQ(r.status, detail::FdChannel::Status::Eof) << name << ": " << r.error;
    } else if (outcome == "message") {
      ASSERT_EQ(r.status, detail::FdChannel::Status::Ok) << name << ": " << r.error;
      const auto& m = c["message"];
      EXPECT_EQ(std::to_string(static_cast<int>(r.msg.type)), m["type"].get<std::string>()) << name;
      EXPECT_EQ(u64hex(r.msg.token), m["token"].get<std::string>()) << name;
      EXPECT_EQ(u64hex(r.msg.segment_id), m["segment_id"].get<std::string>()) << name;
      EXPECT_EQ(u64hex(r.msg.size), m["size"].get<std::string>()) << name;
      const bool carries = r.msg.type != detail::MsgType::Close;
      EXPECT_EQ(r.fd.get() >= 0, carries) << name;
      if (carries) EXPECT_EQ(open_count(memfd_name), 2) << name << ": ours and the one received";
    } else {
      const std::string reason = c["reason"];
      seen.insert(reason);
      ASSERT_EQ(r.status, detail::FdChannel::Status::Protocol) << name << ": want a " << reason << " reject";
      EXPECT_NE(r.error.find(kFramePhrases.at(reason)), std::string::npos)
          << name << ": want a " << reason << " reject, got: " << r.error;
      EXPECT_EQ(r.fd.get(), -1) << name;
    }
    r.fd.reset();
    EXPECT_EQ(open_count(memfd_name), 1) << name << ": every received fd is closed";
  }
  EXPECT_EQ(seen.size(), v["reasons"].size()) << "a reason class without a case";
}

TEST(Vectors, FdChannelRunsFraming) {
  const auto v = testdata::load("fdchannel-runs.json");
  ASSERT_EQ(v["schema"], "pipehost.fdchannel-runs/1");
  for (const auto& [name, rule] : v["reasons"].items()) ASSERT_TRUE(kRunFramePhrases.count(name)) << name;
  std::set<std::string> seen;
  int i = 0;
  for (const auto& c : v["cases"]) {
    const std::string name = c["name"];
    const std::string memfd_name = "vec-run-frame-" + std::to_string(i++);
    detail::UniqueFd mem(::memfd_create(memfd_name.c_str(), MFD_CLOEXEC));
    ASSERT_GE(mem.get(), 0);
    fdtest::Pair pair;
    detail::UniqueFd& host = pair.host;
    detail::FdChannel ch{std::move(pair.plugin)};
    // A sender of its own: the datagrams break the rules on purpose, and
    // the largest fill the socket's buffer, so they go while the receiver reads.
    std::vector<std::pair<std::string, int>> grams;
    for (const auto& d : c["datagrams"]) {
      grams.emplace_back(testdata::unhex(d["data"].get<std::string>()) + std::string(d.value("fill", 0), '\xa5'),
                         d.value("fds", 0));
    }
    std::thread sender([&] {
      for (const auto& [data, nfds] : grams) send_raw(host.get(), data, mem.get(), nfds);
      if (c.value("close", false)) host.reset();
    });
    auto r = ch.recv(true);
    sender.join();
    if (c["outcome"] == "message") {
      ASSERT_EQ(r.status, detail::FdChannel::Status::Ok) << name << ": " << r.error;
      const auto& m = c["message"];
      EXPECT_EQ(std::to_string(static_cast<int>(r.msg.type)), m["type"].get<std::string>()) << name;
      EXPECT_EQ(u64hex(r.msg.token), m["token"].get<std::string>()) << name;
      EXPECT_EQ(std::to_string(r.payload.size()), m["length"].get<std::string>()) << name;
      EXPECT_EQ(testdata::sha256_hex(r.payload), m["sha256"].get<std::string>()) << name;
      EXPECT_EQ(r.fd.get(), -1) << name;
    } else {
      const std::string reason = c["reason"];
      seen.insert(reason);
      ASSERT_EQ(r.status, detail::FdChannel::Status::Protocol) << name << ": want a " << reason << " reject";
      EXPECT_TRUE(says_one_of(r.error, kRunFramePhrases.at(reason)))
          << name << ": want a " << reason << " reject, got: " << r.error;
      EXPECT_EQ(r.fd.get(), -1) << name;
    }
    EXPECT_EQ(open_count(memfd_name), 1) << name << ": every received fd is closed";
  }
  EXPECT_EQ(seen.size(), v["reasons"].size()) << "a reason class without a case";
}

TEST(Vectors, AdoptedHandles) {
  const auto v = testdata::load("adopted.json");
  ASSERT_EQ(v["schema"], "pipehost.adopted/1");
  ASSERT_GE(v["cases"].size(), 5u);
  for (const auto& c : v["cases"]) {
    const std::string name = c["name"];
    const PortKind kind = c["kind"] == "table" ? PortKind::Table : PortKind::Blob;
    const uint64_t size = testdata::u64(c["size"]);
    const pb::Handle h = detail::adopted_handle(kind, size);
    const auto& w = c["handle"];
    EXPECT_EQ(u64hex(h.segment_id()), w["segment_id"].get<std::string>()) << name;
    EXPECT_EQ(u64hex(h.segment_size()), w["segment_size"].get<std::string>()) << name;
    EXPECT_EQ(u64hex(h.offset()), w["offset"].get<std::string>()) << name;
    EXPECT_EQ(u64hex(h.nbytes()), w["nbytes"].get<std::string>()) << name;
    EXPECT_EQ(static_cast<int>(h.dtype()), w["dtype"].get<int>()) << name;
    EXPECT_EQ(static_cast<int>(h.kind()), w["kind"].get<int>()) << name;
    EXPECT_EQ(h.level(), w["level"].get<uint32_t>()) << name;
    EXPECT_EQ(static_cast<int>(h.format()), w["format"].get<int>()) << name;
    ASSERT_EQ(static_cast<size_t>(h.shape_size()), w["shape"].size()) << name;
    for (int i = 0; i < h.shape_size(); ++i) EXPECT_EQ(u64hex(h.shape(i)), w["shape"][i].get<std::string>()) << name;
    ASSERT_EQ(static_cast<size_t>(h.strides_size()), w["strides"].size()) << name;
    for (int i = 0; i < h.strides_size(); ++i) {
      EXPECT_EQ(u64hex(h.strides(i)), w["strides"][i].get<std::string>()) << name;
    }
    EXPECT_EQ(testdata::unhex(w["digest"].get<std::string>()), h.digest()) << name;
    EXPECT_EQ(h.SerializeAsString(), testdata::unhex(c["wire"].get<std::string>())) << name << ": protobuf bytes";
    // What the host does with it next: validate against the segment's size.
    const auto check = validate_handle(detail::handle_desc(h), size);
    EXPECT_TRUE(check.ok()) << name << ": " << check.message;
  }
}
