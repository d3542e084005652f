#include "shm.hpp"

#include <errno.h>
#include <fcntl.h>
#include <linux/memfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <sstream>
#include <vector>

#include "pipehost/error.hpp"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

namespace pipehost::detail {

namespace {

constexpr int kSizeSeals = F_SEAL_SHRINK | F_SEAL_GROW;

std::string errstr(int e) { return std::string(strerror(e)); }

int memfd(const std::string& name) {
  std::string n = name.substr(0, 249);
  if (n.empty() || n.find('\0') != std::string::npos) n = "pipehost";
  const unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  int fd = static_cast<int>(::syscall(SYS_memfd_create, n.c_str(), flags | MFD_NOEXEC_SEAL));
  if (fd < 0 && errno == EINVAL) {
    // Kernels before 6.3 do not know MFD_NOEXEC_SEAL.
    fd = static_cast<int>(::syscall(SYS_memfd_create, n.c_str(), flags));
  }
  if (fd < 0) throw Error("create segment \"" + name + "\": memfd_create: " + errstr(errno));
  return fd;
}

void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

std::string hex(uint64_t v) {
  std::ostringstream o;
  o << "0x" << std::hex << v;
  return o.str();
}

int64_t now_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

std::string seal_string(int seals) {
  static const std::pair<int, const char*> names[] = {
      {F_SEAL_SEAL, "seal"},   {F_SEAL_SHRINK, "shrink"},           {F_SEAL_GROW, "grow"},
      {F_SEAL_WRITE, "write"}, {F_SEAL_FUTURE_WRITE, "future-write"}, {F_SEAL_EXEC, "exec"}};
  std::string out;
  for (const auto& [bit, name] : names) {
    if (seals & bit) {
      if (!out.empty()) out += ',';
      out += name;
      seals &= ~bit;
    }
  }
  if (seals != 0) {
    if (!out.empty()) out += ',';
    out += hex(static_cast<uint64_t>(seals));
  }
  return out.empty() ? "none" : out;
}

// --- Segment ---------------------------------------------------------------------------

Segment Segment::create(const std::string& name, uint64_t size) {
  if (size > static_cast<uint64_t>(INT64_MAX)) throw Error("create segment \"" + name + "\": size too large");
  UniqueFd fd(memfd(name));
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    throw Error("create segment \"" + name + "\": ftruncate to " + std::to_string(size) + " bytes: " + errstr(errno));
  }
  if (::fcntl(fd.get(), F_ADD_SEALS, kSizeSeals) != 0) {
    throw Error("create segment \"" + name + "\": sealing its size: " + errstr(errno));
  }
  return Segment(std::move(fd), size, name);
}

Segment Segment::create_growable(const std::string& name) { return Segment(UniqueFd(memfd(name)), 0, name); }

Segment Segment::open(UniqueFd fd) {
  const std::string what = "open segment fd " + std::to_string(fd.get());
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw Error(what + ": fstat: " + errstr(errno));
  if (!S_ISREG(st.st_mode)) throw Error(what + ": not a memfd (not a regular file)");
  const int seals = ::fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0) throw Error(what + ": not a sealable memfd (F_GET_SEALS: " + errstr(errno) + ")");
  if ((seals & kSizeSeals) != kSizeSeals) {
    throw Error(what + ": size is not sealed (seals " + seal_string(seals) + "; need shrink,grow)");
  }
  std::string name = "fd " + std::to_string(fd.get());
  char link[512];
  const std::string proc = "/proc/self/fd/" + std::to_string(fd.get());
  const ssize_t n = ::readlink(proc.c_str(), link, sizeof link - 1);
  if (n > 0) {
    std::string l(link, static_cast<size_t>(n));
    if (l.rfind("/memfd:", 0) == 0) {
      l = l.substr(7);
      const std::string del = " (deleted)";
      if (l.size() >= del.size() && l.compare(l.size() - del.size(), del.size(), del) == 0) {
        l.resize(l.size() - del.size());
      }
      name = l;
    }
  }
  return Segment(std::move(fd), static_cast<uint64_t>(st.st_size), name);
}

