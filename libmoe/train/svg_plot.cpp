#include "train/svg_plot.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>

#include <fmt/format.h>

#include "core/error.h"
#include "core/mapped_file.h"

namespace moe::train {

namespace {

constexpr double kW = 720, kH = 440, kL = 80, kR = 24, kT = 44, kB = 56;  // size and margins
constexpr const char* kBlue = "#1f77b4";
constexpr const char* kPale = "#aec7e8";
constexpr const char* kOrange = "#ff7f0e";

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default:
        // Control characters other than tab/newline are not allowed in XML 1.0.
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n') o += c;
    }
  }
  return o;
}

std::string header(const std::string& title) {
  return fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"26\" text-anchor=\"middle\" font-size=\"16\">{3}</text>\n",
      kW, kH, kW / 2, escape(title));
}

// Finite and far enough from overflow that spans and pixel maths stay finite.
bool usable(double v) { return std::isfinite(v) && std::fabs(v) < 1e300; }

Series clean(const Series& s) {
  Series o;
  for (const auto& p : s)
    if (usable(p.first) && usable(p.second)) o.push_back(p);
  return o;
}

// "Nice" tick positions (1, 2, 5 x 10^k steps) covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target = 5) {
  const double span = hi - lo;
  const double raw = span / target, mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / mag, step = (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag;
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9 && t.size() < 20; v += step)
    t.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  return t;
}

// TensorBoard's smoothing: an EMA started at 0 and divided by (1 - w^n) to remove the start bias.
Series smooth(const Series& s, double w) {
  Series o;
  double last = 0, n = 0;
  for (const auto& [x, y] : s) {
    last = last * w + (1 - w) * y, ++n;
    o.push_back({x, last / (1 - std::pow(w, n))});
  }
  return o;
}

}  // namespace

std::string svg_line_plot(const LinePlot& plot) {
  const Series a = clean(plot.series), b = clean(plot.second);
  std::string out = header(plot.title);
  const double x_axis = kH - kB, plot_w = kW - kL - kR, plot_h = kH - kT - kB;
  out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", kL + plot_w / 2, kH - 12,
                     escape(plot.x_label));
  if (!plot.y_label.empty())
    out += fmt::format("<text x=\"16\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {0})\">{1}</text>\n",
                       kT + plot_h / 2, escape(plot.y_label));
  out += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n", kL, kT,
                     plot_w, plot_h);
  if (a.empty() && b.empty())
    return out + fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n</svg>\n",
                             kL + plot_w / 2, kT + plot_h / 2);
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const Series* s : {&a, &b})
    for (const auto& [x, y] : *s)
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (x1 == x0) x0 -= 1, x1 += 1;
  if (y1 == y0) {
    const double d = std::max(std::fabs(y0) * 0.1, 1e-12);
    y0 -= d, y1 += d;
  }
  const double pad = (y1 - y0) * 0.05;  // keep the extremes off the frame
  y0 -= pad, y1 += pad;
  auto px = [&](double x) { return kL + (x - x0) / (x1 - x0) * plot_w; };
  auto py = [&](double y) { return x_axis - (y - y0) / (y1 - y0) * plot_h; };
  for (double v : nice_ticks(x0, x1)) {
    out += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"black\"/>\n", px(v), x_axis,
                       x_axis + 5);
    out += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:.6g}</text>\n", px(v), x_axis + 19, v);
  }
  for (double v : nice_ticks(y0, y1)) {
    out += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"#e5e5e5\"/>\n", kL, py(v),
                       kL + plot_w, py(v));
    out += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.4g}</text>\n", kL - 6, py(v) + 4, v);
  }
  auto path = [&](const Series& pts, const char* colour, double width) {
    std::string d;
    for (const auto& [x, y] : pts) d += fmt::format("{}{:.1f},{:.1f}", d.empty() ? "M" : " L", px(x), py(y));
    return fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\" stroke-linejoin=\"round\"/>\n",
                       d, colour, width);
  };
  auto markers = [&](const Series& pts, const char* colour) {
    std::string m;
    for (const auto& [x, y] : pts)
      m += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", px(x), py(y), colour);
    return m;
  };
  if (a.size() == 1) {
    out += markers(a, kBlue);
  } else if (a.size() >= 10 && plot.smoothing > 0 && plot.smoothing < 1) {
    out += path(a, kPale, 1) + path(smooth(a, plot.smoothing), kBlue, 2);
  } else if (!a.empty()) {
    out += path(a, kBlue, 2);
  }
  if (!b.empty()) {
    if (b.size() > 1) out += path(b, kOrange, 2);
    if (b.size() <= 50) out += markers(b, kOrange);
    const double lx = kL + plot_w - 150, ly = kT + 10;  // legend, top right
    out +=
        fmt::format("<rect x=\"{}\" y=\"{}\" width=\"144\" height=\"40\" fill=\"white\" stroke=\"#ccc\"/>\n", lx, ly);
    const std::string n1 = plot.series_name.empty() ? "train" : plot.series_name;
    const std::string n2 = plot.second_name.empty() ? "eval" : plot.second_name;
    out += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{3}\" stroke-width=\"2\"/>\n",
                       lx + 8, ly + 13, lx + 28, kBlue);
    out += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", lx + 34, ly + 17, escape(n1));
    out += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{3}\" stroke-width=\"2\"/>\n",
                       lx + 8, ly + 29, lx + 28, kOrange);
    out += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", lx + 34, ly + 33, escape(n2));
  }
  return out + "</svg>\n";
}

