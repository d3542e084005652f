// Surfaces a run's grids live on — sphere, cylinder, torus, plane — and the
// grid pyramid, with the rules of docs/topology.md (pinned by
// testdata/topology/*.json). Same functions as the Go package topology.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pipehost/error.hpp"

namespace pipehost {

// Wrap is the behaviour of one grid axis at its edges (proto enum numbers).
enum class Wrap : uint32_t {
  Unspecified = 0,
  // Nothing lies past the edge: lookups report no cell, sampling clamps.
  Clamp = 1,
  // Periodic axis.
  Repeat = 2,
  // Mirrored at the edge, the edge cell repeated (-1 -> 0, n -> n-1).
  Reflect = 3,
  // Sphere latitude: past a pole, the same row at longitude + 180 degrees.
  Pole = 4,
};

// wrap_name is "clamp", "repeat", "reflect", "pole" or "unspecified".
const char* wrap_name(Wrap w);
// parse_wrap reads those names; throws Error for anything else.
Wrap parse_wrap(std::string_view name);

inline constexpr double kEarthRadius = 6371000.0;
inline constexpr int64_t kMaxSize = int64_t{1} << 30;

struct Cell {
  int64_t x = 0;
  int64_t y = 0;
  bool operator==(const Cell& o) const { return x == o.x && y == o.y; }
};

// Grid is the lattice: size, index order (i = y*width + x, row 0 on top) and
// per-axis wrap rules.
class Grid {
 public:
  Grid() = default;
  Grid(int64_t width, int64_t height, Wrap wrap_x, Wrap wrap_y)
      : w_(width), h_(height), wrap_x_(wrap_x), wrap_y_(wrap_y) {}

  int64_t width() const { return w_; }
  int64_t height() const { return h_; }
  int64_t size() const { return w_ * h_; }
  Wrap wrap_x() const { return wrap_x_; }
  Wrap wrap_y() const { return wrap_y_; }

  int64_t index(int64_t x, int64_t y) const { return y * w_ + x; }
  Cell xy(int64_t i) const { return {i % w_, i / w_}; }
  // center is the grid coordinates (fx, fy) of the centre of cell (x, y).
  std::pair<double, double> center(int64_t x, int64_t y) const {
    return {static_cast<double>(x) + 0.5, static_cast<double>(y) + 0.5};
  }
  // uv is the normalised coordinates of the centre of cell (x, y).
  std::pair<double, double> uv(int64_t x, int64_t y) const {
    return {(static_cast<double>(x) + 0.5) / static_cast<double>(w_),
            (static_cast<double>(y) + 0.5) / static_cast<double>(h_)};
  }
  // cell_at_uv is the cell containing (u, v); outside [0, 1) it follows
  // resolve, so it is empty past a clamp edge.
  std::optional<Cell> cell_at_uv(double u, double v) const;

  // resolve maps any integer cell coordinates onto the grid, y first (a
  // pole crossing moves x by width/2), then x; empty past a clamp edge.
  std::optional<Cell> resolve(int64_t x, int64_t y) const {
    if (in(x, y)) return Cell{x, y};
    Cell c;
    if (!resolve_slow(x, y, false, c)) return std::nullopt;
    return c;
  }
  // resolve_clamped is resolve with clamp edges clamped to the edge cell.
  Cell resolve_clamped(int64_t x, int64_t y) const {
    if (in(x, y)) return Cell{x, y};
    Cell c;
    resolve_slow(x, y, true, c);
    return c;
  }
  // step is the index of the cell reached from cell i by (dx, dy), or -1.
  int64_t step(int64_t i, int64_t dx, int64_t dy) const {
    const int64_t x = i % w_ + dx, y = i / w_ + dy;
    if (in(x, y)) return y * w_ + x;
    Cell c;
    if (!resolve_slow(x, y, false, c)) return -1;
    return c.y * w_ + c.x;
  }
  // neighbors4 is N, E, S, W; -1 for none (past a clamp edge).
  std::array<int64_t, 4> neighbors4(int64_t i) const;
  // neighbors8 is clockwise from north: N, NE, E, SE, S, SW, W, NW.
  std::array<int64_t, 8> neighbors8(int64_t i) const;

  static constexpr std::array<std::array<int, 2>, 4> kOffsets4{{{0, -1}, {1, 0}, {0, 1}, {-1, 0}}};
  static constexpr std::array<std::array<int, 2>, 8> kOffsets8{
      {{0, -1}, {1, -1}, {1, 0}, {1, 1}, {0, 1}, {-1, 1}, {-1, 0}, {-1, -1}}};

 private:
  bool in(int64_t x, int64_t y) const {
    return static_cast<uint64_t>(x) < static_cast<uint64_t>(w_) &&
           static_cast<uint64_t>(y) < static_cast<uint64_t>(h_);
  }
  bool resolve_slow(int64_t x, int64_t y, bool clamp, Cell& out) const;

  int64_t w_ = 1, h_ = 1;
  Wrap wrap_x_ = Wrap::Clamp, wrap_y_ = Wrap::Clamp;
};

// sample interpolates one value per cell (row-major, n == grid.size())
// bilinearly between cell centres at grid coordinates (fx, fy); NaN for
// non-finite coordinates or ones more than 2^40 cells away.
template <class T>
double sample(const Grid& g, const T* data, size_t n, double fx, double fy);

struct LonLat {
  double lon = 0;
  double lat = 0;
};

// unit_vector is (cos lat cos lon, cos lat sin lon, sin lat), degrees in.
std::array<double, 3> unit_vector(double lon, double lat);

struct TopologyOptions {
  // Sphere radius (default kEarthRadius), cylinder radius or torus major
  // radius (default width/2pi); 0 takes the default.
  double radius = 0;
  // Torus minor radius (default height/2pi).
  double minor_radius = 0;
  // Policy at the non-periodic edges of a cylinder or plane: Clamp (default)
  // or Reflect.
  Wrap edge = Wrap::Unspecified;
};

// Topology is a grid on a surface; lengths in metres, areas in square metres.
class Topology {
 public:
  enum class Kind { Sphere, Cylinder, Torus, Plane };

