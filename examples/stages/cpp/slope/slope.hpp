// terrain.slope: the steepness of an elevation grid in degrees.
#pragma once

#include <pipehost/pipehost.hpp>

namespace slope {

pipehost::Stage stage();

}  // namespace slope
