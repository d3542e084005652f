#include "pipehost/topology.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace pipehost {

namespace {

constexpr double kPi = 3.14159265358979323846;

int64_t mod(int64_t a, int64_t n) {
  a %= n;
  if (a < 0) a += n;
  return a;
}

// mirror folds a onto [0, n) with the edge cell repeated (period 2n).
int64_t mirror(int64_t a, int64_t n, bool& flipped) {
  const int64_t m = mod(a, 2 * n);
  flipped = m >= n;
  return flipped ? 2 * n - 1 - m : m;
}

std::string fmt(double v) {
  std::ostringstream o;
  o.precision(17);
  o << v;
  return o.str();
}

bool known_kind(std::string_view k) { return k == "sphere" || k == "cylinder" || k == "torus" || k == "plane"; }

void check_size(std::string_view kind, int64_t w, int64_t h) {
  if (!known_kind(kind)) {
    throw Error("topology: unknown kind \"" + std::string(kind) + "\" (want sphere, cylinder, torus or plane)");
  }
  if (w < 1 || h < 1 || w > kMaxSize || h > kMaxSize) {
    throw Error("topology " + std::string(kind) + ": grid " + std::to_string(w) + "×" + std::to_string(h) +
                ": width and height must be in 1.." + std::to_string(kMaxSize));
  }
  if (kind == "sphere" && w % 2 != 0) {
    throw Error("topology sphere: width " + std::to_string(w) +
                " is odd: crossing a pole moves half the width, so it must be even");
  }
}

double check_length(std::string_view kind, const char* what, double v) {
  if (std::isnan(v) || std::isinf(v) || v < 0) {
    throw Error("topology " + std::string(kind) + ": " + what + " " + fmt(v) +
                ": must be a positive number of metres (0 for the default)");
  }
  return v;
}

void want_wraps(std::string_view kind, Wrap wx, Wrap wy, std::initializer_list<Wrap> ok_x,
                std::initializer_list<Wrap> ok_y) {
  auto check = [&](const char* axis, Wrap w, std::initializer_list<Wrap> ok) {
    if (w == Wrap::Unspecified) return;
    for (Wrap o : ok) {
      if (o == w) return;
    }
    std::string names;
    for (Wrap o : ok) {
      if (!names.empty()) names += " or ";
      names += wrap_name(o);
    }
    throw Error("topology " + std::string(kind) + ": wrap " + axis + " " + wrap_name(w) + " not allowed (want " +
                names + ")");
  };
  check("x", wx, ok_x);
  check("y", wy, ok_y);
}

double or_default(double v, double def) { return v == 0 ? def : v; }
Wrap or_default(Wrap v, Wrap def) { return v == Wrap::Unspecified ? def : v; }

// wrapped reduces a separation to the shortest signed one on a period n.
double wrapped(double d, double n) {
  d = std::fmod(d, n);
  if (d > n / 2) {
    d -= n;
  } else if (d < -n / 2) {
    d += n;
  }
  return d;
}

constexpr double kMaxCoord = 1099511627776.0;  // 2^40
bool in_range(double f) { return f > -kMaxCoord && f < kMaxCoord; }

}  // namespace

const char* wrap_name(Wrap w) {
  switch (w) {
    case Wrap::Clamp: return "clamp";
    case Wrap::Repeat: return "repeat";
    case Wrap::Reflect: return "reflect";
    case Wrap::Pole: return "pole";
    case Wrap::Unspecified: return "unspecified";
  }
  return "unknown";
}

Wrap parse_wrap(std::string_view s) {
  for (Wrap w : {Wrap::Clamp, Wrap::Repeat, Wrap::Reflect, Wrap::Pole}) {
    if (s == wrap_name(w)) return w;
  }
  throw Error("topology: unknown wrap \"" + std::string(s) + "\" (want clamp, repeat, reflect or pole)");
}

// --- Grid ---------------------------------------------------------------------------

bool Grid::resolve_slow(int64_t x, int64_t y, bool clamp, Cell& out) const {
  if (static_cast<uint64_t>(y) >= static_cast<uint64_t>(h_)) {
    bool crossed = false;
    switch (wrap_y_) {
      case Wrap::Repeat: y = mod(y, h_); break;
      case Wrap::Reflect: y = mirror(y, h_, crossed); break;
      case Wrap::Pole:
        y = mirror(y, h_, crossed);
        if (crossed) x += w_ / 2;
        break;
      default:
        if (!clamp) return false;
        y = std::min(std::max<int64_t>(y, 0), h_ - 1);
    }
  }
  if (static_cast<uint64_t>(x) >= static_cast<uint64_t>(w_)) {
    bool flipped = false;
    switch (wrap_x_) {
      case Wrap::Repeat: x = mod(x, w_); break;
      case Wrap::Reflect: x = mirror(x, w_, flipped); break;
      default:
        if (!clamp) return false;
        x = std::min(std::max<int64_t>(x, 0), w_ - 1);
    }
  }
  out = Cell{x, y};
  return true;
}

