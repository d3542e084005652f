#include <cmath>
#include <limits>

#include <pipehost/topology.hpp>

#include "testdata.hpp"

using pipehost::Topology;
using testdata::near;
using json = nlohmann::json;

namespace {

Topology from_json(const json& t) {
  return Topology::from_wire(t["kind"].get<std::string>(), pipehost::parse_wrap(t["wrap_x"].get<std::string>()),
                             pipehost::parse_wrap(t["wrap_y"].get<std::string>()), t["radius"].get<double>(),
                             t["minor_radius"].get<double>(), t["width"].get<int64_t>(), t["height"].get<int64_t>());
}

double max_abs(const json& v) {
  double m = 0;
  for (const auto& x : v) m = std::max(m, std::fabs(x.get<double>()));
  return m;
}

std::string name(const json& t) {
  return t["kind"].get<std::string>() + " " + std::to_string(t["width"].get<int64_t>()) + "x" +
         std::to_string(t["height"].get<int64_t>()) + " " + t["wrap_x"].get<std::string>() + "/" +
         t["wrap_y"].get<std::string>();
}

}  // namespace

TEST(Topology, Neighbours) {
  const json v = testdata::load("topology/neighbours.json");
  ASSERT_EQ(v["schema"], "pipehost.topology.neighbours/1");
  for (size_t k = 0; k < 4; ++k) {
    EXPECT_EQ(v["offsets4"][k][0].get<int>(), pipehost::Grid::kOffsets4[k][0]);
    EXPECT_EQ(v["offsets4"][k][1].get<int>(), pipehost::Grid::kOffsets4[k][1]);
  }
  for (size_t k = 0; k < 8; ++k) {
    EXPECT_EQ(v["offsets8"][k][0].get<int>(), pipehost::Grid::kOffsets8[k][0]);
    EXPECT_EQ(v["offsets8"][k][1].get<int>(), pipehost::Grid::kOffsets8[k][1]);
  }
  size_t cells = 0;
  for (const auto& c : v["cases"]) {
    const Topology t = from_json(c["topology"]);
    const auto& g = t.grid();
    for (const auto& cell : c["cells"]) {
      const int64_t i = cell["index"];
      EXPECT_EQ(g.xy(i).x, cell["x"].get<int64_t>());
      EXPECT_EQ(g.xy(i).y, cell["y"].get<int64_t>());
      EXPECT_EQ(g.index(cell["x"], cell["y"]), i);
      const auto n4 = g.neighbors4(i);
      const auto n8 = g.neighbors8(i);
      for (size_t k = 0; k < 4; ++k) {
        EXPECT_EQ(n4[k], cell["n4"][k].get<int64_t>()) << name(c["topology"]) << " cell " << i << " n4[" << k << "]";
        // step agrees with the neighbour lists.
        EXPECT_EQ(g.step(i, pipehost::Grid::kOffsets4[k][0], pipehost::Grid::kOffsets4[k][1]), n4[k]);
      }
      for (size_t k = 0; k < 8; ++k) {
        EXPECT_EQ(n8[k], cell["n8"][k].get<int64_t>()) << name(c["topology"]) << " cell " << i << " n8[" << k << "]";
      }
      ++cells;
    }
  }
  EXPECT_GT(cells, 100u);
}