std::string svg_line_plot(const std::string& title, const Series& s) {
  LinePlot p;
  p.title = title, p.series = s;
  return svg_line_plot(p);
}

namespace {
// A perceptually ordered scale (viridis' end points and middle), interpolated in RGB.
std::string colour(double f) {
  static constexpr std::array<std::array<double, 3>, 5> stops = {
      {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}}};
  f = std::clamp(f, 0.0, 1.0) * double(stops.size() - 1);
  const size_t i = std::min(size_t(f), stops.size() - 2);
  const double t = f - double(i);
  int c[3];
  for (int k = 0; k < 3; ++k) c[k] = int(std::lround(stops[i][size_t(k)] * (1 - t) + stops[i + 1][size_t(k)] * t));
  return fmt::format("rgb({},{},{})", c[0], c[1], c[2]);
}
}  // namespace

std::string svg_heatmap(const std::string& title, const std::vector<std::vector<double>>& counts) {
  std::string out = header(title);
  size_t E = 0;
  double mx = 0;
  for (const auto& row : counts) {
    E = std::max(E, row.size());
    for (double v : row)
      if (usable(v)) mx = std::max(mx, v);
  }
  if (counts.empty() || E == 0)
    return out + fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no experts</text>\n</svg>\n",
                             kW / 2, kH / 2);
  const double legend_w = 90, grid_w = kW - kL - kR - legend_w, grid_h = kH - kT - kB;
  const double cw = grid_w / double(E), ch = grid_h / double(counts.size());
  const size_t ystep = std::max<size_t>(1, (counts.size() + 15) / 16), xstep = std::max<size_t>(1, (E + 15) / 16);
  for (size_t l = 0; l < counts.size(); ++l) {
    if (l % ystep == 0)
      out += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n", kL - 6,
                         kT + ch * (double(l) + 0.5) + 4, l);
    for (size_t e = 0; e < counts[l].size(); ++e) {
      const double v = counts[l][e];
      out += fmt::format(
          "<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\"><title>layer {} expert {}: "
          "{:.6g}</title></rect>\n",
          kL + cw * double(e), kT + ch * double(l), cw, ch, usable(v) ? colour(mx > 0 ? v / mx : 0) : "#bbbbbb", l, e,
          v);
    }
  }
  out += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n", kL, kT,
                     grid_w, grid_h);
  for (size_t e = 0; e < E; e += xstep)
    out += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", kL + cw * (double(e) + 0.5),
                       kH - kB + 16, e);
  out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">expert</text>\n", kL + grid_w / 2, kH - 12);
  out += fmt::format("<text x=\"16\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {0})\">layer</text>\n",
                     kT + grid_h / 2);
  // Legend: a vertical gradient from 0 (bottom) to the largest count (top).
  const double gx = kL + grid_w + 24, steps = 32, sh = grid_h / steps;
  for (int i = 0; i < int(steps); ++i)
    out += fmt::format("<rect x=\"{}\" y=\"{:.2f}\" width=\"16\" height=\"{:.2f}\" fill=\"{}\"/>\n", gx,
                       kT + grid_h - sh * (i + 1), sh + 0.5, colour((i + 0.5) / steps));
  out += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"16\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n", gx, kT,
                     grid_h);
  out += fmt::format("<text x=\"{}\" y=\"{}\">{:.4g}</text>\n", gx + 20, kT + 10, mx);
  out += fmt::format("<text x=\"{}\" y=\"{}\">0</text>\n", gx + 20, kT + grid_h);
  out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">tokens</text>\n", gx + 8, kT - 6);
  return out + "</svg>\n";
}

void write_training_plots(const std::string& out_dir, const PlotHistory& h) {
  namespace fs = std::filesystem;
  const fs::path img = fs::path(out_dir) / "images";
  std::error_code ec;
  fs::create_directories(img, ec);
  if (ec) throw_input("cannot create {} ({}); check that the output directory is writable", img.string(), ec.message());
  LinePlot loss;
  loss.title = "train loss", loss.y_label = "loss", loss.series = h.loss, loss.series_name = "train";
  loss.second = h.eval_loss, loss.second_name = "eval";
  write_file_atomic((img / "train_loss.svg").string(), svg_line_plot(loss));
  LinePlot eval;
  eval.title = "eval loss", eval.y_label = "loss", eval.series = h.eval_loss, eval.smoothing = 0;
  write_file_atomic((img / "eval_loss.svg").string(), svg_line_plot(eval));
  LinePlot lr;
  lr.title = "learning rate", lr.y_label = "lr", lr.series = h.lr, lr.smoothing = 0;
  write_file_atomic((img / "learning_rate.svg").string(), svg_line_plot(lr));
  LinePlot gn;
  gn.title = "grad norm (before clipping)", gn.y_label = "L2 norm", gn.series = h.grad_norm;
  write_file_atomic((img / "grad_norm.svg").string(), svg_line_plot(gn));
  write_file_atomic((img / "expert_load.svg").string(), svg_heatmap("tokens per expert per layer", h.expert_load));
}

}  // namespace moe::train
