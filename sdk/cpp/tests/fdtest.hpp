// Helpers for the tests that play the host on a real fd channel.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "shm.hpp"

namespace fdtest {

// Pair is a fresh fd channel: the host's end and the plugin's.
struct Pair {
  pipehost::detail::UniqueFd host, plugin;
  Pair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) throw std::runtime_error("socketpair");
    host.reset(fds[0]);
    plugin.reset(fds[1]);
  }
};

// send_raw sends len bytes with fds attached as SCM_RIGHTS: the test's own
// sender, free to break every rule of the protocol.
inline void send_raw(int sock, const void* data, size_t len, const std::vector<int>& fds) {
  struct iovec iov;
  iov.iov_base = const_cast<void*>(data);
  iov.iov_len = len;
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> ctrl(CMSG_SPACE(sizeof(int) * fds.size()));
  if (!fds.empty()) {
    msg.msg_control = ctrl.data();
    msg.msg_controllen = ctrl.size();
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ASSERT_EQ(::sendmsg(sock, &msg, MSG_NOSIGNAL), static_cast<ssize_t>(len)) << std::strerror(errno);
}

// send_raw sends data with nfds copies of fd.
inline void send_raw(int sock, const std::string& data, int fd, int nfds) {
  send_raw(sock, data.data(), data.size(), std::vector<int>(nfds > 0 ? nfds : 0, fd));
}

// open_count is how many of this process's fds are the memfd called name.
inline int open_count(const std::string& name) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec && target.string().rfind("/memfd:" + name + " ", 0) == 0) ++n;
  }
  return n;
}

}  // namespace fdtest
