// Internal: memfd segments, mappings and the fd channel (docs/protocol.md,
// "Data plane"). Mirrors package shm of the Go implementation.
#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace pipehost::detail {

// hex renders a token or id as the messages about it do, e.g. "0x1f".
std::string hex(uint64_t v);

// now_ns is CLOCK_MONOTONIC in nanoseconds, the clock the host uses too.
int64_t now_ns();

// UniqueFd owns a file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// seal_string renders a seal set, e.g. "shrink,grow,write".
std::string seal_string(int seals);

// Segment is one memfd; it owns its fd.
class Segment {
 public:
  // create makes a sealable memfd of size bytes with its size sealed
  // (F_SEAL_SHRINK|F_SEAL_GROW), close-on-exec and, where the kernel knows
  // it, MFD_NOEXEC_SEAL. Throws Error.
  static Segment create(const std::string& name, uint64_t size);
  // create_growable makes an empty sealable memfd whose size is not sealed
  // yet: write to it, then seal_size().
  static Segment create_growable(const std::string& name);
  // open adopts a received fd: a regular file (memfd) that carries
  // F_SEAL_SHRINK|F_SEAL_GROW. Throws Error; the fd is closed either way.
  static Segment open(UniqueFd fd);

  int fd() const { return fd_.get(); }
  uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }
  int seals() const;
  bool write_sealed() const;
  // seal_size re-reads the size and adds F_SEAL_SHRINK|F_SEAL_GROW.
  void seal_size();
  // seal_write adds F_SEAL_WRITE|F_SEAL_SEAL (the host's step; tests use it).
  // Throws Error; EBUSY means a writable mapping still exists.
  void seal_write();

 private:
  Segment(UniqueFd fd, uint64_t size, std::string name) : fd_(std::move(fd)), size_(size), name_(std::move(name)) {}
  UniqueFd fd_;
  uint64_t size_ = 0;
  std::string name_;
};

// Mapping is a shared mapping of a whole segment, unmapped on destruction.
class Mapping {
 public:
  // map_rw maps writable (for the producer); refuses a write-sealed segment.
  static Mapping map_rw(const Segment& seg);
  // map_ro maps read-only (for consumers); refuses a segment without
  // F_SEAL_WRITE: only the seal makes the bytes immutable.
  static Mapping map_ro(const Segment& seg);

  Mapping() = default;
  Mapping(Mapping&& o) noexcept;
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  bool writable() const { return writable_; }
  bool mapped() const { return data_ != nullptr; }
  // unmap releases the mapping now; throws Error if munmap fails.
  void unmap();

 private:
  Mapping(uint8_t* data, uint64_t size, bool writable) : data_(data), size_(size), writable_(writable) {}
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  bool writable_ = false;
};

// huge_pages_enabled reports whether shmem transparent huge pages are
// allowed (read once).
bool huge_pages_enabled();
// shmem_thp_allows parses the shmem_enabled file ("always [never] ...").
bool shmem_thp_allows(const std::string& contents);

// --- fd channel -------------------------------------------------------------------

inline constexpr uint32_t kMagic = 0x44464850;  // "PHFD" little-endian
inline constexpr uint16_t kVersion = 1;
inline constexpr size_t kHeaderSize = 32;
inline constexpr uint64_t kPluginTokenBit = uint64_t{1} << 63;
inline constexpr int kMaxFds = 16;
inline constexpr const char* kEnvFdChannel = "PIPEHOST_FD_CHANNEL";
// kMaxFrame is the most payload bytes one datagram carries after its
// header: far below any socket buffer, so a send never fails for size.
inline constexpr size_t kMaxFrame = 32 << 10;
// kMaxPayload bounds a whole payload (a RunRequest or a RunEvent).
inline constexpr uint64_t kMaxPayload = uint64_t{64} << 20;

// Types 4 to 7 carry runs on the channel (docs/protocol.md, "Runs on the
// fd channel"); a receiver that takes no runs rejects them.
enum class MsgType : uint16_t { Segment = 1, Adopt = 2, Close = 3, Run = 4, Event = 5, End = 6, Cancel = 7 };
const char* msg_type_name(uint16_t t);
bool carries_fd(MsgType t);
bool carries_payload(MsgType t);

// Message is a decoded header. For one frame of a RUN, EVENT or END
// payload, segment_id is the whole payload's length and size the bytes the
// frame carries; a message received whole has size 0.
struct Message {
  MsgType type = MsgType::Close;
  uint64_t token = 0;
  uint64_t segment_id = 0;
  uint64_t size = 0;
};

