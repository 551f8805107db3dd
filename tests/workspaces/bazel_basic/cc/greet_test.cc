#include <iostream>

#include "cc/greet.h"

int main() {
  if (granary_test::Greet("bazel") != "hello, bazel!") {
    std::cerr << "unexpected greeting: " << granary_test::Greet("bazel") << std::endl;
    return 1;
  }
  return 0;
}
