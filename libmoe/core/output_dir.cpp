#include "core/output_dir.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/log.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// Atomically exchanges two existing paths; false where the filesystem does not support it.
bool exchange(const fs::path& a, const fs::path& b) {
  if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0) return true;
  if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) return false;
  throw_internal("cannot exchange {} and {}: {}", a.string(), b.string(), std::strerror(errno));
}

}  // namespace

// Symlinks of the existing prefix resolved, and no trailing separator ("out/" and "out" are the
// same target: QA #2 built the temporary inside "out/" and then deleted it with "out").
fs::path normal_path(const fs::path& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(fs::absolute(p), ec);
  if (ec) r = fs::absolute(p).lexically_normal();
  if (r.has_relative_path() && r.filename().empty()) r = r.parent_path();
  return r;
}

bool path_within(const fs::path& a, const fs::path& b) {
  auto ai = a.begin(), bi = b.begin();
  for (; bi != b.end(); ++ai, ++bi)
    if (ai == a.end() || *ai != *bi) return false;
  return true;
}

fs::path staging_dir_for(const fs::path& target) {
  return target.parent_path() / ("." + target.filename().string() + ".moectl-tmp");
}

fs::path aside_dir_for(const fs::path& target) {
  return target.parent_path() / ("." + target.filename().string() + ".moectl-old");
}

fs::path resolve_output_dir(const std::string& flag, const std::string& path, const std::vector<std::string>& inputs) {
  if (path.empty()) throw_input("{} is empty: name the directory to write", flag);
  fs::path t = normal_path(path);  // not const: returned, so moved out
  std::error_code ec;
  const fs::path cwd = normal_path(fs::current_path(ec));
  if (t == t.root_path())
    throw_input("{} {}: refusing to write over the filesystem root; name a new directory", flag, path);
  if (!ec && t == cwd)
    throw_input("{} {}: refusing to write over the current directory; name a new directory such as {}/out", flag, path,
                path);
  if (const char* home = std::getenv("HOME"); home && *home && t == normal_path(home))
    throw_input("{} {}: refusing to write over the home directory; name a new directory inside it", flag, path);
  for (const auto& in : inputs) {
    if (in.empty() || !fs::exists(in, ec)) continue;
    const fs::path i = normal_path(in);
    if (t == i) throw_input("{} {} is the input {} itself; write the output to another directory", flag, path, in);
    if (path_within(t, i))
      throw_input("{} {} lies inside the input {}; write the output to a directory outside it", flag, path, in);
    if (path_within(i, t))
      throw_input("{} {} contains the input {}, which replacing it would delete; name a new directory", flag, path, in);
  }
  return t;
}

StagedDir::StagedDir(const std::string& flag, const fs::path& target, bool overwrite)
    : flag_(flag), target_(target), staging_(staging_dir_for(target)) {
  std::error_code ec;
  const fs::path aside = aside_dir_for(target_);
  // A kill between the two renames of the fallback swap left the old output aside: put it back.
  if (fs::exists(aside, ec) && !fs::exists(target_, ec)) fs::rename(aside, target_);
  fs::remove_all(aside, ec);
  if (fs::exists(target_, ec)) {
    if (!fs::is_directory(target_, ec))
      throw_input("{} {} exists and is not a directory; name a directory", flag_, target_.string());
    if (!fs::is_empty(target_, ec) && !overwrite)
      throw_input("{} {} exists and is not empty (pass --overwrite true to replace it)", flag_, target_.string());
  }
  fs::create_directories(target_.parent_path(), ec);
  if (ec) throw_input("{} {}: cannot create its parent directory ({})", flag_, target_.string(), ec.message());
  fs::remove_all(staging_, ec);  // left by a killed run: it is never a complete output
  fs::create_directory(staging_, ec);
  if (ec)
    throw_input("{} {}: cannot create {} ({}); choose a writable location", flag_, target_.string(), staging_.string(),
                ec.message());
}

StagedDir::~StagedDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void StagedDir::commit() {
  std::error_code ec;
  fsync_dir(staging_);
  if (fs::exists(target_, ec)) {
    if (exchange(staging_, target_)) {
      committed_ = true;
      fsync_dir(target_.parent_path());
      fs::remove_all(staging_, ec);  // now the old output
      return;
    }
    const fs::path aside = aside_dir_for(target_);
    fs::rename(target_, aside);
    fs::rename(staging_, target_);
    committed_ = true;
    fsync_dir(target_.parent_path());
    fs::remove_all(aside, ec);
    return;
  }
  fs::rename(staging_, target_);
  committed_ = true;
  fsync_dir(target_.parent_path());
}

}  // namespace moe