int Segment::seals() const {
  const int s = ::fcntl(fd_.get(), F_GET_SEALS);
  if (s < 0) throw Error("segment \"" + name_ + "\": F_GET_SEALS: " + errstr(errno));
  return s;
}

bool Segment::write_sealed() const { return (seals() & F_SEAL_WRITE) != 0; }

void Segment::seal_size() {
  struct stat st;
  if (::fstat(fd_.get(), &st) != 0) throw Error("segment \"" + name_ + "\": fstat: " + errstr(errno));
  if (::fcntl(fd_.get(), F_ADD_SEALS, kSizeSeals) != 0) {
    throw Error("segment \"" + name_ + "\": sealing its size: " + errstr(errno));
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

void Segment::seal_write() {
  const int s = seals();
  if (s & F_SEAL_WRITE) return;
  if (s & F_SEAL_SEAL) {
    throw Error("seal segment \"" + name_ + "\": its seals are frozen without F_SEAL_WRITE (seals " + seal_string(s) +
                ")");
  }
  if (::fcntl(fd_.get(), F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    const int e = errno;
    if (e == EBUSY) {
      throw Error("seal segment \"" + name_ + "\": a writable shared mapping of the segment still exists");
    }
    throw Error("seal segment \"" + name_ + "\": F_ADD_SEALS: " + errstr(e));
  }
}

// --- Mapping ---------------------------------------------------------------------------

bool shmem_thp_allows(const std::string& s) {
  const auto open = s.find('[');
  if (open == std::string::npos) return false;
  const auto close = s.find(']', open);
  if (close == std::string::npos) return false;
  const std::string mode = s.substr(open + 1, close - open - 1);
  return mode == "always" || mode == "within_size" || mode == "advise" || mode == "force";
}

bool huge_pages_enabled() {
  static const bool enabled = [] {
    std::ifstream f("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    std::stringstream ss;
    ss << f.rdbuf();
    return shmem_thp_allows(ss.str());
  }();
  return enabled;
}

namespace {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14
#endif

// The smallest writable mapping populated: a smaller one takes few page faults.
constexpr uint64_t kPopulateMin = 1 << 20;

// Makes every page of a fresh writable mapping present now: fallocate for
// the pages the segment lacks (none when the host prefaulted it, which fstat
// tells), then madvise(MADV_POPULATE_WRITE), instead of a page fault per 4 KiB
// page as the stage first writes each (as the Go SDK's shm.Mapping.Populate).
// Best effort: an older kernel, or memory too short, leaves it to the faults.
void populate(int fd, void* p, uint64_t size) {
  struct stat st;
  if (::fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_blocks) * 512 < size) {
    (void)::fallocate(fd, 0, 0, static_cast<off_t>(size));
  }
  (void)::madvise(p, size, MADV_POPULATE_WRITE);
}

}  // namespace

Mapping Mapping::map_rw(const Segment& seg) {
  if (seg.write_sealed()) {
    throw Error("map segment \"" + seg.name() + "\" read-write: it is write-sealed; map it read-only");
  }
  if (seg.size() == 0) return Mapping(nullptr, 0, true);
  void* p = ::mmap(nullptr, seg.size(), PROT_READ | PROT_WRITE, MAP_SHARED, seg.fd(), 0);
  if (p == MAP_FAILED) {
    throw Error("map segment \"" + seg.name() + "\" read-write (" + std::to_string(seg.size()) +
                " bytes): " + errstr(errno));
  }
  if (huge_pages_enabled()) ::madvise(p, seg.size(), MADV_HUGEPAGE);  // advice only
  if (seg.size() >= kPopulateMin) populate(seg.fd(), p, seg.size());
  return Mapping(static_cast<uint8_t*>(p), seg.size(), true);
}

Mapping Mapping::map_ro(const Segment& seg) {
  const int s = seg.seals();
  // Only F_SEAL_WRITE makes the bytes immutable for every process.
  if (!(s & F_SEAL_WRITE)) {
    throw Error("map segment \"" + seg.name() + "\" read-only: segment is not write-sealed (seals " + seal_string(s) +
                ")");
  }
  if (seg.size() == 0) return Mapping(nullptr, 0, false);
  void* p = ::mmap(nullptr, seg.size(), PROT_READ, MAP_SHARED, seg.fd(), 0);
  if (p == MAP_FAILED) {
    throw Error("map segment \"" + seg.name() + "\" read-only (" + std::to_string(seg.size()) + " bytes): " +
                errstr(errno));
  }
  return Mapping(static_cast<uint8_t*>(p), seg.size(), false);
}

Mapping::Mapping(Mapping&& o) noexcept : data_(o.data_), size_(o.size_), writable_(o.writable_) {
  o.data_ = nullptr;
  o.size_ = 0;
}

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    if (data_) ::munmap(data_, size_);
    data_ = o.data_;
    size_ = o.size_;
    writable_ = o.writable_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

Mapping::~Mapping() {
  if (data_) ::munmap(data_, size_);
}

void Mapping::unmap() {
  if (!data_) return;
  uint8_t* p = data_;
  data_ = nullptr;
  if (::munmap(p, size_) != 0) throw Error("unmap segment: " + errstr(errno));
}

// --- fd channel --------------------------------------------------------------------------

const char* msg_type_name(uint16_t t) {
  switch (t) {
    case 1: return "SEGMENT";
    case 2: return "ADOPT";
    case 3: return "CLOSE";
    case 4: return "RUN";
    case 5: return "EVENT";
    case 6: return "END";
    case 7: return "CANCEL";
  }
  return "unknown";
}

bool carries_fd(MsgType t) { return t == MsgType::Segment || t == MsgType::Adopt; }

bool carries_payload(MsgType t) { return t == MsgType::Run || t == MsgType::Event || t == MsgType::End; }

std::array<uint8_t, kHeaderSize> encode_header(const Message& m) {
  std::array<uint8_t, kHeaderSize> b{};
  put32(&b[0], kMagic);
  put16(&b[4], kVersion);
  put16(&b[6], static_cast<uint16_t>(m.type));
  put64(&b[8], m.token);
  put64(&b[16], m.segment_id);
  put64(&b[24], m.size);
  return b;
}

std::string check_token(const Message& m) {
  const std::string name = msg_type_name(static_cast<uint16_t>(m.type));
  switch (m.type) {
    case MsgType::Segment:
      if (m.token == 0 || (m.token & kPluginTokenBit)) {
        return "SEGMENT token " + hex(m.token) + " is not a host token (1 ≤ token < 2^63)";
      }
      return "";
    case MsgType::Adopt:
      if (!(m.token & kPluginTokenBit)) return "ADOPT token " + hex(m.token) + " is not a plugin token (top bit set)";
      return "";
    case MsgType::Close: return "";
    case MsgType::Run:
    case MsgType::Event:
    case MsgType::End:
    case MsgType::Cancel: break;
  }
  if (m.type != MsgType::Run && m.type != MsgType::Event && m.type != MsgType::End && m.type != MsgType::Cancel) {
    return "unknown message type " + std::to_string(static_cast<uint16_t>(m.type));
  }
  // The host numbers runs in its own token space, so a run's token never
  // names an fd of the other direction.
  if (m.token == 0 || (m.token & kPluginTokenBit)) {
    return name + " token " + hex(m.token) + " is not a run token (a host token, 1 ≤ token < 2^63)";
  }
  if (m.type == MsgType::Cancel) {
    if (m.segment_id != 0 || m.size != 0) {
      return "CANCEL message for token " + hex(m.token) + " has total " + std::to_string(m.segment_id) + " and size " +
             std::to_string(m.size) + ", want 0 and 0";
    }
    return "";
  }
  const std::string frame = name + " frame for token " + hex(m.token);
  if (m.segment_id > kMaxPayload) {
    return name + " payload for token " + hex(m.token) + " is " + std::to_string(m.segment_id) +
           " bytes, more than the limit of " + std::to_string(kMaxPayload);
  }
  if (m.size > kMaxFrame) {
    return frame + " says it carries " + std::to_string(m.size) + " bytes, more than a frame's " +
           std::to_string(kMaxFrame);
  }
  if (m.size > m.segment_id) {
    return frame + " carries " + std::to_string(m.size) + " bytes, but only " + std::to_string(m.segment_id) +
           " of its " + std::to_string(m.segment_id) + "-byte payload are missing";
  }
  if (m.size == 0 && m.segment_id > 0) {
    return frame + " is empty, but its " + std::to_string(m.segment_id) + "-byte payload is not";
  }
  return "";
}

bool decode_header(const uint8_t* b, size_t n, Message& out, std::string& why, bool runs) {
  // Without runs every message is exactly a header; with them a frame may
  // follow it, and its length is checked once the header says how long.
  if (runs ? n < kHeaderSize : n != kHeaderSize) {
    why = "message is " + std::to_string(n) + " bytes, want 32";
    return false;
  }
  if (const uint32_t mg = get32(b); mg != kMagic) {
    why = "bad magic " + hex(mg) + ", want 0x44464850 (\"PHFD\")";
    return false;
  }
  if (const uint16_t v = get16(b + 4); v != kVersion) {
    why = "header version " + std::to_string(v) + ", this side speaks 1";
    return false;
  }
  const uint16_t t = get16(b + 6);
  if (t < 1 || t > (runs ? 7 : 3)) {
    why = "unknown message type " + std::to_string(t);
    return false;
  }
  Message m;
  m.type = static_cast<MsgType>(t);
  m.token = get64(b + 8);
  m.segment_id = get64(b + 16);
  m.size = get64(b + 24);
  why = check_token(m);
  if (!why.empty()) return false;
  if (runs) {
    const char* name = msg_type_name(t);
    if (carries_payload(m.type) && n != kHeaderSize + m.size) {
      why = std::string(name) + " frame for token " + hex(m.token) + " is " + std::to_string(n) +
            " bytes, want 32 + its size " + std::to_string(m.size);
      return false;
    }
    if (!carries_payload(m.type) && n != kHeaderSize) {
      why = std::string(name) + " message is " + std::to_string(n) + " bytes, want 32";
      return false;
    }
  }
  out = m;
  return true;
}

uint64_t next_plugin_token() {
  static std::atomic<uint64_t> counter{0};
  return kPluginTokenBit | (counter.fetch_add(1) + 1);
}

std::unique_ptr<FdChannel> FdChannel::from_env() {
  const char* v = ::getenv(kEnvFdChannel);
  if (v == nullptr) {
    throw Error(std::string("fd channel: ") + kEnvFdChannel +
                " is not set; this program is a pipehost plugin and must be started by pipehost");
  }
  char* end = nullptr;
  errno = 0;
  const long fd = ::strtol(v, &end, 10);
  if (*v == '\0' || *end != '\0' || errno != 0 || fd < 0 || fd > INT32_MAX) {
    throw Error(std::string("fd channel: ") + kEnvFdChannel + "=\"" + v + "\" is not an fd number");
  }
  int type = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
    throw Error("fd channel: fd " + std::to_string(fd) + " from " + kEnvFdChannel + " is not a socket: " +
                errstr(errno));
  }
  if (type != SOCK_SEQPACKET) {
    throw Error("fd channel: fd " + std::to_string(fd) + " from " + kEnvFdChannel + " is a socket of type " +
                std::to_string(type) + ", want SOCK_SEQPACKET");
  }
  ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
  const int fl = ::fcntl(static_cast<int>(fd), F_GETFL);
  if (fl >= 0 && (fl & O_NONBLOCK)) ::fcntl(static_cast<int>(fd), F_SETFL, fl & ~O_NONBLOCK);
  ::unsetenv(kEnvFdChannel);
  return std::make_unique<FdChannel>(UniqueFd(static_cast<int>(fd)));
}

namespace {

// Datagram is one record on the wire: a header, the bytes of one frame of a
// payload, and at most one fd.
struct Datagram {
  std::array<uint8_t, kHeaderSize> hdr;
  std::string_view body;
  int fd = -1;
};

// layout checks o as every receiver would and cuts it into datagrams: one
// for a base message or CANCEL, one per frame (at least one) for a payload.
void layout(const Outgoing& o, std::vector<Datagram>& out) {
  const Message& m = o.msg;
  const std::string name = msg_type_name(static_cast<uint16_t>(m.type));
  if (carries_payload(m.type)) {
    if (o.fd >= 0) throw Error("fd channel: a " + name + " message must not carry an fd");
    const uint64_t total = o.payload.size();
    Message first{m.type, m.token, total, std::min<uint64_t>(total, kMaxFrame)};
    if (const std::string bad = check_token(first); !bad.empty()) throw Error("fd channel: " + bad);
    size_t off = 0;
    do {
      const size_t n = std::min<size_t>(o.payload.size() - off, kMaxFrame);
      out.push_back(Datagram{encode_header(Message{m.type, m.token, total, n}), o.payload.substr(off, n), -1});
      off += n;
    } while (off < o.payload.size());
    return;
  }
  if (!o.payload.empty()) throw Error("fd channel: a " + name + " message carries no payload");
  if (const std::string bad = check_token(m); !bad.empty()) throw Error("fd channel: " + bad);
  if (carries_fd(m.type) != (o.fd >= 0)) {
    throw Error("fd channel: " + name + (o.fd >= 0 ? " message must not carry an fd" : " message needs an fd"));
  }
  out.push_back(Datagram{encode_header(m), {}, o.fd});
}

// Control is room for one SCM_RIGHTS fd, aligned as the kernel wants it.
union Control {
  char buf[CMSG_SPACE(sizeof(int))];
  struct cmsghdr align;
};

}  // namespace

void FdChannel::send(const Message& m, int fd) {
  if (carries_payload(m.type)) {
    throw Error(std::string("fd channel: a ") + msg_type_name(static_cast<uint16_t>(m.type)) +
                " message is sent with send_payload");
  }
  send_batch({Outgoing{m, fd, {}}});
}

void FdChannel::send_payload(MsgType t, uint64_t token, std::string_view payload) {
  if (!carries_payload(t)) {
    throw Error(std::string("fd channel: a ") + msg_type_name(static_cast<uint16_t>(t)) + " message has no payload");
  }
  send_batch({Outgoing{Message{t, token, 0, 0}, -1, payload}});
}

void FdChannel::send_batch(const std::vector<Outgoing>& batch) {
  std::vector<Datagram> grams;
  for (const Outgoing& o : batch) layout(o, grams);
  if (grams.empty()) return;
  std::vector<struct iovec> iovs(grams.size() * 2);
  std::vector<Control> ctrl(grams.size());
  std::vector<struct mmsghdr> hdrs(grams.size());
  for (size_t i = 0; i < grams.size(); ++i) {
    Datagram& g = grams[i];
    struct msghdr& h = hdrs[i].msg_hdr;
    memset(&hdrs[i], 0, sizeof hdrs[i]);
    iovs[2 * i] = {g.hdr.data(), g.hdr.size()};
    iovs[2 * i + 1] = {const_cast<char*>(g.body.data()), g.body.size()};
    h.msg_iov = &iovs[2 * i];
    h.msg_iovlen = g.body.empty() ? 1 : 2;
    if (g.fd >= 0) {
      memset(&ctrl[i], 0, sizeof ctrl[i]);
      h.msg_control = ctrl[i].buf;
      h.msg_controllen = sizeof ctrl[i].buf;
      struct cmsghdr* c = CMSG_FIRSTHDR(&h);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(c), &g.fd, sizeof(int));
    }
  }
  const Message& first = batch.front().msg;
  const auto fail = [&](const std::string& why) {
    std::string what = std::string("fd channel: send ") + msg_type_name(static_cast<uint16_t>(first.type)) +
                       " token " + hex(first.token);
    if (batch.size() > 1) what += " and " + std::to_string(batch.size() - 1) + " more";
    return Error(what + ": " + why);
  };
  // One lock for the whole batch: the frames of a payload, and a Result
  // with its END, reach the peer with nothing of ours in between.
  std::lock_guard<std::mutex> lock(send_mu_);
  size_t sent = 0;
  while (sent < hdrs.size()) {
    // The kernel takes at most UIO_MAXIOV records a call; the loop sends the rest.
    const int n = ::sendmmsg(fd_.get(), &hdrs[sent], static_cast<unsigned>(hdrs.size() - sent), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw fail(errstr(errno));
    if (n == 0) throw fail("the socket took nothing");
    sent += static_cast<size_t>(n);
  }
}

FdChannel::Received FdChannel::recv(bool runs) {
  std::lock_guard<std::mutex> lock(recv_mu_);
  Received r;
  Frame f = recv_frame(runs);
  r.status = f.status;
  r.error = std::move(f.error);
  if (f.status != Status::Ok) return r;
  r.msg = f.msg;
  r.fd = std::move(f.fd);
  if (!carries_payload(f.msg.type)) return r;
  const Message first = f.msg;
  const std::string name = msg_type_name(static_cast<uint16_t>(first.type));
  r.payload.reserve(first.segment_id);
  r.payload.append(reinterpret_cast<const char*>(recv_buf_.data() + kHeaderSize), first.size);
  auto fail = [&](std::string why) {
    Received bad;
    bad.status = Status::Protocol;
    bad.error = "fd channel protocol violation: " + why;
    return bad;
  };
  while (r.payload.size() < first.segment_id) {
    const std::string incomplete = " while the " + std::to_string(first.segment_id) + "-byte " + name +
                                   " payload for token " + hex(first.token) + " is incomplete (" +
                                   std::to_string(r.payload.size()) + " bytes arrived)";
    Frame next = recv_frame(true);  // a rejected frame's fds are closed with it
    if (next.status == Status::Eof) {
      return fail("the channel ended inside the " + std::to_string(first.segment_id) + "-byte " + name +
                  " payload for token " + hex(first.token) + " (" + std::to_string(r.payload.size()) +
                  " bytes arrived)");
    }
    if (next.status != Status::Ok) {
      Received bad;
      bad.status = next.status;
      bad.error = std::move(next.error);
      return bad;
    }
    const Message& m = next.msg;
    const std::string mname = msg_type_name(static_cast<uint16_t>(m.type));
    if (m.type != first.type || m.token != first.token || m.segment_id != first.segment_id) {
      const std::string what = carries_payload(m.type) ? mname + " frame for token " + hex(m.token) + " of a " +
                                                             std::to_string(m.segment_id) + "-byte payload"
                                                       : mname + " message";
      return fail(what + incomplete);
    }
    const uint64_t missing = first.segment_id - r.payload.size();
    if (m.size > missing) {
      return fail(mname + " frame for token " + hex(m.token) + " carries " + std::to_string(m.size) +
                  " bytes, but only " + std::to_string(missing) + " of its " + std::to_string(first.segment_id) +
                  "-byte payload are missing");
    }
    r.payload.append(reinterpret_cast<const char*>(recv_buf_.data() + kHeaderSize), m.size);
  }
  r.msg.size = 0;
  return r;
}

FdChannel::Frame FdChannel::recv_frame(bool runs) {
  Frame f;
  // Room for one whole frame with runs; without them a 32-byte buffer, so
  // that anything longer comes with MSG_TRUNC.
  const size_t room = runs ? kHeaderSize + kMaxFrame : kHeaderSize;
  if (recv_buf_.size() < room) recv_buf_.resize(room);
  alignas(struct cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  struct iovec iov;
  iov.iov_base = recv_buf_.data();
  iov.iov_len = room;
  struct msghdr msg;
  ssize_t n;
  for (;;) {
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl;
    msg.msg_controllen = sizeof ctrl;
    n = ::recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC);
    if (n >= 0 || errno != EINTR) break;
  }
  if (n < 0) {
    f.status = Status::Error;
    f.error = "fd channel: receive: " + errstr(errno);
    return f;
  }
  // Collect every fd first, so that a rejected message leaks none.
  std::vector<UniqueFd> fds;
  bool odd_cmsg = false;
  if (msg.msg_controllen > 0) {
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
        odd_cmsg = true;
        continue;
      }
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.emplace_back(fd);
      }
    }
  }
  auto fail = [&](std::string why) {
    f.status = Status::Protocol;
    f.error = "fd channel protocol violation: " + why;
    return std::move(f);
  };
  if (n == 0 && msg.msg_controllen == 0 && !(msg.msg_flags & MSG_TRUNC)) {
    f.status = Status::Eof;
    return f;
  }
  if (odd_cmsg) return fail("unexpected control message");
  if (msg.msg_flags & MSG_CTRUNC) {
    return fail("control data truncated (more than 16 fds, or the fd limit is reached)");
  }
  if (msg.msg_flags & MSG_TRUNC) return fail("message longer than " + std::to_string(room) + " bytes");
  Message m;
  std::string why;
  if (!decode_header(recv_buf_.data(), static_cast<size_t>(n), m, why, runs)) return fail(why);
  const size_t want = carries_fd(m.type) ? 1 : 0;
  if (fds.size() != want) {
    return fail(std::string(msg_type_name(static_cast<uint16_t>(m.type))) + " message for token " + hex(m.token) +
                " carries " + std::to_string(fds.size()) + " fds, want " + std::to_string(want));
  }
  f.status = Status::Ok;
  f.msg = m;
  if (want == 1) f.fd = std::move(fds[0]);
  return f;
}

