#include "ops/harness.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <utility>

#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace moe::ops_test {

namespace {

struct Cell {
  std::string cpu, cuda;
};

// (op, check) -> results, in first-seen order for printing.
std::vector<std::pair<std::string, std::string>>& order() {
  static std::vector<std::pair<std::string, std::string>> o;
  return o;
}
std::map<std::pair<std::string, std::string>, Cell>& table() {
  static std::map<std::pair<std::string, std::string>, Cell> t;
  return t;
}

void put(const std::string& op, const std::string& check, On b, const std::string& result) {
  auto key = std::make_pair(op, check);
  auto [it, fresh] = table().try_emplace(key);
  if (fresh) order().push_back(key);
  std::string& cell = b == On::Cpu ? it->second.cpu : it->second.cuda;
  // One op runs several tests (shapes, options): a failure anywhere marks the row FAIL.
  if (cell.empty() || result == "FAIL" || cell.rfind("skip", 0) == 0) cell = result;
}

// Prints the table after the last test.
class TablePrinter : public ::testing::Environment {
 public:
  void TearDown() override {
    if (table().empty()) return;
    size_t w_op = 2, w_ck = 5, w_cpu = 3;
    for (const auto& k : order()) {
      w_op = std::max(w_op, k.first.size()), w_ck = std::max(w_ck, k.second.size());
      w_cpu = std::max(w_cpu, table()[k].cpu.size());
    }
    std::printf("\nop harness: %zu checks\n", order().size());
    std::printf("%-*s  %-*s  %-*s  %s\n", int(w_op), "op", int(w_ck), "check", int(w_cpu), "cpu", "cuda");
    for (const auto& k : order()) {
      const Cell& c = table()[k];
      std::printf("%-*s  %-*s  %-*s  %s\n", int(w_op), k.first.c_str(), int(w_ck), k.second.c_str(), int(w_cpu),
                  c.cpu.empty() ? "-" : c.cpu.c_str(), c.cuda.empty() ? "-" : c.cuda.c_str());
    }
    std::fflush(stdout);
  }
};

[[maybe_unused]] const auto* const kPrinter = ::testing::AddGlobalTestEnvironment(new TablePrinter);

}  // namespace

OpRow::OpRow(std::string op, std::string check, On b) : op_(std::move(op)), check_(std::move(check)), b_(b) {}

OpRow::~OpRow() {
  if (!skip_.empty()) put(op_, check_, b_, "skip: " + skip_);
  else put(op_, check_, b_, ::testing::Test::HasFailure() ? "FAIL" : "ok");
}

bool cuda_ready(std::string* why) {
#ifdef MOE_HAVE_CUDA
  return kernels::cuda::device_available(why);
#else
  *why = "built without CUDA";
  return false;
#endif
}

void no_cuda_twin(const std::string& op, const std::string& check) { put(op, check, On::Cuda, "skip: no CUDA twin"); }

std::vector<float> randn(size_t n, Rng& rng, double scale) {
  std::vector<float> v(n);
  for (auto& x : v) x = float(scale * rng.normal());
  return v;
}

std::vector<double> widen(const float* x, size_t n) { return std::vector<double>(x, x + n); }

double nmse(const float* got, const double* want, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double(got[i]) - want[i];
    num += d * d, den += want[i] * want[i];
  }
  if (num == 0) return 0;
  return num / std::max(den, 1e-30);
}

namespace {
void check_values(const std::string& what, const float* got, const std::vector<double>& want, double tol) {
  size_t nans = 0;
  for (size_t i = 0; i < want.size(); ++i) nans += std::isnan(got[i]) && !std::isnan(want[i]);
  EXPECT_EQ(nans, 0u) << what << ": NaN in the output";
  if (nans) return;
  const double e = nmse(got, want.data(), want.size());
  if (tol == kExact) {
    size_t diff = 0;
    for (size_t i = 0; i < want.size(); ++i) diff += double(got[i]) != want[i];
    EXPECT_EQ(diff, 0u) << what << ": " << diff << " of " << want.size() << " values differ (exact op)";
  } else {
    EXPECT_LE(e, tol) << what << ": NMSE " << e << " over " << want.size() << " values";
  }
}
}  // namespace

void expect_close(const std::string& what, const Guarded<float>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  EXPECT_TRUE(got.intact()) << what << ": a write outside the output buffer";
  check_values(what, got.data(), want, tol);
}

void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  check_values(what, got.data(), want, tol);
}

std::vector<double> fd_grad(const std::function<double(const std::vector<double>&)>& f, std::vector<double> x,
                            std::vector<size_t>* index, size_t max_coords) {
  const size_t stride = std::max<size_t>(1, (x.size() + max_coords - 1) / max_coords);
  std::vector<double> g;
  index->clear();
  for (size_t i = 0; i < x.size(); i += stride) {
    const double x0 = x[i];
    x[i] = x0 + kFdStep;
    const double up = f(x);
    x[i] = x0 - kFdStep;
    const double down = f(x);
    x[i] = x0;
    g.push_back((up - down) / (2 * kFdStep));
    index->push_back(i);
  }
  return g;
}

void expect_fd(const std::string& what, const std::function<double(const std::vector<double>&)>& f,
               const std::vector<double>& x, const std::vector<float>& grad, double tol) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  std::vector<size_t> idx;
  const std::vector<double> fd = fd_grad(f, x, &idx);
  std::vector<float> picked;
  picked.reserve(idx.size());
  for (size_t i : idx) picked.push_back(grad[i]);
  check_values(what + " vs finite differences", picked.data(), fd, tol);
}

double dotv(const std::vector<double>& r, const std::vector<double>& y) {
  double s = 0;
  for (size_t i = 0; i < r.size(); ++i) s += r[i] * y[i];
  return s;
}

}  // namespace moe::ops_test

// The harness checks itself: a stray write past an output and an unwritten (NaN) element fail.
namespace {
using namespace moe::ops_test;
TEST(Harness, GuardsCatchStrayWritesAndNmseIsNormalised) {
  Guarded<float> g(5, 0.0f);
  EXPECT_TRUE(g.intact());
  g.data()[5] = 1.0f;  // one past the end, into the guard
  EXPECT_FALSE(g.intact());
  const float got[3] = {1, 2, 3};
  const double want[3] = {1, 2, 3.3};
  EXPECT_NEAR(nmse(got, want, 3), 0.09 / (1 + 4 + 3.3 * 3.3), 1e-9);
  std::vector<size_t> idx;
  auto fd = fd_grad([](const std::vector<double>& x) { return x[0] * x[0] * x[1]; }, {3.0, 2.0}, &idx);
  EXPECT_NEAR(fd[0], 12.0, 1e-6);
  EXPECT_NEAR(fd[1], 9.0, 1e-6);
}
}  // namespace
