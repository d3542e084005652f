// Process logging: one hclog-compatible JSON line per call on stderr, which
// the host keeps for failure reports. Use Context::log for lines that belong
// to a stage's run log.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "pipehost/types.hpp"

namespace pipehost {

using LogField = std::pair<std::string_view, std::string_view>;

// log_line writes {"@level":..,"@message":..,"@timestamp":..,"@module":"plugin", fields...}.
void log_line(LogLevel level, std::string_view message, std::initializer_list<LogField> fields = {});

inline void log_info(std::string_view message, std::initializer_list<LogField> fields = {}) {
  log_line(LogLevel::Info, message, fields);
}
inline void log_warn(std::string_view message, std::initializer_list<LogField> fields = {}) {
  log_line(LogLevel::Warn, message, fields);
}
inline void log_error(std::string_view message, std::initializer_list<LogField> fields = {}) {
  log_line(LogLevel::Error, message, fields);
}

// json_quote returns s as a JSON string literal (quotes included); invalid
// UTF-8 bytes become U+FFFD so the line always parses.
std::string json_quote(std::string_view s);

}  // namespace pipehost