TEST(Topology, Transforms) {
  const json v = testdata::load("topology/transforms.json");
  const double tol = v["tolerance"];
  for (const auto& c : v["cases"]) {
    const Topology t = from_json(c["topology"]);
    const bool sphere = t.kind() == Topology::Kind::Sphere;
    EXPECT_EQ(t.embed_dim(), c["embed_dim"].get<int>());
    auto check_point = [&](const json& p, double fx, double fy, const std::string& what) {
      EXPECT_TRUE(near(fx / static_cast<double>(t.width()), p["u"], tol, 1)) << what;
      EXPECT_TRUE(near(fy / static_cast<double>(t.height()), p["v"], tol, 1)) << what;
      const auto e = t.embed(fx, fy);
      const double s = max_abs(p["embed"]);
      for (size_t k = 0; k < p["embed"].size(); ++k) EXPECT_TRUE(near(e[k], p["embed"][k], tol, s)) << what << " embed";
      for (size_t k = p["embed"].size(); k < 4; ++k) EXPECT_EQ(e[k], 0.0) << what;
      if (sphere) {
        const auto ll = t.lon_lat_at(fx, fy);
        EXPECT_TRUE(near(ll.lon, p["lon"], tol, std::fabs(p["lon"].get<double>()))) << what;
        EXPECT_TRUE(near(ll.lat, p["lat"], tol, std::fabs(p["lat"].get<double>()))) << what;
        const auto u = pipehost::unit_vector(ll.lon, ll.lat);
        for (size_t k = 0; k < 3; ++k) EXPECT_TRUE(near(u[k], p["unit"][k], tol, 1)) << what << " unit";
      }
    };
    for (const auto& cell : c["cells"]) {
      const int64_t x = cell["x"], y = cell["y"];
      const auto [fx, fy] = t.grid().center(x, y);
      EXPECT_EQ(fx, cell["fx"].get<double>());
      EXPECT_EQ(fy, cell["fy"].get<double>());
      const auto [u, vv] = t.grid().uv(x, y);
      EXPECT_TRUE(near(u, cell["u"], tol, 1));
      EXPECT_TRUE(near(vv, cell["v"], tol, 1));
      // cell_at_uv brings a centre back to its cell.
      const auto back = t.grid().cell_at_uv(u, vv);
      ASSERT_TRUE(back.has_value());
      EXPECT_EQ(back->x, x);
      EXPECT_EQ(back->y, y);
      if (sphere) {
        const auto ll = t.lon_lat(x, y);
        EXPECT_TRUE(near(ll.lon, cell["lon"], tol, std::fabs(cell["lon"].get<double>())));
      }
      check_point(cell, fx, fy, name(c["topology"]) + " cell " + std::to_string(cell["index"].get<int64_t>()));
    }
    for (const auto& p : c["points"]) {
      check_point(p, p["fx"], p["fy"], name(c["topology"]) + " point");
    }
    if (c.contains("cell_of")) {
      for (const auto& co : c["cell_of"]) {
        const auto cell = t.cell_of(co["lon"], co["lat"]);
        EXPECT_EQ(cell.x, co["x"].get<int64_t>()) << co.dump();
        EXPECT_EQ(cell.y, co["y"].get<int64_t>()) << co.dump();
      }
    }
  }
}

TEST(Topology, Areas) {
  const json v = testdata::load("topology/areas.json");
  const double tol = v["tolerance"];
  for (const auto& c : v["cases"]) {
    const Topology t = from_json(c["topology"]);
    const double total = c["total_area"];
    EXPECT_TRUE(near(t.area(), total, tol, total)) << name(c["topology"]);
    double sum = 0;
    for (int64_t y = 0; y < t.height(); ++y) {
      const double want = c["row_areas"][static_cast<size_t>(y)];
      EXPECT_TRUE(near(t.row_area(y), want, tol, want)) << name(c["topology"]) << " row " << y;
      EXPECT_EQ(t.cell_area(y * t.width()), t.row_area(y));
      sum += t.row_area(y) * static_cast<double>(t.width());
    }
    EXPECT_TRUE(near(sum, total, 1e-9, total)) << "cell areas sum to the total";
  }
}

TEST(Topology, Distances) {
  const json v = testdata::load("topology/distances.json");
  const double tol = v["tolerance"];
  size_t n = 0;
  for (const auto& c : v["cases"]) {
    const Topology t = from_json(c["topology"]);
    const double scale = std::sqrt(t.area());
    for (const auto& p : c["pairs"]) {
      EXPECT_TRUE(near(t.distance(p["a"], p["b"]), p["distance"], tol, scale))
          << name(c["topology"]) << " " << p.dump();
      ++n;
    }
  }
  EXPECT_GT(n, 100u);
}

TEST(Topology, Pyramid) {
  const json v = testdata::load("topology/pyramid.json");
  for (const auto& c : v["cases"]) {
    const std::string kind = c["kind"];
    const int64_t w = c["width"], h = c["height"];
    const int ml = c["max_levels"];
    EXPECT_EQ(pipehost::max_levels(kind, w, h), ml) << kind << " " << w << "x" << h;
    const auto ls = pipehost::levels(kind, w, h, ml);
    ASSERT_EQ(ls.size(), c["levels"].size());
    for (size_t i = 0; i < ls.size(); ++i) {
      EXPECT_EQ(ls[i].level, c["levels"][i]["level"].get<int>());
      EXPECT_EQ(ls[i].width, c["levels"][i]["width"].get<int64_t>());
      EXPECT_EQ(ls[i].height, c["levels"][i]["height"].get<int64_t>());
    }
    if (c["mappings"].is_null()) continue;
    for (const auto& m : c["mappings"]) {
      const auto& fine = ls[m["fine"].get<size_t>()];
      const auto& coarse = ls[m["coarse"].get<size_t>()];
      for (size_t i = 0; i < m["parents"].size(); ++i) {
        EXPECT_EQ(pipehost::parent_index(fine, coarse, static_cast<int64_t>(i)), m["parents"][i].get<int64_t>())
            << kind << " fine " << i;
      }
      for (size_t j = 0; j < m["children"].size(); ++j) {
        const auto got = pipehost::child_indices(fine, coarse, static_cast<int64_t>(j));
        EXPECT_EQ(got, m["children"][j].get<std::vector<int64_t>>()) << kind << " coarse " << j;
      }
    }
  }
  for (const auto& bad : v["invalid"]) {
    EXPECT_THROW(pipehost::levels(bad["kind"].get<std::string>(), bad["width"], bad["height"], bad["levels"]),
                 pipehost::Error)
        << bad.dump();
  }
  EXPECT_THROW(pipehost::levels("sphere", 8, 4, -1), pipehost::Error);
}