std::array<uint8_t, kHeaderSize> encode_header(const Message& m);
// decode_header checks length, magic, version, type and token space; on
// error it returns false and says why. With runs, types 4 to 7 are known
// too, n is the whole datagram (a header and a frame) and the payload
// fields are checked against kMaxFrame and kMaxPayload.
bool decode_header(const uint8_t* b, size_t n, Message& out, std::string& why, bool runs = false);
// check_token: "" when the token is in its type's space (and, for the
// types of runs, the payload fields are within bounds).
std::string check_token(const Message& m);

// next_plugin_token is 2^63+1, 2^63+2, ... for ADOPT messages.
uint64_t next_plugin_token();

// Outgoing is one message of a batch: a base message with its fd (-1 for
// none), or a RUN, EVENT or END with its payload (which must outlive the
// send).
struct Outgoing {
  Message msg;
  int fd = -1;
  std::string_view payload;
};

class FdChannel {
 public:
  explicit FdChannel(UniqueFd fd) : fd_(std::move(fd)) {}
  // from_env opens the fd named by PIPEHOST_FD_CHANNEL: checks it is a
  // SOCK_SEQPACKET socket, sets FD_CLOEXEC and unsets the variable. Throws
  // Error with a sentence for the user.
  static std::unique_ptr<FdChannel> from_env();

  // send writes one message; fd must be >= 0 for SEGMENT and ADOPT and -1
  // otherwise. The caller keeps its fd. Throws Error.
  void send(const Message& m, int fd);
  // send_payload writes a RUN, EVENT or END: the payload cut into frames
  // of at most kMaxFrame bytes, sent back to back. Throws Error.
  void send_payload(MsgType t, uint64_t token, std::string_view payload);
  // send_batch writes every message of batch with sendmmsg(2), in order and
  // with nothing else this side sends in between: the peer sees the same
  // datagrams as from one send each, but wakes once for all of them.
  // Throws Error.
  void send_batch(const std::vector<Outgoing>& batch);

  enum class Status { Ok, Eof, Protocol, Error };
  struct Received {
    Status status = Status::Error;
    Message msg;
    UniqueFd fd;
    std::string payload;  // a RUN, EVENT or END's, whole
    std::string error;
  };
  // recv reads one message. With runs, a RUN, EVENT or END comes whole, its
  // frames joined into payload. A malformed message is Status::Protocol and
  // every fd it carried is closed.
  Received recv(bool runs = false);

  int fd() const { return fd_.get(); }

 private:
  struct Frame {
    Status status = Status::Error;
    Message msg;
    UniqueFd fd;
    std::string error;
  };
  // recv_frame reads one datagram; a frame's bytes are left in recv_buf_.
  Frame recv_frame(bool runs);

  UniqueFd fd_;
  std::mutex send_mu_;
  // recv_mu_ keeps one reader at a time: a payload's frames are joined in
  // order in one buffer.
  std::mutex recv_mu_;
  std::vector<uint8_t> recv_buf_;
};

// Mailbox reads a channel on a background thread and files each received
// fd under its token until take() claims it. When the channel ends (CLOSE,
// EOF, a protocol violation) it calls on_end once from the reader thread; a
// plugin exits there.
class Mailbox {
 public:
  enum class End { None, Closed, Eof, Protocol, Error };
  using OnEnd = std::function<void(End, const std::string&)>;
  // Route takes a RUN, EVENT, END or CANCEL message, with its payload, on
  // the reader thread; it must not block. A non-empty result is a protocol
  // violation, and ends the channel.
  using Route = std::function<std::string(const Message&, std::string&&)>;

  Mailbox(FdChannel& ch, OnEnd on_end);
  ~Mailbox();
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  // route hands every message of runs to f from now on; until then each is
  // a protocol violation.
  void route(Route f);
  // take waits up to timeout for the fd sent under token and hands it over.
  // Throws Error on timeout or when the channel ended first.
  std::pair<Message, UniqueFd> take(uint64_t token, std::chrono::milliseconds timeout);
  // discard closes the fds filed under tokens that a run will not take.
  void discard(const std::vector<uint64_t>& tokens);
  End ended() const;

 private:
  void loop();
  void finish(End why, const std::string& msg);

  FdChannel& ch_;
  OnEnd on_end_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, std::pair<Message, UniqueFd>> pending_;
  std::shared_ptr<const Route> route_;
  End end_ = End::None;
  std::string err_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace pipehost::detail
