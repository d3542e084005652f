// ref-cpp offers the reference stages ref.noise-cpp and ref.blur-cpp
// (docs/reference-stage.md), bit-identical with ref.noise-go / ref.blur-go.
#include <pipehost/pipehost.hpp>

#include "ref.hpp"

int main() { pipehost::serve(ref::stages()); }
