#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pipehost/log.hpp"

TEST(Log, JsonQuote) {
  EXPECT_EQ(pipehost::json_quote("a\"b\\c\n\t\x01"), "\"a\\\"b\\\\c\\n\\t\\u0001\"");
  EXPECT_EQ(pipehost::json_quote("héllo ✓"), "\"héllo ✓\"");
  // Invalid UTF-8 becomes U+FFFD, so a reader never chokes.
  EXPECT_EQ(pipehost::json_quote(std::string("a\xff" "b")), "\"a\xEF\xBF\xBD" "b\"");
  EXPECT_EQ(pipehost::json_quote(std::string("\xC0\x80")), "\"\xEF\xBF\xBD\xEF\xBF\xBD\"");
  EXPECT_TRUE(nlohmann::json::parse(pipehost::json_quote(std::string("x\xe2\x82"))).is_string());
}

TEST(Log, LinesAreHclogJson) {
  // Capture stderr in a pipe.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  const int saved = ::dup(STDERR_FILENO);
  ::dup2(p[1], STDERR_FILENO);
  pipehost::log_warn("disk \"full\"", {{"path", "/tmp/x"}});
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  ::close(p[1]);
  char buf[4096];
  const ssize_t n = ::read(p[0], buf, sizeof buf);
  ::close(p[0]);
  ASSERT_GT(n, 0);
  const std::string line(buf, static_cast<size_t>(n));
  ASSERT_EQ(line.back(), '\n');
  const auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["@level"], "warn");
  EXPECT_EQ(j["@message"], "disk \"full\"");
  EXPECT_TRUE(j["@message"].is_string());
  EXPECT_EQ(j["path"], "/tmp/x");
  // hclog's timestamp layout: 2006-01-02T15:04:05.000000Z07:00
  const std::string ts = j["@timestamp"];
  ASSERT_EQ(ts.size(), 27u) << ts;
  EXPECT_EQ(ts[10], 'T');
  EXPECT_EQ(ts[19], '.');
  EXPECT_EQ(ts.back(), 'Z');
}
