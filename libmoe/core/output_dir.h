// The one rule for every command that writes a directory (export both ways, init, pt/sft run
// dirs): resolve the target first and refuse targets whose replacement would destroy the user's
// files; build the new output in a staging dir beside the target (never inside it); publish it
// with an atomic swap, so a kill at any moment leaves the old or the new output whole.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace moe {

// `path` made absolute and normal (symlinks in its existing part resolved, no trailing '/'),
// or InputError naming `flag` when it is the current directory, '/', the home directory, one of
// `inputs`, inside one of them or an ancestor of one. Inputs that do not exist are ignored.
std::filesystem::path resolve_output_dir(const std::string& flag, const std::string& path,
                                         const std::vector<std::string>& inputs);

// `p` absolute and normal as resolve_output_dir makes it.
std::filesystem::path normal_path(const std::filesystem::path& p);
// True when `a` is `b` or lies inside it (component-wise: /x/ab is not inside /x/a).
bool path_within(const std::filesystem::path& a, const std::filesystem::path& b);

// A new output being built for `target` (resolved as above). Construction refuses an existing
// non-empty target unless `overwrite` (InputError naming `flag`), removes stale staging dirs of
// earlier killed runs (only ones this class made: they hold a marker file) and creates a fresh
// staging dir `.<name>.moectl-tmp` in the target's parent. commit() swaps it into place; a
// StagedDir destroyed without commit() removes its staging dir, so a failed command leaves the
// old output (or nothing) and no temporary behind.
class StagedDir {
 public:
  StagedDir(const std::string& flag, const std::filesystem::path& target, bool overwrite);
  ~StagedDir();
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;

  // Where the new output is written until commit().
  const std::filesystem::path& path() const { return staging_; }
  const std::filesystem::path& target() const { return target_; }
  // Publishes the staging dir as the target: an atomic exchange with an existing target
  // (renameat2 RENAME_EXCHANGE), then the old output is deleted. Where the filesystem cannot
  // exchange, the old output is renamed aside first and restored by the next run if a kill
  // lands between the two renames.
  void commit();

 private:
  std::string flag_;
  std::filesystem::path target_, staging_;
  bool committed_ = false;
};

// Names of the staging and set-aside dirs for `target` (tests and the recovery step use them).
std::filesystem::path staging_dir_for(const std::filesystem::path& target);
std::filesystem::path aside_dir_for(const std::filesystem::path& target);

}  // namespace moe