TEST(Topology, Sampling) {
  const json v = testdata::load("topology/sampling.json");
  const double tol = v["tolerance"];
  for (const auto& c : v["cases"]) {
    const Topology t = from_json(c["topology"]);
    const auto data = c["data"].get<std::vector<float>>();
    for (const auto& s : c["samples"]) {
      const double got = pipehost::sample(t.grid(), data.data(), data.size(), s["fx"], s["fy"]);
      if (s["value"].is_null()) {
        EXPECT_TRUE(std::isnan(got)) << s.dump();
        continue;
      }
      const double want = s["value"];
      EXPECT_TRUE(near(got, want, tol, std::fabs(want))) << name(c["topology"]) << " " << s.dump();
    }
    const double inf = std::numeric_limits<double>::infinity();
    EXPECT_TRUE(std::isnan(pipehost::sample(t.grid(), data.data(), data.size(), inf, 0.5)));
    EXPECT_TRUE(std::isnan(pipehost::sample(t.grid(), data.data(), data.size(), 0.5, 1e13)));
    EXPECT_THROW(pipehost::sample(t.grid(), data.data(), data.size() - 1, 0.5, 0.5), pipehost::Error);
  }
}

TEST(Topology, Load) {
  const json v = testdata::load("topology/load.json");
  const double tol = v["tolerance"];
  for (const auto& c : v["cases"]) {
    const std::string kind = c["kind"];
    const auto& o = c["options"];
    pipehost::TopologyOptions opts;
    opts.radius = o["radius"];
    opts.minor_radius = o["minor_radius"];
    const std::string edge = o["edge"];
    bool bad_edge = false;
    if (!edge.empty()) {
      try {
        opts.edge = pipehost::parse_wrap(edge);
      } catch (const pipehost::Error&) {
        bad_edge = true;
      }
    }
    if (c["error"].get<bool>()) {
      if (bad_edge) continue;  // an unknown wrap name is an error already
      EXPECT_THROW(Topology::load(kind, c["width"], c["height"], opts), pipehost::Error) << c.dump();
      continue;
    }
    ASSERT_FALSE(bad_edge) << c.dump();
    const Topology t = Topology::load(kind, c["width"], c["height"], opts);
    const auto& want = c["topology"];
    EXPECT_EQ(std::string(t.kind_name()), want["kind"].get<std::string>());
    EXPECT_EQ(t.width(), want["width"].get<int64_t>());
    EXPECT_EQ(t.height(), want["height"].get<int64_t>());
    EXPECT_EQ(std::string(pipehost::wrap_name(t.grid().wrap_x())), want["wrap_x"].get<std::string>());
    EXPECT_EQ(std::string(pipehost::wrap_name(t.grid().wrap_y())), want["wrap_y"].get<std::string>());
    EXPECT_TRUE(near(t.radius(), want["radius"], tol, want["radius"].get<double>())) << c.dump();
    EXPECT_TRUE(near(t.minor_radius(), want["minor_radius"], tol, want["minor_radius"].get<double>())) << c.dump();
    // The wire form rebuilds the same surface.
    const Topology back = from_json(want);
    EXPECT_EQ(back.area(), t.area());
  }
}

TEST(Topology, ResolveAndWithSize) {
  const Topology s = Topology::load("sphere", 8, 4);
  const auto& g = s.grid();
  // North of (x, 0) is (x + W/2, 0); NE is (x + 1 + W/2, 0).
  EXPECT_EQ(g.resolve(1, -1)->x, 5);
  EXPECT_EQ(g.resolve(1, -1)->y, 0);
  EXPECT_EQ(g.resolve_clamped(2, -1).x, 6);
  const Topology p = Topology::load("plane", 4, 3);
  EXPECT_FALSE(p.grid().resolve(-1, 0).has_value());
  EXPECT_EQ(p.grid().resolve_clamped(-5, 9).x, 0);
  EXPECT_EQ(p.grid().resolve_clamped(-5, 9).y, 2);
  EXPECT_EQ(p.grid().step(0, -1, 0), -1);
  const Topology half = s.with_size(4, 2);
  EXPECT_EQ(half.radius(), s.radius());
  EXPECT_EQ(half.area(), s.area());
  EXPECT_THROW(s.with_size(3, 2), pipehost::Error);
  EXPECT_THROW(p.lon_lat(0, 0), pipehost::Error);
  EXPECT_THROW(Topology::load("cube", 4, 4), pipehost::Error);
  EXPECT_THROW(Topology::load("sphere", 7, 4), pipehost::Error);
}
