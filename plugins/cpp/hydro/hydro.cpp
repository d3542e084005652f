// hydro-cpp offers hydro.flow (docs/planet.md): depression filling by
// priority flood across every wrap edge, D8 flow directions on the filled
// surface, flow accumulation in km², and rivers as polylines in an Arrow
// table. main.cpp serves it; the SDK's tests run it in-process.
#include "hydro.hpp"

#include <cmath>
#include <cstring>
#include <queue>
#include <string>
#include <vector>

#include "arrow_ipc.hpp"

namespace {

const pipehost::Param<double> kSeaLevel{"sea_level", 0.0, "elevation of the sea surface in metres"};
const pipehost::Param<double> kRiverArea{"river_area", 40000.0,
                                         "drained area in km² from which a cell carries a river (> 0)"};

constexpr double kPi = 3.14159265358979323846;
// Offsets of neighbors8, clockwise from north (docs/topology.md).
constexpr int kDX[8] = {0, 1, 1, 1, 0, -1, -1, -1};
constexpr int kDY[8] = {-1, -1, 0, 1, 1, 1, 0, -1};

// Map places grid coordinates in the raster's reference system, so the
// rivers overlay the saved COG (docs/formats.md): lon/lat on a sphere,
// metres from the lower-left corner on cylinder, torus and plane.
struct Map {
  const pipehost::Topology& t;
  double dx, dy;
  double H;
  explicit Map(const pipehost::Topology& topo) : t(topo), H(double(topo.height())) {
    const double W = double(topo.width());
    switch (topo.kind()) {
      case pipehost::Topology::Kind::Cylinder:
        dx = dy = 2 * kPi * topo.radius() / W;
        break;
      case pipehost::Topology::Kind::Torus:
        dx = 2 * kPi * topo.radius() / W;
        dy = 2 * kPi * topo.minor_radius() / H;
        break;
      default:
        dx = dy = 1;
    }
  }
  std::pair<double, double> at(double fx, double fy) const {
    if (t.kind() == pipehost::Topology::Kind::Sphere) {
      auto ll = t.lon_lat_at(fx, fy);
      return {ll.lon, ll.lat};
    }
    return {fx * dx, (H - fy) * dy};
  }
};

void put_u32(std::vector<uint8_t>& b, uint32_t v) {
  uint8_t t[4];
  std::memcpy(t, &v, 4);
  b.insert(b.end(), t, t + 4);
}
void put_f64(std::vector<uint8_t>& b, double v) {
  uint8_t t[8];
  std::memcpy(t, &v, 8);
  b.insert(b.end(), t, t + 8);
}

// wkb encodes parts as a LineString (one part) or a MultiLineString.
std::vector<uint8_t> wkb(const std::vector<std::vector<std::pair<double, double>>>& parts) {
  std::vector<uint8_t> b;
  auto line = [&b](const std::vector<std::pair<double, double>>& pts) {
    b.push_back(1);
    put_u32(b, 2);
    put_u32(b, uint32_t(pts.size()));
    for (auto& p : pts) put_f64(b, p.first), put_f64(b, p.second);
  };
  if (parts.size() == 1) {
    line(parts[0]);
  } else {
    b.push_back(1);
    put_u32(b, 5);
    put_u32(b, uint32_t(parts.size()));
    for (auto& p : parts) line(p);
  }
  return b;
}

void flow(pipehost::Context& ctx) {
  const double sea = ctx[kSeaLevel], river_area = ctx[kRiverArea];
  if (!(river_area > 0) || !std::isfinite(river_area)) throw pipehost::Error("param river_area: must be > 0");
  if (!std::isfinite(sea)) throw pipehost::Error("param sea_level: must be finite");
  auto elev = ctx.input_grid<float>("elevation");
  const pipehost::Topology& topo = ctx.topology();
  const pipehost::Grid& g = topo.grid();
  const int64_t W = g.width(), H = g.height(), N = g.size();
  if (int64_t(elev.width()) != W || int64_t(elev.height()) != H) {
    throw pipehost::Error("hydro.flow: the elevation grid is not the native grid size");
  }

  // 1. Priority flood from the sea (Barnes et al. 2014, with epsilon): every
  // land cell gets a filled height strictly above the cell it was reached
  // from, so every land cell drains, across wraps and poles alike.
  std::vector<double> filled(N);
  std::vector<int64_t> order;  // land cells, lowest filled height first
  order.reserve(N);
  {
    auto span = ctx.timed("priority flood");
    using Item = std::pair<double, int64_t>;
    std::priority_queue<Item, std::vector<Item>, std::greater<Item>> pq;
    std::vector<uint8_t> done(N, 0);
    int64_t lowest = 0;
    for (int64_t i = 0; i < N; ++i) {
      filled[i] = elev[i];
      if (elev[i] < elev[lowest]) lowest = i;
      if (elev[i] <= sea) {
        done[i] = 1;  // the sea: an outlet, never filled
        for (int64_t n : g.neighbors8(i)) {
          if (n >= 0 && elev[n] > sea && !done[n]) {
            done[n] = 1;
            filled[n] = elev[n];
            pq.push({filled[n], n});
          }
        }
      }
    }
    if (pq.empty() && !done[lowest]) {
      // No sea at all: everything drains to the lowest cell, a basin.
      done[lowest] = 1;
      pq.push({filled[lowest], lowest});
    }
    int64_t popped = 0;
    while (!pq.empty()) {
      auto [h, c] = pq.top();
      pq.pop();
      order.push_back(c);
      if (++popped % (1 << 18) == 0) {
        ctx.throw_if_cancelled();
        ctx.progress(0.6 * double(popped) / double(N), "filling");
      }
      for (int64_t n : g.neighbors8(c)) {
        if (n < 0 || done[n]) continue;
        done[n] = 1;
        filled[n] = std::max(double(elev[n]), std::nextafter(h, INFINITY));
        pq.push({filled[n], n});
      }
    }
  }

  // 2. Receivers: the steepest descent on the filled surface, distances in
  // metres (a sphere's cells narrow towards the poles).
  std::vector<int64_t> recv(N, -1);
  std::vector<double> area(N);
  {
    auto span = ctx.timed("directions");
    for (int64_t y = 0; y < H; ++y) {
      double ex, ey;  // cell size in metres along x and y on this row
      if (topo.kind() == pipehost::Topology::Kind::Sphere) {
        const double lat = topo.lon_lat(0, y).lat * kPi / 180;
        ey = kPi * topo.radius() / double(H);
        ex = std::max(1e-9, 2 * kPi * topo.radius() / double(W) * std::cos(lat));
      } else {
        ex = std::sqrt(topo.cell_area(y * W));
        ey = ex;
        if (topo.kind() == pipehost::Topology::Kind::Torus) {
          ex = 2 * kPi * topo.radius() / double(W);
          ey = 2 * kPi * topo.minor_radius() / double(H);
        }
      }
      for (int64_t x = 0; x < W; ++x) {
        const int64_t i = y * W + x;
        area[i] = topo.cell_area(i) / 1e6;
        if (elev[i] <= sea) continue;
        const auto nb = g.neighbors8(i);
        double best = 0;
        for (int k = 0; k < 8; ++k) {
          const int64_t n = nb[k];
          if (n < 0 || !(filled[n] < filled[i])) continue;
          const double d = std::hypot(kDX[k] * ex, kDY[k] * ey);
          const double s = (filled[i] - filled[n]) / d;
          if (s > best) best = s, recv[i] = n;
        }
      }
    }
  }

  // 3. Accumulation, highest cells first: each cell's receiver is lower, so
  // it is complete when its turn comes.
  auto accum = ctx.output_grid<float>("accum");
  auto filled_out = ctx.output_grid<float>("filled");
  std::vector<double> acc(area);
  {
    auto span = ctx.timed("accumulation");
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      if (recv[*it] >= 0) acc[recv[*it]] += acc[*it];
    }
    for (int64_t i = 0; i < N; ++i) {
      accum[i] = float(acc[i]);
      filled_out[i] = elev[i] <= sea ? elev[i] : float(filled[i]);
    }
  }
  ctx.progress(0.8, "rivers");

