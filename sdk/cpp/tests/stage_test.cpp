// Declaring stages, decoding params, and a Context's reporting, without a
// host: the events a Context sends are captured.
#include <thread>

#include <gtest/gtest.h>

#include "context_impl.hpp"
#include "pipehost/pipehost.hpp"

using namespace pipehost;
namespace pb = pipehost::v1;

TEST(Stage, DeclarationMistakesThrowAtOnce) {
  EXPECT_THROW(Stage("", "1"), std::invalid_argument);
  // The version is part of the cache key: required, and said so.
  try {
    Stage("k", "");
    FAIL() << "a stage without a version was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("the version is empty"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Stage("k", "1").output(grid_port("out", DType::F32)).input(grid_port("out", DType::F32)),
               std::invalid_argument);
  EXPECT_THROW(Stage("k", "1").output(grid_port("out", DType::Unspecified)), std::invalid_argument);
  EXPECT_THROW(Stage("k", "1").output(grid_port("", DType::F32)), std::invalid_argument);
  EXPECT_THROW(Stage("k", "1").output(grid_port("out", DType::F32).make_optional()), std::invalid_argument);
  EXPECT_THROW(Stage("k", "1").param(Param<uint8_t>{"p", 0}).param(Param<int>{"p", 1}), std::invalid_argument);
  // A default the C++ type cannot hold is caught by check at declaration.
  ParamSpec bad = Param<int>{"x", 1}.spec();
  bad.default_value = int64_t{1} << 40;
  EXPECT_NE(bad.check(*bad.default_value), "");
}

TEST(Stage, ParamSpecs) {
  const auto s = Stage("k", "2.1.0")
                     .param(Param<bool>{"flag", true})
                     .param(Param<int>{"n", 3, "count"})
                     .param(Param<double>{"gain", 0.5})
                     .param(Param<std::string>{"name", "x"})
                     .param(Param<int64_t>::required("must"))
                     .def();
  ASSERT_EQ(s.params.size(), 5u);
  EXPECT_EQ(s.version, "2.1.0");
  EXPECT_EQ(s.params[0].type, ParamType::Bool);
  EXPECT_EQ(s.params[1].type, ParamType::Int);
  EXPECT_EQ(s.params[1].doc, "count");
  EXPECT_EQ(s.params[2].type, ParamType::Float);
  EXPECT_EQ(s.params[3].type, ParamType::String);
  EXPECT_EQ(std::get<std::string>(*s.params[3].default_value), "x");
  EXPECT_FALSE(s.params[4].default_value.has_value());
}

namespace {

struct Harness {
  StageDef def;
  pb::RunRequest req;
  detail::RunData data{nullptr, nullptr};
  detail::ContextImpl impl;
  std::mutex mu;
  std::vector<pb::RunEvent> events;
  bool cancel = false;

  explicit Harness(StageDef d) : def(std::move(d)) {
    req.set_run_id("r1");
    req.set_stage("inst");
    req.set_kind(def.kind);
    req.set_seed(1234567);
    auto* t = req.mutable_topology();
    t->set_kind("torus");
    t->set_wrap_x(pb::WRAP_REPEAT);
    t->set_wrap_y(pb::WRAP_REPEAT);
    auto* l = req.add_levels();
    l->set_width(16);
    l->set_height(8);
    auto* l1 = req.add_levels();
    l1->set_level(1);
    l1->set_width(8);
    l1->set_height(4);
  }
  Context make() {
    impl.req = &req;
    impl.def = &def;
    impl.data = &data;
    impl.run_id = req.run_id();
    impl.stage = req.stage();
    impl.kind = req.kind();
    impl.levels = {Level{0, 16, 8}, Level{1, 8, 4}};
    impl.params = detail::decode_params(def, req.params());
    impl.send = [this](const pb::RunEvent& ev) {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(ev);
    };
    impl.cancelled = [this] { return cancel; };
    return Context(&impl);
  }
};

StageDef params_stage() {
  return Stage("t.params", "1")
      .param(Param<bool>{"flag", false})
      .param(Param<uint8_t>{"small", 7})
      .param(Param<float>{"gain", 0.5})
      .param(Param<std::string>{"label", "a"})
      .run([](Context&) {})
      .def();
}

}  // namespace

TEST(Params, DefaultsAndTypedAccess) {
  Harness h(params_stage());
  (*h.req.mutable_params())["small"].set_int_value(200);
  (*h.req.mutable_params())["gain"].set_int_value(2);  // an int is a fine float
  Context ctx = h.make();
  const Param<uint8_t> small{"small", 7};
  EXPECT_EQ(ctx[small], 200);
  EXPECT_EQ(ctx.param<bool>("flag"), false);
  EXPECT_EQ(ctx.param<float>("gain"), 2.0f);
  EXPECT_EQ(ctx.param<std::string>("label"), "a");
  EXPECT_THROW(ctx.param<int>("flag"), Error) << "declared bool, read as int";
  EXPECT_THROW(ctx.param<int>("nope"), Error);
}

