#include "cc/greet.h"

namespace granary_test {

std::string Greet(const std::string& name) { return "hello, " + name + "!"; }

}  // namespace granary_test