// --- Mailbox -------------------------------------------------------------------------------

Mailbox::Mailbox(FdChannel& ch, OnEnd on_end) : ch_(ch), on_end_(std::move(on_end)) {
  thread_ = std::thread([this] { loop(); });
}

Mailbox::~Mailbox() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  // Wakes the reader: its recvmsg returns 0.
  ::shutdown(ch_.fd(), SHUT_RD);
  if (thread_.joinable()) thread_.join();
}

void Mailbox::finish(End why, const std::string& msg) {
  bool call;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (end_ == End::None) {
      end_ = why;
      err_ = msg;
    }
    call = !stopping_;
  }
  cv_.notify_all();
  if (call && on_end_) on_end_(why, msg);
}

void Mailbox::route(Route f) {
  auto r = std::make_shared<const Route>(std::move(f));
  std::lock_guard<std::mutex> lock(mu_);
  route_ = std::move(r);
}

void Mailbox::loop() {
  for (;;) {
    FdChannel::Received r = ch_.recv(true);
    switch (r.status) {
      case FdChannel::Status::Eof: return finish(End::Eof, "fd channel: peer is gone (EOF)");
      case FdChannel::Status::Protocol: return finish(End::Protocol, r.error);
      case FdChannel::Status::Error: return finish(End::Error, r.error);
      case FdChannel::Status::Ok: break;
    }
    if (r.msg.type == MsgType::Close) return finish(End::Closed, "fd channel: peer closed the channel cleanly");
    if (!carries_fd(r.msg.type)) {
      std::shared_ptr<const Route> route;
      {
        std::lock_guard<std::mutex> lock(mu_);
        route = route_;
      }
      const std::string name = msg_type_name(static_cast<uint16_t>(r.msg.type));
      const std::string bad = route ? (*route)(r.msg, std::move(r.payload))
                                    : "a " + name + " message, and this side takes no runs on the channel";
      if (bad.empty()) continue;
      return finish(End::Protocol, "fd channel protocol violation: " + bad);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (pending_.count(r.msg.token) == 0) {
        pending_.emplace(r.msg.token, std::make_pair(r.msg, std::move(r.fd)));
        cv_.notify_all();
        continue;
      }
    }
    return finish(End::Protocol, "fd channel protocol violation: token " + hex(r.msg.token) + " received twice");
  }
}

void Mailbox::discard(const std::vector<uint64_t>& tokens) {
  std::vector<UniqueFd> drop;  // closed after the lock is let go
  std::lock_guard<std::mutex> lock(mu_);
  for (const uint64_t t : tokens) {
    auto it = pending_.find(t);
    if (it == pending_.end()) continue;
    drop.push_back(std::move(it->second.second));
    pending_.erase(it);
  }
}

std::pair<Message, UniqueFd> Mailbox::take(uint64_t token, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    auto it = pending_.find(token);
    if (it != pending_.end()) {
      auto out = std::move(it->second);
      pending_.erase(it);
      return out;
    }
    if (end_ != End::None) throw Error("fd channel: token " + hex(token) + " never arrived: " + err_);
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && pending_.count(token) == 0) {
      throw Error("fd channel: waiting for token " + hex(token) + ": no fd arrived within " +
                  std::to_string(timeout.count()) + " ms");
    }
  }
}

Mailbox::End Mailbox::ended() const {
  std::lock_guard<std::mutex> lock(mu_);
  return end_;
}

}  // namespace pipehost::detail
