// slope-cpp: the plugin that serves terrain.slope.
#include "slope.hpp"

int main() { pipehost::serve({slope::stage()}); }
