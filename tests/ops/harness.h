// The op harness (in the spirit of ggml's test-backend-ops): every kernel op runs on every
// backend present against a double-precision reference written here, on random inputs of
// several shapes including odd ones. Helpers for guarded output buffers, normalised error,
// NaN checks and central finite differences, and the op x backend x result table printed
// when the binary ends.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"

namespace moe::ops_test {

// The table's column (named apart from moe::Backend, which the CUDA rows use to call the ops).
enum class On { Cpu, Cuda };

// Normalised mean squared error tolerances, by what the op computes in fp32. Exact ops (copies,
// selections) must match bitwise; a finite-difference check compares a float backward with a
// double central difference (error ~h^2 with h = 1e-4, far below the tolerance).
constexpr double kExact = 0.0;
constexpr double kTolF32 = 1e-10;       // element-wise and row-wise ops (rel. error ~1e-5)
constexpr double kTolF32Reduce = 1e-9;  // GEMMs, attention, long sums
constexpr double kTolFd = 1e-8;         // backward vs finite differences
constexpr double kFdStep = 1e-4;

// One row of the table: `check` is "fwd" or "bwd (fd)". Records ok or FAIL from the current
// test's failures when it goes out of scope, unless skip() was called.
class OpRow {
 public:
  OpRow(std::string op, std::string check, On b);
  ~OpRow();
  void skip(const std::string& reason) { skip_ = reason; }

 private:
  std::string op_, check_, skip_;
  On b_;
};

// The CUDA row's gate: true when a device can run the twin; otherwise *why says why not
// (built without CUDA, or no device).
bool cuda_ready(std::string* why);

// Opens the CUDA row of (op, check) in a test body and skips the test, with the reason in the
// table, when no device can run it.
#define CUDA_ROW(op, check)                                         \
  ::moe::ops_test::OpRow row(op, check, ::moe::ops_test::On::Cuda); \
  if (std::string why; !::moe::ops_test::cuda_ready(&why)) {        \
    row.skip(why);                                                  \
    GTEST_SKIP() << why;                                            \
  }

// Records a cuda row that skips because the op has no CUDA twin yet.
void no_cuda_twin(const std::string& op, const std::string& check);

// A buffer of n values with kGuard values before and after holding a sentinel byte pattern;
// intact() says whether anything wrote outside [0, n). `fill` sets the interior: outputs the
// op overwrites start as NaN, so an element left unwritten fails the NaN check.
template <class T>
class Guarded {
 public:
  static constexpr size_t kGuard = 16;
  static constexpr unsigned char kPattern = 0x5b;
  explicit Guarded(size_t n, T fill = T{}) : n_(n), buf_(n + 2 * kGuard, sentinel()) {
    for (size_t i = 0; i < n; ++i) buf_[kGuard + i] = fill;
  }
  Guarded(const std::vector<T>& v) : Guarded(v.size()) { std::copy(v.begin(), v.end(), data()); }
  T* data() { return buf_.data() + kGuard; }
  const T* data() const { return buf_.data() + kGuard; }
  T& operator[](size_t i) { return data()[i]; }
  size_t size() const { return n_; }
  // The whole buffer, guards included (what a device copy mirrors).
  T* with_guards() { return buf_.data(); }
  size_t size_with_guards() const { return buf_.size(); }
  std::vector<T> vec() const { return std::vector<T>(data(), data() + n_); }
  bool intact() const {
    const auto* b = reinterpret_cast<const unsigned char*>(buf_.data());
    const size_t g = kGuard * sizeof(T), tail = (kGuard + n_) * sizeof(T);
    for (size_t i = 0; i < g; ++i)
      if (b[i] != kPattern || b[tail + i] != kPattern) return false;
    return true;
  }

 private:
  static T sentinel() {
    T v;
    std::memset(static_cast<void*>(&v), kPattern, sizeof(T));
    return v;
  }
  size_t n_;
  std::vector<T> buf_;
};

inline float qnan() { return std::nanf(""); }

std::vector<float> randn(size_t n, Rng& rng, double scale = 1.0);
std::vector<double> widen(const float* x, size_t n);
inline std::vector<double> widen(const std::vector<float>& x) { return widen(x.data(), x.size()); }

// sum (got - want)^2 / max(sum want^2, tiny); 0 when both are all zero.
double nmse(const float* got, const double* want, size_t n);

// The checks every float output gets: guards intact, no NaN, NMSE within tol. `what` names the
// op, output and shape in the failure message.
void expect_close(const std::string& what, const Guarded<float>& got, const std::vector<double>& want, double tol);
void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<double>& want, double tol);

// Central differences of f at x for every coordinate (or every `stride`-th one for large x):
// returns the gradient estimate and fills `index` with the coordinates used.
std::vector<double> fd_grad(const std::function<double(const std::vector<double>&)>& f, std::vector<double> x,
                            std::vector<size_t>* index, size_t max_coords = 400);

// fd_grad against an analytic gradient (float) on the same coordinates.
void expect_fd(const std::string& what, const std::function<double(const std::vector<double>&)>& f,
               const std::vector<double>& x, const std::vector<float>& grad, double tol = kTolFd);

// sum_i r_i y_i: the scalar whose gradient a backward check computes.
double dotv(const std::vector<double>& r, const std::vector<double>& y);

}  // namespace moe::ops_test
