// Training run dirs: swift's vN numbering, allocated exclusively (QA #7), an unversioned SAVE
// locked and refused to a fresh run when it holds checkpoints, inputs never written into, and
// dirs of runs that never started removed.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <set>
#include <thread>

#include "testutil.h"
#include "train/run_dir.h"

namespace moe::train {
namespace {

namespace fs = std::filesystem;

void start_log(const RunDir& d) { testing::write_file((fs::path(d.path()) / "logging.jsonl").string(), "{}\n"); }

TEST(RunDir, StartsAtV0WithATimestamp) {
  testing::TempDir t;
  const std::string save = t.file("out");  // missing: created
  RunDir d(save, {});
  EXPECT_TRUE(fs::is_directory(d.path()));
  EXPECT_EQ(fs::path(d.path()).parent_path(), fs::path(save));
  EXPECT_TRUE(std::regex_match(fs::path(d.path()).filename().string(), std::regex("v0-20[0-9]{6}-[0-9]{6}")))
      << fs::path(d.path()).filename();
  EXPECT_EQ(next_version(save), 1);
}

TEST(RunDir, VersionIsOnePastTheLargestVPrefix) {
  testing::TempDir t;
  for (const char* n : {"v0-20240101-000000", "v3-x", "v12-20250101-101010", "v99", "xv50-a", "v-1", "vv7-a"})
    fs::create_directories(t.file(n));
  testing::write_file(t.file("v20-notes.txt"), "");  // swift lists files too
  EXPECT_EQ(next_version(t.path()), 21);
  RunDir d(t.path(), {});
  EXPECT_EQ(fs::path(d.path()).filename().string().substr(0, 4), "v21-");
}

TEST(RunDir, QA07_RunsStartedTogetherGetDistinctDirs) {
  testing::TempDir t;
  std::vector<std::unique_ptr<RunDir>> dirs(8);
  std::vector<std::thread> th;
  th.reserve(dirs.size());
  for (auto& d : dirs) th.emplace_back([&] { d = std::make_unique<RunDir>(t.path(), RunDirOptions{}); });
  for (auto& x : th) x.join();
  std::set<std::string> versions;
  for (auto& d : dirs) versions.insert(fs::path(d->path()).filename().string().substr(0, 3));
  EXPECT_EQ(versions.size(), dirs.size());
}

TEST(RunDir, UnversionedIsSaveItselfAndLocked) {
  testing::TempDir t;
  const std::string save = t.file("plain/nested");
  RunDirOptions o;
  o.add_version = false;
  RunDir d(save, o);
  EXPECT_EQ(d.path(), save);
  EXPECT_TRUE(fs::is_directory(save));
  const std::string msg = testing::input_error([&] { RunDir second(save, o); });
  EXPECT_NE(msg.find("another moectl run"), std::string::npos) << msg;
}

TEST(RunDir, QA07_FreshRunRefusesOldCheckpointsUnlessResumingOrOverwriting) {
  testing::TempDir t;
  RunDirOptions o;
  o.add_version = false;
  fs::create_directories(t.file("iter_0000003"));
  testing::write_file(t.file("latest_checkpointed_iteration.txt"), "3");
  const std::string msg = testing::input_error([&] { RunDir::check(t.path(), o); });
  EXPECT_NE(msg.find("--finetune false"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--overwrite_output_dir"), std::string::npos) << msg;
  testing::input_error([&] { RunDir d(t.path(), o); });
  EXPECT_TRUE(fs::exists(t.file("iter_0000003")));
  o.resuming = true;
  { RunDir d(t.path(), o); }
  EXPECT_TRUE(fs::exists(t.file("iter_0000003")));
  o.resuming = false, o.overwrite = true;
  { RunDir d(t.path(), o); }
  EXPECT_FALSE(fs::exists(t.file("iter_0000003")));
  EXPECT_FALSE(fs::exists(t.file("latest_checkpointed_iteration.txt")));
}

TEST(RunDir, RefusesCwdRootAndInputs) {
  testing::TempDir t;
  fs::create_directories(t.file("model"));
  RunDirOptions o;
  o.inputs = {t.file("model")};
  EXPECT_NE(testing::input_error([&] { RunDir::check(t.file("model"), o); }).find("input"), std::string::npos);
  EXPECT_NE(testing::input_error([&] { RunDir::check(t.file("model/sub"), o); }).find("input"), std::string::npos);
  RunDir::check(t.path(), o);  // versioned: a new vN dir beside the model is fine
  o.add_version = false;
  EXPECT_NE(testing::input_error([&] { RunDir::check(t.path(), o); }).find("input"), std::string::npos);
  EXPECT_NE(testing::input_error([&] { RunDir::check("/", o); }).find("root"), std::string::npos);
  const fs::path cwd = fs::current_path();
  fs::current_path(t.path());
  const std::string msg = testing::input_error([&] { RunDir::check(".", o); });
  fs::current_path(cwd);
  EXPECT_NE(msg.find("current directory"), std::string::npos) << msg;
}

TEST(RunDir, UncreatableNamesSave) {
  testing::TempDir t;
  testing::write_file(t.file("afile"), "x");
  const std::string msg = testing::input_error([&] { RunDir d(t.file("afile/sub"), {}); });
  EXPECT_NE(msg.find("--save"), std::string::npos) << msg;
}

TEST(RunDir, DirOfARunThatNeverStartedIsRemoved) {
  testing::TempDir t;
  std::string kept, dropped;
  {
    RunDir b(t.path(), {});
    start_log(b);
    kept = b.path();
  }
  {
    RunDir a(t.path(), {});
    dropped = a.path();
  }
  EXPECT_NE(kept, dropped);
  EXPECT_FALSE(fs::exists(dropped));
  EXPECT_TRUE(fs::exists(kept));
}

}  // namespace
}  // namespace moe::train
