// The run's reporting: logging.jsonl lines (keys,
// 8-digit rounding, NaN as null, eval prefix, summary), swift's duration format, the progress
// text and bar, peak RSS.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include "testutil.h"
#include "train/metrics.h"

namespace moe::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

TEST(Metrics, DurationsAsSwiftPrintsThem) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(59.9), "59s");  // truncated, as swift's format_time
  EXPECT_EQ(format_duration(60), "1m 0s");
  EXPECT_EQ(format_duration(3600), "1h 0m 0s");
  EXPECT_EQ(format_duration(93784), "1d 2h 3m 4s");
  EXPECT_EQ(format_duration(86405), "1d 0h 0m 5s");
  EXPECT_EQ(format_duration(-3), "0s");
  EXPECT_EQ(format_duration(NAN), "0s");
  EXPECT_EQ(iteration_field(5, 100), "5/100");
}

TEST(Metrics, RoundsToEightSignificantDigits) {
  EXPECT_EQ(round8(0.123456789123), 0.12345679);
  EXPECT_EQ(round8(123456789.0), 123456790.0);
  EXPECT_EQ(round8(-2.718281828459045), -2.7182818);
  EXPECT_EQ(round8(1.23456789123e-20), 1.2345679e-20);
  EXPECT_EQ(round8(0.0), 0.0);
  EXPECT_TRUE(std::isnan(round8(NAN)));
  EXPECT_EQ(json(round8(1.0 / 3)).dump(), "0.33333333");
  EXPECT_EQ(json(round8(1e-5 * 1.1)).dump(), "1.1e-05");
}

TEST(Metrics, JsonlLinesAreAppendedRoundedAndValid) {
  testing::TempDir t;
  const JsonlLog log(t.file("logging.jsonl"));
  json train = {{"loss", 2.123456789}, {"acc", 0.5},
                {"grad_norm", NAN},    {"learning_rate", 1e-5 / 3},
                {"iteration", "1/10"}, {"memory(GiB)", 1.0 / 7},
                {"skipped_iters", 2},  {"nested", {1.0 / 3, INFINITY}}};
  log.write(train);
  log.write(eval_line({{"loss", 1.25}, {"acc", 0.75}, {"eval_extra", 1}}, 10, 10));
  log.write(summary_line("/out/v0", "", NAN));
  std::ifstream in(log.path());
  std::vector<json> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(json::parse(l));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["loss"].get<double>(), 2.1234568);
  EXPECT_TRUE(lines[0]["grad_norm"].is_null());
  EXPECT_EQ(lines[0]["learning_rate"].get<double>(), 3.3333333e-06);
  EXPECT_EQ(lines[0]["memory(GiB)"].get<double>(), 0.14285714);
  EXPECT_EQ(lines[0]["skipped_iters"].get<int>(), 2);
  EXPECT_EQ(lines[0]["iteration"], "1/10");
  EXPECT_EQ(lines[0]["nested"][0].get<double>(), 0.33333333);
  EXPECT_TRUE(lines[0]["nested"][1].is_null());
  EXPECT_EQ(lines[1]["eval_loss"].get<double>(), 1.25);
  EXPECT_EQ(lines[1]["eval_acc"].get<double>(), 0.75);
  EXPECT_EQ(lines[1]["eval_extra"].get<int>(), 1);
  EXPECT_FALSE(lines[1].contains("loss"));
  EXPECT_EQ(lines[1]["iteration"], "10/10");
  EXPECT_EQ(lines[2]["last_model_checkpoint"], "/out/v0");
  EXPECT_TRUE(lines[2]["best_model_checkpoint"].is_null());
  EXPECT_TRUE(lines[2]["best_metric"].is_null());
  EXPECT_EQ(summary_line("a", "b", 0.5)["best_metric"].get<double>(), 0.5);
}

TEST(Metrics, JsonlToAMissingDirectoryIsAnInputError) {
  testing::TempDir t;
  const JsonlLog log(t.file("missing/logging.jsonl"));
  EXPECT_NE(testing::input_error([&] { log.write({{"loss", 1.0}}); }).find("logging.jsonl"), std::string::npos);
}

TEST(Metrics, ProgressTextLikeTqdm) {
  EXPECT_EQ(format_progress("Train", 45, 100, 12.0, "", 20),
            "Train:  45%|#########           | 45/100 [00:12<00:14, 3.75it/s]");
  EXPECT_EQ(format_progress("Train", 0, 100, 0.0, "", 10), "Train:   0%|          | 0/100 [00:00<?, ?s/it]");
  EXPECT_EQ(format_progress("Train", 10, 10, 4000.0, "loss=1.5", 10),
            "Train: 100%|##########| 10/10 [1:06:40<00:00, 400.00s/it] loss=1.5");
  EXPECT_EQ(format_progress("Evaluate", 150, 100, 1.0, "", 4),
            "Evaluate: 100%|####| 150/100 [00:01<00:00, 150.00it/s]");
}

TEST(Metrics, ProgressBarDrawsOnlyOnATerminal) {
  for (int tty : {0, 1}) {
    std::FILE* f = std::tmpfile();
    ASSERT_NE(f, nullptr);
    {
      ProgressBar bar("Train", 4, f, tty);
      EXPECT_EQ(bar.enabled(), tty == 1);
      bar.update(1, 1.0, "loss=2.00000");
      bar.update(2, 2.0);
      bar.clear();
      bar.update(4, 4.0);
    }  // finish() on destruction
    std::rewind(f);
    std::string got;
    for (int c; (c = std::fgetc(f)) != EOF;) got += char(c);
    std::fclose(f);
    if (!tty) {
      EXPECT_EQ(got, "");
      continue;
    }
    EXPECT_EQ(got.front(), '\r');
    EXPECT_EQ(got.back(), '\n');
    EXPECT_NE(got.find("loss=2.00000"), std::string::npos);
    EXPECT_NE(got.find("| 4/4 ["), std::string::npos);
    // The second draw pads over the first, longer one.
    const std::string first = format_progress("Train", 1, 4, 1.0, "loss=2.00000");
    const std::string second = format_progress("Train", 2, 4, 2.0);
    EXPECT_NE(got.find("\r" + second + std::string(first.size() - second.size(), ' ')), std::string::npos);
  }
}

TEST(Metrics, PeakRssIsPlausible) {
  std::vector<char> touch(64 << 20, 1);  // 64 MiB resident
  const double gib = peak_rss_gib();
  EXPECT_GE(gib, 64.0 / 1024);
  EXPECT_LT(gib, 1024.0);
  EXPECT_EQ(touch[12345], 1);
}

}  // namespace
}  // namespace moe::train