TEST(Params, DecodeRejectsWrongTypesAndRanges) {
  {
    Harness h(params_stage());
    (*h.req.mutable_params())["small"].set_int_value(300);
    try {
      h.make();
      FAIL();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("param \"small\": 300 does not fit"), std::string::npos) << e.what();
    }
  }
  {
    Harness h(params_stage());
    (*h.req.mutable_params())["flag"].set_string_value("yes");
    try {
      h.make();
      FAIL();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("expected a boolean, got string \"yes\""), std::string::npos) << e.what();
    }
  }
  {
    Harness h(Stage("t.req", "1").param(Param<int>::required("n")).def());
    EXPECT_THROW(h.make(), Error);
  }
}

TEST(ContextReporting, SpansNestAndEnd) {
  Harness h(params_stage());
  Context ctx = h.make();
  uint64_t outer_id, inner_id;
  {
    auto outer = ctx.timed("outer");
    outer_id = outer.id();
    {
      auto inner = ctx.timed("inner");
      inner_id = inner.id();
    }
    auto sibling = ctx.timed("sibling");
    sibling.end();
    sibling.end();  // once only
    auto worker = outer.child("worker");
  }
  auto top = ctx.timed("top");
  top.end();
  std::map<std::string, pb::Span> spans;
  for (const auto& ev : h.events) {
    ASSERT_TRUE(ev.has_span());
    spans[ev.span().name()] = ev.span();
  }
  ASSERT_EQ(h.events.size(), 5u);
  EXPECT_EQ(spans["outer"].parent_id(), 0u);
  EXPECT_EQ(spans["inner"].parent_id(), outer_id);
  EXPECT_EQ(spans["sibling"].parent_id(), outer_id);
  EXPECT_EQ(spans["worker"].parent_id(), outer_id);
  EXPECT_EQ(spans["top"].parent_id(), 0u) << "outer ended, so top is top-level";
  EXPECT_EQ(spans["inner"].id(), inner_id);
  EXPECT_LE(spans["outer"].start_ns(), spans["inner"].start_ns());
  EXPECT_LE(spans["inner"].end_ns(), spans["outer"].end_ns());
  EXPECT_GT(spans["outer"].start_ns(), 0);
}

TEST(ContextReporting, ProgressIsRateLimited) {
  Harness h(params_stage());
  Context ctx = h.make();
  for (int i = 0; i < 1000; ++i) ctx.progress(i / 1000.0, "x");
  ctx.progress(1.0, "done");
  size_t n = 0;
  for (const auto& ev : h.events) n += ev.has_progress();
  EXPECT_GE(n, 2u);
  EXPECT_LE(n, 10u) << "1000 calls in a few ms must not all reach the host";
  EXPECT_EQ(h.events.back().progress().fraction(), 1.0);
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  ctx.progress(0.5);
  EXPECT_EQ(h.events.back().progress().fraction(), 0.5);
}

TEST(ContextReporting, LogsMetricsCancellation) {
  Harness h(params_stage());
  Context ctx = h.make();
  ctx.warn("careful");
  ASSERT_EQ(h.events.size(), 1u);
  EXPECT_EQ(h.events[0].log().level(), pb::LOG_LEVEL_WARN);
  EXPECT_EQ(h.events[0].log().message(), "careful");
  EXPECT_GT(h.events[0].log().time_ns(), 0);
  ctx.metric("cells", 1);
  ctx.metric("cells", 2);
  EXPECT_EQ(h.impl.metrics.at("cells"), 2);
  EXPECT_FALSE(ctx.cancelled());
  EXPECT_NO_THROW(ctx.throw_if_cancelled());
  h.cancel = true;
  EXPECT_THROW(ctx.throw_if_cancelled(), Cancelled);
}

TEST(ContextReporting, IdentityTopologyAndMissingPorts) {
  Harness h(params_stage());
  Context ctx = h.make();
  EXPECT_EQ(ctx.stage(), "inst");
  EXPECT_EQ(ctx.run_id(), "r1");
  EXPECT_EQ(ctx.seed(), 1234567u);
  EXPECT_EQ(ctx.rng().uint64(), seed::Stream(1234567).uint64());
  EXPECT_EQ(ctx.topology().kind(), Topology::Kind::Torus);
  EXPECT_EQ(ctx.topology().width(), 16);
  EXPECT_EQ(ctx.topology(1).width(), 8);
  EXPECT_EQ(ctx.topology(1).radius(), ctx.topology().radius());
  EXPECT_THROW(ctx.topology(2), Error);
  EXPECT_FALSE(ctx.has_input("in"));
  try {
    ctx.input_grid<float>("in");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no input \"in\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(ctx.new_blob("nope", 10), Error);
}

TEST(GridView, AccessAndBounds) {
  float data[6] = {0, 1, 2, 3, 4, 5};
  GridView<float> g(data, 3, 2);
  EXPECT_EQ(g.at(2, 1), 5);
  EXPECT_EQ(g(1, 1), 4);
  EXPECT_EQ(g.row(1)[0], 3);
  EXPECT_EQ(g.size(), 6u);
  EXPECT_THROW(g.at(3, 0), std::out_of_range);
  GridView<const float> c = g;  // writable converts to read-only
  EXPECT_EQ(c.at(0, 1), 3);
  float sum = 0;
  for (float v : c) sum += v;
  EXPECT_EQ(sum, 15);
  static_assert(!std::is_assignable_v<decltype(c.at(0, 0)), float>, "read-only view");
}
