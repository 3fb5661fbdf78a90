#include "train/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>

#include <fmt/format.h>

#include "core/error.h"
#include "core/output_dir.h"

namespace moe::train {

namespace fs = std::filesystem;

namespace {

// Staging dirs of a killed save (core/output_dir.h): never complete.
bool is_staging(const std::string& n) { return n.size() > 11 && n.compare(n.size() - 11, 11, ".moectl-tmp") == 0; }

// Files a run writes into its dir; a fresh run into an unversioned SAVE that holds any of them
// would mix its checkpoints with the old run's (QA #7).
bool is_run_output(const std::string& n) {
  return n == "latest_checkpointed_iteration.txt" || n == "logging.jsonl" || n.rfind("iter_", 0) == 0 ||
         n.rfind("checkpoint-", 0) == 0 || is_staging(n);
}

// An flock()ed file: held until closed, released by the kernel if the process dies.
int lock_file(const fs::path& p, bool wait) {
  const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    throw_input("--save {}: cannot create {} ({})", p.parent_path().string(), p.string(), std::strerror(errno));
  if (::flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string stamp_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
  return stamp;
}

}  // namespace

int next_version(const std::string& save) {
  int next = 0;
  std::error_code ec;
  if (!fs::is_directory(save, ec)) return 0;
  for (const auto& e : fs::directory_iterator(save, ec)) {
    // swift's re.match(r'v(\d+)-', name): digits after a leading 'v', then a dash.
    const std::string n = e.path().filename().string();
    size_t i = 1;
    while (i < n.size() && n[i] >= '0' && n[i] <= '9') ++i;
    if (n.size() < 3 || n[0] != 'v' || i == 1 || i >= n.size() || n[i] != '-' || i > 10) continue;
    next = std::max(next, std::atoi(n.substr(1, i - 1).c_str()) + 1);
  }
  return next;
}

namespace {

fs::path checked_root(const std::string& save, const RunDirOptions& o) {
  fs::path root = resolve_output_dir("--save", save, o.add_version ? std::vector<std::string>{} : o.inputs);
  if (o.add_version)
    for (const auto& in : o.inputs) {
      std::error_code ec;
      if (!in.empty() && fs::exists(in, ec) && path_within(root, normal_path(in)))
        throw_input(
            "--save {} is the input {} or lies inside it; runs would write into the model; choose another "
            "--save",
            save, in);
    }
  return root;
}

std::vector<fs::path> run_outputs_in(const fs::path& dir) {
  std::vector<fs::path> old;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (is_run_output(e.path().filename().string())) old.push_back(e.path());
  std::sort(old.begin(), old.end());
  return old;
}

[[noreturn]] void refuse_busy(const std::string& save) {
  throw_input(
      "--save {}: another moectl run is writing to it (--add_version false); wait for it, or pass "
      "--add_version true to get a dir of your own",
      save);
}

void refuse_old_run(const std::string& save, const fs::path& root, const RunDirOptions& o) {
  if (o.add_version || o.resuming || o.overwrite) return;
  auto old = run_outputs_in(root);
  std::erase_if(old, [](const fs::path& p) { return is_staging(p.filename().string()); });
  if (!old.empty())
    throw_input(
        "--save {} already holds a run's checkpoints ({}): resume it with --load {} --finetune false, pass "
        "--overwrite_output_dir true to replace them, or use --add_version true",
        save, old.front().filename().string(), save);
}

}  // namespace

void RunDir::check(const std::string& save, const RunDirOptions& o) {
  const fs::path root = checked_root(save, o);
  std::error_code ec;
  fs::path existing = root;  // the run dir's nearest existing ancestor must be a writable dir
  while (!fs::exists(existing, ec) && existing.has_parent_path() && existing != existing.parent_path())
    existing = existing.parent_path();
  if (!fs::is_directory(existing, ec) || ::access(existing.c_str(), W_OK) != 0)
    throw_input("--save {}: cannot create or write to it ({} is not a writable directory); choose a writable one", save,
                existing.string());
  if (!o.add_version && fs::exists(root / ".moectl.lock", ec)) {
    const int fd = lock_file(root / ".moectl.lock", false);
    if (fd < 0) refuse_busy(save);
    ::close(fd);
  }
  refuse_old_run(save, root, o);
}

RunDir::RunDir(const std::string& save, const RunDirOptions& o) : versioned_(o.add_version) {
  const fs::path root = checked_root(save, o);
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec || !fs::is_directory(root, ec))
    throw_input("--save {}: cannot create it ({}); pick a writable directory", save,
                ec ? ec.message() : "not a directory");
  if (o.add_version) {
    // The version is read and its dir made under SAVE's lock: two runs started together get
    // v0 and v1, never one dir between them (a plain scan-then-mkdir raced, QA #7).
    const int fd = lock_file(root / ".moectl.lock", true);
    fs::path dir;
    for (int n = next_version(root.string());; ++n) {
      dir = root / fmt::format("v{}-{}", n, stamp_now());
      if (::mkdir(dir.c_str(), 0755) == 0) break;
      if (errno != EEXIST) {
        const int err = errno;
        ::close(fd);
        throw_input("--save {}: cannot create {} ({}); pick a writable directory", save, dir.string(),
                    std::strerror(err));
      }
    }
    ::close(fd);
    path_ = dir.string();
    lock_fd_ = lock_file(dir / ".moectl.lock", false);
    return;
  }
  lock_fd_ = lock_file(root / ".moectl.lock", false);
  if (lock_fd_ < 0) refuse_busy(save);
  path_ = root.string();
  try {
    refuse_old_run(save, root, o);
  } catch (...) {
    ::close(lock_fd_);
    throw;
  }
  for (const auto& p : run_outputs_in(root)) {
    // Staging dirs of a killed save are never complete; the rest go only when replacing a run.
    if (is_staging(p.filename().string()) || (o.overwrite && !o.resuming)) fs::remove_all(p, ec);
  }
}

RunDir::~RunDir() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
  std::error_code ec;
  if (versioned_ && !path_.empty() && !fs::exists(fs::path(path_) / "logging.jsonl", ec)) fs::remove_all(path_, ec);
}

}  // namespace moe::train
