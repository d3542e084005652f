// Helpers for reading the shared vectors in testdata/.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <stdexcept>
#include <string>

namespace testdata {

inline nlohmann::json load(const std::string& rel) {
  const std::string path = std::string(PIPEHOST_TESTDATA) + "/" + rel;
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(f);
}

// u64 parses "0x" + 16 hex digits.
inline uint64_t u64(const nlohmann::json& j) {
  const std::string s = j.get<std::string>();
  if (s.size() != 18 || s.rfind("0x", 0) != 0) throw std::runtime_error("not a 0x uint64: " + s);
  return std::stoull(s.substr(2), nullptr, 16);
}

inline std::string unhex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out.push_back(static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16)));
  return out;
}

// near compares floats as docs/topology.md says: |got - want| <= tol * max(1, scale).
inline ::testing::AssertionResult near(double got, double want, double tol, double scale) {
  if (std::fabs(got - want) <= tol * std::max(1.0, scale)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << ", want " << want << " (tolerance " << tol << " x "
                                       << std::max(1.0, scale) << ")";
}

}  // namespace testdata

namespace testdata {

// sha256_hex is the SHA-256 of data in lowercase hex, for the vectors that
// pin a payload by its digest (OpenSSL: gRPC's own dependency).
inline std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("SHA-256: EVP_Digest failed");
  }
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out.push_back(digits[md[i] >> 4]);
    out.push_back(digits[md[i] & 0xf]);
  }
  return out;
}

}  // namespace testdata