std::optional<Cell> Grid::cell_at_uv(double u, double v) const {
  const double fx = u * static_cast<double>(w_), fy = v * static_cast<double>(h_);
  if (!in_range(fx) || !in_range(fy)) return std::nullopt;
  return resolve(static_cast<int64_t>(std::floor(fx)), static_cast<int64_t>(std::floor(fy)));
}

std::array<int64_t, 4> Grid::neighbors4(int64_t i) const {
  const int64_t x = i % w_, y = i / w_;
  if (x > 0 && x < w_ - 1 && y > 0 && y < h_ - 1) return {i - w_, i + 1, i + w_, i - 1};
  std::array<int64_t, 4> n{};
  for (size_t k = 0; k < 4; ++k) n[k] = step(i, kOffsets4[k][0], kOffsets4[k][1]);
  return n;
}

std::array<int64_t, 8> Grid::neighbors8(int64_t i) const {
  const int64_t x = i % w_, y = i / w_;
  if (x > 0 && x < w_ - 1 && y > 0 && y < h_ - 1) {
    const int64_t w = w_;
    return {i - w, i - w + 1, i + 1, i + w + 1, i + w, i + w - 1, i - 1, i - w - 1};
  }
  std::array<int64_t, 8> n{};
  for (size_t k = 0; k < 8; ++k) n[k] = step(i, kOffsets8[k][0], kOffsets8[k][1]);
  return n;
}

// --- Topology --------------------------------------------------------------------------

std::array<double, 3> unit_vector(double lon, double lat) {
  const double l = lon * kPi / 180, p = lat * kPi / 180;
  const double sl = std::sin(l), cl = std::cos(l), sp = std::sin(p), cp = std::cos(p);
  return {cp * cl, cp * sl, sp};
}

Topology Topology::load(std::string_view kind, int64_t width, int64_t height, TopologyOptions opts) {
  Wrap wx = Wrap::Unspecified, wy = Wrap::Unspecified;
  if (kind == "cylinder") {
    wy = opts.edge;
  } else if (kind == "plane") {
    wx = wy = opts.edge;
  } else if ((kind == "sphere" || kind == "torus") && opts.edge != Wrap::Unspecified) {
    throw Error("topology \"" + std::string(kind) + "\": edge policy " + wrap_name(opts.edge) +
                " set, but only a cylinder or a plane has edges");
  }
  return from_wire(kind, wx, wy, opts.radius, opts.minor_radius, width, height);
}

Topology Topology::from_wire(std::string_view kind, Wrap wx, Wrap wy, double radius, double minor_radius,
                             int64_t width, int64_t height) {
  check_size(kind, width, height);
  double r = check_length(kind, "radius", radius);
  const double w = static_cast<double>(width), h = static_cast<double>(height);
  Topology t;
  if (kind == "sphere") {
    want_wraps(kind, wx, wy, {Wrap::Repeat}, {Wrap::Pole});
    t.kind_ = Kind::Sphere;
    t.grid_ = Grid(width, height, Wrap::Repeat, Wrap::Pole);
    t.r_ = or_default(r, kEarthRadius);
  } else if (kind == "cylinder") {
    want_wraps(kind, wx, wy, {Wrap::Repeat}, {Wrap::Clamp, Wrap::Reflect});
    r = or_default(r, w / (2 * kPi));
    t.kind_ = Kind::Cylinder;
    t.grid_ = Grid(width, height, Wrap::Repeat, or_default(wy, Wrap::Clamp));
    t.r_ = r;
    t.len_ = h * 2 * kPi * r / w;
  } else if (kind == "torus") {
    want_wraps(kind, wx, wy, {Wrap::Repeat}, {Wrap::Repeat});
    const double mr = check_length(kind, "minor radius", minor_radius);
    t.kind_ = Kind::Torus;
    t.grid_ = Grid(width, height, Wrap::Repeat, Wrap::Repeat);
    t.r_ = or_default(r, w / (2 * kPi));
    t.minor_ = or_default(mr, h / (2 * kPi));
  } else {
    want_wraps(kind, wx, wy, {Wrap::Clamp, Wrap::Reflect}, {Wrap::Clamp, Wrap::Reflect});
    t.kind_ = Kind::Plane;
    t.grid_ = Grid(width, height, or_default(wx, Wrap::Clamp), or_default(wy, Wrap::Clamp));
    t.ex_ = w;
    t.ey_ = h;
  }
  return t;
}

