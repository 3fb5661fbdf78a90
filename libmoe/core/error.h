// Errors of libmoe: one family, thrown inside the library and caught once in main.
// InputError = the user's file, field or flag is wrong (exit 2); InternalError = a bug
// or an environment failure (exit 1). Messages are one line: what, where, and the fix.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace moe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, int exit_code) : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// Bad input: a file, field or flag the user controls.
class InputError : public Error {
 public:
  explicit InputError(const std::string& what) : Error(what, 2) {}
};

// A broken invariant or a failing system call that is not the user's fault.
class InternalError : public Error {
 public:
  explicit InternalError(const std::string& what) : Error(what, 1) {}
};

template <class... A>
[[noreturn]] void throw_input(fmt::format_string<A...> f, A&&... a) {
  throw InputError(fmt::format(f, std::forward<A>(a)...));
}

template <class... A>
[[noreturn]] void throw_internal(fmt::format_string<A...> f, A&&... a) {
  throw InternalError(fmt::format(f, std::forward<A>(a)...));
}

}  // namespace moe

// Invariant check for library code: a failure is a bug in moectl, not in the input.
#define MOE_ASSERT(cond, ...)                                                                   \
  do {                                                                                          \
    if (!(cond))                                                                                \
      ::moe::throw_internal("{}:{}: internal check '{}' failed: {}", __FILE__, __LINE__, #cond, \
                            ::fmt::format(__VA_ARGS__));                                        \
  } while (0)
