// A training run's output directory, owned exclusively for the run's lifetime (pt/sft --save):
// SAVE/vN-YYYYMMDD-HHMMSS numbered as swift numbers them but allocated under a lock, so runs
// started together never share one; with --add_version false SAVE itself, locked against a
// second run and refused to a fresh run when it already holds checkpoints.
#pragma once
#include <string>
#include <vector>

namespace moe::train {

struct RunDirOptions {
  bool add_version = true;
  // This run resumes a checkpoint (--load with --finetune false): an unversioned SAVE may
  // already hold checkpoints, which later saves replace.
  bool resuming = false;
  // Replace the checkpoints and logs of an earlier run in an unversioned SAVE (--overwrite_output_dir).
  bool overwrite = false;
  // The run's inputs (model, --load): SAVE's run dir must not be one of them, inside one, or an ancestor.
  std::vector<std::string> inputs;
};

class RunDir {
 public:
  // The refusals of the constructor, made before any work so that bad flags fail in a second:
  // InputError naming --save for '/', the current or home dir, a dir inside an input (or an
  // input or its ancestor without versions), or an unversioned SAVE holding a run's checkpoints.
  static void check(const std::string& save, const RunDirOptions& o);
  // Creates (or takes) the run directory under `save`, refusing as check() does and when another
  // run holds an unversioned SAVE.
  RunDir(const std::string& save, const RunDirOptions& o);
  // Releases the lock. A versioned dir the run never wrote its log into (the command failed
  // before training) is removed, so failures leave no empty vN dirs behind.
  ~RunDir();
  RunDir(const RunDir&) = delete;
  RunDir& operator=(const RunDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool versioned_ = false;
  int lock_fd_ = -1;
};

// The N a versioned run dir would get in `save`: 1 + the largest `v(\d+)-` prefix (0 for none).
int next_version(const std::string& save);

}  // namespace moe::train
