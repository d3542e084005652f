// hydro-cpp offers hydro.flow (hydro.cpp).
#include "hydro.hpp"

int main() { pipehost::serve({hydro::stage()}); }
