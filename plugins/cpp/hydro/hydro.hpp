// hydro.flow (docs/planet.md), declared for the plugin and the tests.
#pragma once

#include <pipehost/pipehost.hpp>

namespace hydro {

pipehost::Stage stage();

}  // namespace hydro
