// Errors the SDK throws. A stage fails by throwing: the SDK turns any
// std::exception escaping the run function into a failed stage whose message
// is what() (the host adds the stage name, plugin and exit status).
#pragma once

#include <stdexcept>
#include <string>

namespace pipehost {

// Error is what the SDK throws for a problem a stage can report as is: a
// missing port, a param of the wrong type, an invalid handle, a bad topology.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Cancelled is thrown by Context::throw_if_cancelled when the host cancelled
// the stage (timeout, another stage failed, SIGINT).
class Cancelled : public Error {
 public:
  Cancelled() : Error("the stage was cancelled by the host") {}
};

}  // namespace pipehost
