// SVG plots: every output, including empty, one-point, constant and NaN series and empty
// heatmaps, parses as XML (python3's xml.etree, run live; skipped with the reason when there is
// no python3); values land where the axes say; the five files of a run are written.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "testutil.h"
#include "train/svg_plot.h"

namespace moe::train {
namespace {

namespace fs = std::filesystem;

std::string python() {
  for (const char* p : {"/usr/bin/python3", "python3"})
    if (std::system((std::string(p) + " -c 'import xml.etree.ElementTree' >/dev/null 2>&1").c_str()) == 0) return p;
  return "";
}

// Parses the SVG with xml.etree; returns the number of elements, or -1 when it is not XML.
int xml_elements(const std::string& svg) {
  testing::TempDir t;
  testing::write_file(t.file("p.svg"), svg);
  const std::string cmd = python() +
                          " -c 'import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); "
                          "assert r.tag == \"{http://www.w3.org/2000/svg}svg\", r.tag; print(len(list(r.iter())))' " +
                          t.file("p.svg") + " 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
  pclose(f);
  try {
    return std::stoi(out);
  } catch (...) {
    ADD_FAILURE() << "not well-formed SVG: " << out << "\n" << svg.substr(0, 2000);
    return -1;
  }
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

Series ramp(int n, double (*f)(int)) {
  Series s;
  for (int i = 1; i <= n; ++i) s.push_back({double(i), f(i)});
  return s;
}

TEST(SvgPlot, DegenerateSeriesStayWellFormed) {
  if (python().empty()) GTEST_SKIP() << "no python3 with xml.etree to check the XML";
  const std::vector<std::pair<std::string, Series>> cases = {
      {"empty", {}},
      {"one point", {{5, 1.5}}},
      {"constant", ramp(20, [](int) { return 2.0; })},
      {"zero constant", ramp(3, [](int) { return 0.0; })},
      {"all NaN", ramp(4, [](int) { return double(NAN); })},
      {"some NaN & Inf", {{1, 1.0}, {2, NAN}, {3, INFINITY}, {4, 0.5}, {NAN, 3.0}}},
      {"huge", {{1, 1e308}, {2, -1e308}, {3, 1.0}}},
      {"tiny", ramp(12, [](int i) { return 1e-12 * i; })},
      {"title <&> \"quoted\"", ramp(30, [](int i) { return std::exp(-0.1 * i); })},
  };
  for (const auto& [title, s] : cases) {
    const std::string svg = svg_line_plot(title, s);
    EXPECT_GT(xml_elements(svg), 3) << title;
    EXPECT_EQ(svg.find("nan"), std::string::npos) << title;
    EXPECT_EQ(svg.find("inf"), std::string::npos) << title;
  }
  EXPECT_NE(svg_line_plot("e", {}).find("no data"), std::string::npos);
  EXPECT_NE(svg_line_plot("all NaN", ramp(4, [](int) { return double(NAN); })).find("no data"), std::string::npos);
  EXPECT_EQ(count(svg_line_plot("one", {{5, 1.5}}), "<circle"), 1u);
}

// Points map onto the frame: the first at the left edge, the last at the right, the smallest
// value lowest; the EMA is drawn over the raw line once there are enough points.
TEST(SvgPlot, LinePlacesPointsAndSmooths) {
  const Series s = ramp(40, [](int i) { return 10.0 / i; });
  const std::string svg = svg_line_plot("loss", s);
  std::smatch m;
  std::vector<std::string> paths;
  const std::regex path_re("<path d=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), path_re); it != std::sregex_iterator(); ++it)
    paths.push_back((*it)[1]);
  ASSERT_EQ(paths.size(), 2u);  // raw + smoothed
  ASSERT_TRUE(std::regex_search(paths[0], m, std::regex("^M([0-9.]+),([0-9.]+)")));
  const double x_first = std::stod(m[1]), y_first = std::stod(m[2]);
  ASSERT_TRUE(std::regex_search(paths[0], m, std::regex("L([0-9.]+),([0-9.]+)$")));
  const double x_last = std::stod(m[1]), y_last = std::stod(m[2]);
  EXPECT_NEAR(x_first, 80, 0.1);       // left margin
  EXPECT_NEAR(x_last, 720 - 24, 0.1);  // right edge of the frame
  EXPECT_LT(y_first, y_last);          // the largest loss is highest (smallest y)
  EXPECT_EQ(count(paths[0], " L"), 39u);
  // TensorBoard's debiased EMA starts at the first value: both lines begin at the same point.
  EXPECT_EQ(paths[1].substr(0, paths[1].find(' ')), paths[0].substr(0, paths[0].find(' ')));
  LinePlot raw;
  raw.title = "lr", raw.series = s, raw.smoothing = 0;
  EXPECT_EQ(count(svg_line_plot(raw), "<path"), 1u);
}

TEST(SvgPlot, SecondSeriesGetsALegend) {
  if (python().empty()) GTEST_SKIP() << "no python3 with xml.etree to check the XML";
  LinePlot p;
  p.title = "loss", p.series = ramp(50, [](int i) { return 5.0 / i; });
  p.second = {{10, 0.9}, {20, 0.5}, {30, NAN}, {50, 0.2}};
  p.series_name = "train", p.second_name = "eval <loss>";
  const std::string svg = svg_line_plot(p);
  EXPECT_GT(xml_elements(svg), 10);
  EXPECT_EQ(count(svg, "<circle"), 3u);  // one marker per finite eval point
  EXPECT_NE(svg.find("eval &lt;loss&gt;"), std::string::npos);
  EXPECT_NE(svg.find("#ff7f0e"), std::string::npos);
  // Only the second series: still plotted.
  LinePlot only;
  only.title = "x", only.second = {{1, 1.0}, {2, 2.0}};
  EXPECT_GT(xml_elements(svg_line_plot(only)), 5);
}

TEST(SvgPlot, AxisTicksAreRoundNumbers) {
  const std::string svg = svg_line_plot("t", {{0, 0.0}, {100, 1.0}});
  for (const char* tick : {">0<", ">20<", ">40<", ">60<", ">80<", ">100<", ">0.2<", ">0.4<", ">0.6<", ">0.8<"})
    EXPECT_NE(svg.find(tick), std::string::npos) << tick;
}

TEST(SvgPlot, HeatmapCellsLegendAndEdgeCases) {
  if (python().empty()) GTEST_SKIP() << "no python3 with xml.etree to check the XML";
  std::vector<std::vector<double>> c = {{0, 10, 20, 30}, {}, {5, 5, NAN, 40}};  // layer 1 dense
  const std::string svg = svg_heatmap("tokens per expert", c);
  EXPECT_GT(xml_elements(svg), 8);
  EXPECT_EQ(count(svg, "<title>"), 8u);  // one cell per (layer, expert) present
  EXPECT_NE(svg.find("layer 2 expert 3: 40</title>"), std::string::npos);
  EXPECT_NE(svg.find("fill=\"rgb(253,231,37)\"><title>layer 2 expert 3"), std::string::npos);  // max: top colour
  EXPECT_NE(svg.find("fill=\"rgb(68,1,84)\"><title>layer 0 expert 0"), std::string::npos);     // zero: bottom
  EXPECT_NE(svg.find("fill=\"#bbbbbb\"><title>layer 2 expert 2"), std::string::npos);          // NaN: grey
  EXPECT_NE(svg.find(">tokens<"), std::string::npos);
  EXPECT_GT(xml_elements(svg_heatmap("none", {})), 2);
  EXPECT_GT(xml_elements(svg_heatmap("dense", {{}, {}})), 2);
  EXPECT_GT(xml_elements(svg_heatmap("zeros", {{0, 0}, {0, 0}})), 6);
  std::vector<std::vector<double>> big(48, std::vector<double>(128, 1.0));
  EXPECT_GT(xml_elements(svg_heatmap("128 experts", big)), 48 * 128);
}

TEST(SvgPlot, WritesTheFivePlotsOfARun) {
  testing::TempDir t;
  PlotHistory h;
  h.loss = ramp(25, [](int i) { return 3.0 / i; });
  h.lr = ramp(25, [](int i) { return 1e-4 * i; });
  h.grad_norm = ramp(25, [](int i) { return 1.0 + i % 3; });
  h.eval_loss = {{10, 0.5}, {25, 0.3}};
  h.expert_load = {{1, 2, 3, 4}, {4, 3, 2, 1}};
  write_training_plots(t.path(), h);
  for (const char* f : {"train_loss.svg", "eval_loss.svg", "learning_rate.svg", "grad_norm.svg", "expert_load.svg"}) {
    const fs::path p = fs::path(t.path()) / "images" / f;
    ASSERT_TRUE(fs::exists(p)) << f;
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    EXPECT_NE(ss.str().find("</svg>"), std::string::npos) << f;
    if (!python().empty()) {
      EXPECT_GT(xml_elements(ss.str()), 3) << f;
    }
  }
}

}  // namespace
}  // namespace moe::train
