// Shared doctest entry point. Each area's executable links this; meson runs each *_test.cpp
// file of an area as its own test via --source-file, so results are reported per unit.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
