#include <set>

#include <pipehost/handle.hpp>

#include "testdata.hpp"

using pipehost::HandleDesc;
using testdata::u64;

TEST(Handles, MatchTheSharedVectors) {
  const auto v = testdata::load("handles.json");
  ASSERT_EQ(v["schema"], "pipehost.handles/1");
  std::set<std::string> reasons;
  for (const auto& [name, rule] : v["reasons"].items()) reasons.insert(name);
  std::set<std::string> seen;
  size_t accepted = 0, rejected = 0;
  for (const auto& c : v["cases"]) {
    const auto& hj = c["handle"];
    HandleDesc h;
    h.segment_id = u64(hj["segment_id"]);
    h.segment_size = u64(hj["segment_size"]);
    h.offset = u64(hj["offset"]);
    h.nbytes = u64(hj["nbytes"]);
    h.dtype = hj["dtype"];
    for (const auto& s : hj["shape"]) h.shape.push_back(u64(s));
    for (const auto& s : hj["strides"]) h.strides.push_back(u64(s));
    h.kind = hj["kind"];
    h.level = hj["level"];
    h.format = hj["format"];
    h.digest_size = hj["digest"].get<std::string>().size() / 2;
    const std::string name = c["name"];
    const auto check = pipehost::validate_handle(h, u64(c["real_size"]));
    if (c["accept"].get<bool>()) {
      ++accepted;
      EXPECT_TRUE(check.ok()) << name << ": " << check.message;
      EXPECT_TRUE(check.message.empty()) << name;
      EXPECT_EQ(pipehost::is_dense(h), c["dense"].get<bool>()) << name;
    } else {
      ++rejected;
      const std::string reason = c["reason"];
      EXPECT_FALSE(check.ok()) << name << ": accepted, want " << reason;
      EXPECT_EQ(pipehost::handle_fault_name(check.fault), reason) << name << ": " << check.message;
      EXPECT_TRUE(reasons.count(reason)) << name;
      EXPECT_NE(check.message.find("segment " + std::to_string(h.segment_id)), std::string::npos)
          << name << ": the message must name the segment: " << check.message;
      seen.insert(reason);
    }
  }
  EXPECT_GT(accepted, 10u);
  EXPECT_GT(rejected, 10u);
  EXPECT_EQ(seen, reasons) << "every reason class is exercised";
}

TEST(Handles, DTypeSizes) {
  EXPECT_EQ(pipehost::dtype_size(pipehost::DType::F32), 4u);
  EXPECT_EQ(pipehost::dtype_size(pipehost::DType::U64), 8u);
  EXPECT_EQ(pipehost::dtype_size(pipehost::DType::I16), 2u);
  EXPECT_EQ(pipehost::dtype_size(pipehost::DType::U8), 1u);
  EXPECT_EQ(pipehost::dtype_size(0u), 0u);
  EXPECT_EQ(pipehost::dtype_size(11u), 0u);
  static_assert(pipehost::dtype_of_v<float> == pipehost::DType::F32);
  static_assert(pipehost::dtype_of_v<const uint16_t> == pipehost::DType::U16);
}
