// The opt-in switches read from the environment (A/B runs and paths not yet
// verified on a GPU): a switch is on when its variable is exactly "1".
#pragma once

#include <cstdlib>
#include <cstring>

namespace pydl {

inline bool env_switch_on(const char* name) {
  const char* env = std::getenv(name);
  return env != nullptr && std::strcmp(env, "1") == 0;
}

}  // namespace pydl