const char* Topology::kind_name() const {
  switch (kind_) {
    case Kind::Sphere: return "sphere";
    case Kind::Cylinder: return "cylinder";
    case Kind::Torus: return "torus";
    case Kind::Plane: return "plane";
  }
  return "unknown";
}

std::pair<double, double> Topology::cell_size() const {
  const double w = static_cast<double>(width()), h = static_cast<double>(height());
  switch (kind_) {
    case Kind::Cylinder: return {2 * kPi * r_ / w, len_ / h};
    case Kind::Torus: return {2 * kPi * r_ / w, 2 * kPi * minor_ / h};
    case Kind::Plane: return {ex_ / w, ey_ / h};
    case Kind::Sphere: break;
  }
  return {0, 0};
}

double Topology::row_area(int64_t y) const {
  if (kind_ == Kind::Sphere) {
    const double h = static_cast<double>(height());
    const double phi = (0.5 - (static_cast<double>(y) + 0.5) / h) * kPi;
    return r_ * r_ * (2 * kPi / static_cast<double>(width())) * 2 * std::cos(phi) * std::sin(kPi / (2 * h));
  }
  const auto [cw, ch] = cell_size();
  return cw * ch;
}

double Topology::cell_area(int64_t i) const { return row_area(i / width()); }

double Topology::area() const {
  switch (kind_) {
    case Kind::Sphere: return 4 * kPi * r_ * r_;
    case Kind::Cylinder: return 2 * kPi * r_ * len_;
    case Kind::Torus: return 4 * kPi * kPi * r_ * minor_;
    case Kind::Plane: return ex_ * ey_;
  }
  return 0;
}

double Topology::distance(int64_t a, int64_t b) const {
  const Cell ca = grid_.xy(a), cb = grid_.xy(b);
  return distance_at(static_cast<double>(ca.x) + 0.5, static_cast<double>(ca.y) + 0.5,
                     static_cast<double>(cb.x) + 0.5, static_cast<double>(cb.y) + 0.5);
}

double Topology::distance_at(double fx1, double fy1, double fx2, double fy2) const {
  switch (kind_) {
    case Kind::Sphere: {
      const LonLat a = lon_lat_at(fx1, fy1), b = lon_lat_at(fx2, fy2);
      const auto p = unit_vector(a.lon, a.lat), q = unit_vector(b.lon, b.lat);
      const double cx = p[1] * q[2] - p[2] * q[1];
      const double cy = p[2] * q[0] - p[0] * q[2];
      const double cz = p[0] * q[1] - p[1] * q[0];
      return r_ * std::atan2(std::sqrt(cx * cx + cy * cy + cz * cz), p[0] * q[0] + p[1] * q[1] + p[2] * q[2]);
    }
    case Kind::Cylinder: {
      const auto [cw, ch] = cell_size();
      return std::hypot(wrapped(fx1 - fx2, static_cast<double>(width())) * cw, (fy1 - fy2) * ch);
    }
    case Kind::Torus: {
      const auto [cw, ch] = cell_size();
      return std::hypot(wrapped(fx1 - fx2, static_cast<double>(width())) * cw,
                        wrapped(fy1 - fy2, static_cast<double>(height())) * ch);
    }
    case Kind::Plane: {
      const auto [cw, ch] = cell_size();
      return std::hypot((fx1 - fx2) * cw, (fy1 - fy2) * ch);
    }
  }
  return 0;
}

int Topology::embed_dim() const {
  switch (kind_) {
    case Kind::Sphere:
    case Kind::Cylinder: return 3;
    case Kind::Torus: return 4;
    case Kind::Plane: return 2;
  }
  return 0;
}

std::array<double, 4> Topology::embed(double fx, double fy) const {
  const double w = static_cast<double>(width()), h = static_cast<double>(height());
  switch (kind_) {
    case Kind::Sphere: {
      const LonLat ll = lon_lat_at(fx, fy);
      const auto v = unit_vector(ll.lon, ll.lat);
      return {r_ * v[0], r_ * v[1], r_ * v[2], 0};
    }
    case Kind::Cylinder: {
      const double t = 2 * kPi * fx / w;
      return {r_ * std::cos(t), r_ * std::sin(t), len_ * (0.5 - fy / h), 0};
    }
    case Kind::Torus: {
      const double t = 2 * kPi * fx / w, p = 2 * kPi * fy / h;
      return {r_ * std::cos(t), r_ * std::sin(t), minor_ * std::cos(p), minor_ * std::sin(p)};
    }
    case Kind::Plane: {
      const auto [cw, ch] = cell_size();
      return {fx * cw, fy * ch, 0, 0};
    }
  }
  return {0, 0, 0, 0};
}

