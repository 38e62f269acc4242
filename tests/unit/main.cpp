// The test runner's entry point, written out so that Catch2 2 and 3 build it alike.
#define CATCH_CONFIG_RUNNER
#include "catch.h"

int main(int argc, char** argv) { return Catch::Session().run(argc, argv); }
