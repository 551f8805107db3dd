#ifndef GRANARY_BAZEL_BASIC_GREET_H_
#define GRANARY_BAZEL_BASIC_GREET_H_

#include <string>

namespace granary_test {

std::string Greet(const std::string& name);

}  // namespace granary_test

#endif  // GRANARY_BAZEL_BASIC_GREET_H_