  // 4. Rivers: from each source (a river cell no river flows into) down to
  // the sea, a basin, or the first cell of a river already traced.
  auto span = ctx.timed("rivers");
  std::vector<uint8_t> inflow(N, 0);
  for (int64_t i = 0; i < N; ++i) {
    if (recv[i] >= 0 && acc[i] >= river_area) inflow[recv[i]] = 1;
  }
  std::vector<uint8_t> traced(N, 0);
  Map map(topo);
  arrowipc::Column id{"river_id", arrowipc::Type::Int32}, outlet_area{"drained_km2", arrowipc::Type::Float64},
      length{"length_km", arrowipc::Type::Float64}, end{"end", arrowipc::Type::Utf8},
      cells{"cells", arrowipc::Type::Int32}, geom{"geometry", arrowipc::Type::Binary};
  int32_t next_id = 0;
  int64_t river_cells = 0;
  for (int64_t s = 0; s < N; ++s) {
    if (elev[s] <= sea || acc[s] < river_area || inflow[s] || traced[s]) continue;
    std::vector<int64_t> path{s};
    std::string why = "basin";
    for (int64_t c = s;;) {
      traced[c] = 1;
      const int64_t r = recv[c];
      if (r < 0) break;
      path.push_back(r);
      if (elev[r] <= sea) {
        why = "sea";
        break;
      }
      if (traced[r]) {
        why = "confluence";
        break;
      }
      c = r;
    }
    if (path.size() < 2) continue;  // a lone basin cell
    // Split where a step crosses a wrap edge or a pole, so no segment spans
    // the whole map.
    std::vector<std::vector<std::pair<double, double>>> parts(1);
    double len = 0;
    for (size_t k = 0; k < path.size(); ++k) {
      const auto c = g.xy(path[k]);
      if (k > 0) {
        const auto p = g.xy(path[k - 1]);
        len += topo.distance(path[k - 1], path[k]);
        if (std::abs(c.x - p.x) > 1 || std::abs(c.y - p.y) > 1) parts.emplace_back();
      }
      parts.back().push_back(map.at(double(c.x) + 0.5, double(c.y) + 0.5));
    }
    // A part of one vertex (a river that crosses a seam on its first or
    // last step) repeats it: a LineString needs two.
    for (auto& p : parts) {
      if (p.size() == 1) p.push_back(p[0]);
    }
    const auto b = wkb(parts);
    id.push_int32(next_id++);
    outlet_area.push_float64(acc[path[path.size() - 2]]);
    length.push_float64(len / 1000);
    end.push_bytes(why.data(), why.size());
    cells.push_int32(int32_t(path.size()));
    geom.push_bytes(b.data(), b.size());
    river_cells += int64_t(path.size());
  }
  const auto file = arrowipc::write_file({id, outlet_area, length, end, cells, geom});
  ctx.output_stream("rivers").write(file.data(), file.size());
  ctx.metric("rivers", double(next_id));
  ctx.metric("river_cells", double(river_cells));
  ctx.progress(1.0, "rivers");
}

}  // namespace

namespace hydro {

pipehost::Stage stage() {
  return pipehost::Stage{"hydro.flow", "1.0.0"}
      .doc("Depression filling (priority flood across wrap edges and poles), D8 flow directions, flow accumulation "
           "in km² and rivers as polylines (an Arrow table; GeoParquet when saved).")
      .input(pipehost::grid_port("elevation", pipehost::DType::F32))
      .output(pipehost::grid_port("accum", pipehost::DType::F32))
      .output(pipehost::grid_port("filled", pipehost::DType::F32))
      .output(pipehost::table_port("rivers"))
      .param(kSeaLevel)
      .param(kRiverArea)
      .concurrent()
      .run(flow);
}

}  // namespace hydro