  // load builds a topology from configuration values; throws Error.
  static Topology load(std::string_view kind, int64_t width, int64_t height, TopologyOptions opts = {});
  // from_wire rebuilds one from its wire form (pipehost.v1.Topology) and the
  // native (level 0) size; unspecified values take the defaults of load.
  static Topology from_wire(std::string_view kind, Wrap wrap_x, Wrap wrap_y, double radius,
                            double minor_radius, int64_t width, int64_t height);

  const char* kind_name() const;
  Kind kind() const { return kind_; }
  const Grid& grid() const { return grid_; }
  int64_t width() const { return grid_.width(); }
  int64_t height() const { return grid_.height(); }
  // radius: sphere radius, cylinder radius or torus major radius; 0 for a plane.
  double radius() const { return kind_ == Kind::Plane ? 0 : r_; }
  // minor_radius: torus only, else 0.
  double minor_radius() const { return kind_ == Kind::Torus ? minor_ : 0; }
  // length: the cylinder's extent along its axis, else 0.
  double length() const { return kind_ == Kind::Cylinder ? len_ : 0; }

  double cell_area(int64_t i) const;
  double row_area(int64_t y) const;
  double area() const;
  double distance(int64_t a, int64_t b) const;
  double distance_at(double fx1, double fy1, double fx2, double fy2) const;
  int embed_dim() const;
  // embed maps grid coordinates to a seamless point in metres; unused
  // components are 0.
  std::array<double, 4> embed(double fx, double fy) const;
  // with_size is the same surface on another grid size (a pyramid level).
  Topology with_size(int64_t width, int64_t height) const;

  // Sphere only (Error otherwise): degrees at a cell centre or grid point,
  // grid coordinates of a point, the cell containing a point.
  LonLat lon_lat(int64_t x, int64_t y) const;
  LonLat lon_lat_at(double fx, double fy) const;
  std::pair<double, double> grid_at(double lon, double lat) const;
  Cell cell_of(double lon, double lat) const;

 private:
  Topology() = default;
  std::pair<double, double> cell_size() const;
  void need_sphere(const char* what) const;

  Kind kind_ = Kind::Plane;
  Grid grid_;
  double r_ = 0, minor_ = 0, len_ = 0, ex_ = 0, ey_ = 0;
};

// One level of the grid pyramid (level 0 is native).
struct Level {
  int level = 0;
  int64_t width = 0;
  int64_t height = 0;
};

// next_size halves both dimensions rounding up; a sphere's width then rounds
// up to even.
std::pair<int64_t, int64_t> next_size(std::string_view kind, int64_t width, int64_t height);
// max_levels is how many downsampled levels are possible.
int max_levels(std::string_view kind, int64_t width, int64_t height);
// levels is the native level and n more; throws Error for n out of range.
std::vector<Level> levels(std::string_view kind, int64_t width, int64_t height, int n);
// parent is the cell of coarse containing the centre of (x, y) of fine.
Cell parent(const Level& fine, const Level& coarse, int64_t x, int64_t y);
int64_t parent_index(const Level& fine, const Level& coarse, int64_t i);
// children of coarse cell (px, py): the fine cells [x0, x1) x [y0, y1).
struct CellRange {
  int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;
};
CellRange children(const Level& fine, const Level& coarse, int64_t px, int64_t py);
// child_indices lists the fine indices of coarse cell j row by row.
std::vector<int64_t> child_indices(const Level& fine, const Level& coarse, int64_t j);

// --- implementation of sample ---------------------------------------------------

template <class T>
double sample(const Grid& g, const T* data, size_t n, double fx, double fy) {
  const int64_t w = g.width(), h = g.height();
  if (n != static_cast<size_t>(w * h)) {
    throw Error("pipehost::sample: " + std::to_string(n) + " values for a " + std::to_string(w) + "x" +
                std::to_string(h) + " grid");
  }
  constexpr double kMaxCoord = 1099511627776.0;  // 2^40
  const double px = fx - 0.5, py = fy - 0.5;
  if (!(px > -kMaxCoord && px < kMaxCoord) || !(py > -kMaxCoord && py < kMaxCoord)) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  const double xf = std::floor(px), yf = std::floor(py);
  const double tx = px - xf, ty = py - yf;
  const int64_t x0 = static_cast<int64_t>(xf), y0 = static_cast<int64_t>(yf);
  double a, b, c, d;
  if (x0 >= 0 && x0 < w - 1 && y0 >= 0 && y0 < h - 1) {
    const int64_t i = y0 * w + x0;
    a = static_cast<double>(data[i]);
    b = static_cast<double>(data[i + 1]);
    c = static_cast<double>(data[i + w]);
    d = static_cast<double>(data[i + w + 1]);
  } else {
    auto at = [&](int64_t x, int64_t y) {
      const Cell r = g.resolve_clamped(x, y);
      return static_cast<double>(data[r.y * w + r.x]);
    };
    a = at(x0, y0);
    b = at(x0 + 1, y0);
    c = at(x0, y0 + 1);
    d = at(x0 + 1, y0 + 1);
  }
  const double top = a + tx * (b - a);
  const double bottom = c + tx * (d - c);
  return top + ty * (bottom - top);
}

}  // namespace pipehost