Topology Topology::with_size(int64_t width, int64_t height) const {
  check_size(kind_name(), width, height);
  Topology t = *this;
  t.grid_ = Grid(width, height, grid_.wrap_x(), grid_.wrap_y());
  return t;
}

void Topology::need_sphere(const char* what) const {
  if (kind_ != Kind::Sphere) throw Error(std::string("topology ") + kind_name() + ": " + what + " needs a sphere");
}

LonLat Topology::lon_lat(int64_t x, int64_t y) const {
  return lon_lat_at(static_cast<double>(x) + 0.5, static_cast<double>(y) + 0.5);
}

LonLat Topology::lon_lat_at(double fx, double fy) const {
  need_sphere("lon_lat");
  return {-180 + 360 * fx / static_cast<double>(width()), 90 - 180 * fy / static_cast<double>(height())};
}

std::pair<double, double> Topology::grid_at(double lon, double lat) const {
  need_sphere("grid_at");
  const double w = static_cast<double>(width());
  double fx = std::fmod((lon + 180) / 360 * w, w);
  if (fx < 0) fx += w;
  if (fx >= w) fx = 0;  // -tiny + w rounds to w
  return {fx, (90 - lat) / 180 * static_cast<double>(height())};
}

Cell Topology::cell_of(double lon, double lat) const {
  const auto [fx, fy] = grid_at(lon, lat);
  return {std::min(static_cast<int64_t>(std::floor(fx)), width() - 1),
          std::min(std::max(static_cast<int64_t>(std::floor(fy)), int64_t{0}), height() - 1)};
}

// --- Pyramid --------------------------------------------------------------------------

std::pair<int64_t, int64_t> next_size(std::string_view kind, int64_t width, int64_t height) {
  int64_t w = (width + 1) / 2, h = (height + 1) / 2;
  if (kind == "sphere") w += w % 2;
  return {w, h};
}

int max_levels(std::string_view kind, int64_t width, int64_t height) {
  int n = 0;
  for (;;) {
    const auto [w, h] = next_size(kind, width, height);
    if (w >= width || h >= height) return n;
    width = w;
    height = h;
    ++n;
  }
}

std::vector<Level> levels(std::string_view kind, int64_t width, int64_t height, int n) {
  check_size(kind, width, height);
  const int m = max_levels(kind, width, height);
  if (n < 0 || n > m) {
    throw Error("topology " + std::string(kind) + ": " + std::to_string(n) + " pyramid levels requested for a " +
                std::to_string(width) + "×" + std::to_string(height) + " grid: want 0.." + std::to_string(m) +
                " (each level halves both dimensions, and both must still shrink)");
  }
  std::vector<Level> out(static_cast<size_t>(n) + 1);
  out[0] = Level{0, width, height};
  for (int i = 1; i <= n; ++i) {
    const auto [w, h] = next_size(kind, out[i - 1].width, out[i - 1].height);
    out[i] = Level{i, w, h};
  }
  return out;
}

namespace {
int64_t parent_axis(int64_t x, int64_t n, int64_t m) { return (2 * x + 1) * m / (2 * n); }

// [lo, hi): the fine x with parent_axis(x) == p.
std::pair<int64_t, int64_t> children_axis(int64_t p, int64_t n, int64_t m) {
  auto first = [&](int64_t q) { return std::max<int64_t>(0, (2 * n * q - m + 2 * m - 1) / (2 * m)); };
  return {first(p), std::min(n, first(p + 1))};
}
}  // namespace

Cell parent(const Level& fine, const Level& coarse, int64_t x, int64_t y) {
  return {parent_axis(x, fine.width, coarse.width), parent_axis(y, fine.height, coarse.height)};
}

int64_t parent_index(const Level& fine, const Level& coarse, int64_t i) {
  const Cell p = parent(fine, coarse, i % fine.width, i / fine.width);
  return p.y * coarse.width + p.x;
}

CellRange children(const Level& fine, const Level& coarse, int64_t px, int64_t py) {
  const auto [x0, x1] = children_axis(px, fine.width, coarse.width);
  const auto [y0, y1] = children_axis(py, fine.height, coarse.height);
  return {x0, y0, x1, y1};
}

std::vector<int64_t> child_indices(const Level& fine, const Level& coarse, int64_t j) {
  const CellRange r = children(fine, coarse, j % coarse.width, j / coarse.width);
  std::vector<int64_t> out;
  for (int64_t y = r.y0; y < r.y1; ++y) {
    for (int64_t x = r.x0; x < r.x1; ++x) out.push_back(y * fine.width + x);
  }
  return out;
}

}  // namespace pipehost
