#include "train/svg_plot.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace moe::train {

namespace {
constexpr double kW = 640, kH = 400, kL = 70, kR = 20, kT = 40, kB = 50;

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) o += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : std::string(1, c);
  return o;
}

std::string header(const std::string& title) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">{}</text>\n",
      kW, kH, kW / 2, escape(title));
}
}  // namespace

std::string svg_line_plot(const std::string& title, const Series& raw) {
  Series s;
  for (const auto& p : raw)
    if (std::isfinite(p.first) && std::isfinite(p.second)) s.push_back(p);
  std::string out = header(title);
  out += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", kL, kH - kB, kW - kR, kH - kB);
  out += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", kL, kT, kL, kH - kB);
  out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">iteration</text>\n", (kL + kW - kR) / 2, kH - 10);
  if (s.empty()) {
    out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>\n</svg>\n", kW / 2, kH / 2);
    return out;
  }
  double x0 = s.front().first, x1 = s.front().first, y0 = s.front().second, y1 = s.front().second;
  for (const auto& [x, y] : s) x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (x1 == x0) x0 -= 1, x1 += 1;
  if (y1 == y0) y0 -= std::max(1e-12, std::fabs(y0) * 0.1), y1 += std::max(1e-12, std::fabs(y1) * 0.1);
  auto px = [&](double x) { return kL + (x - x0) / (x1 - x0) * (kW - kL - kR); };
  auto py = [&](double y) { return kH - kB - (y - y0) / (y1 - y0) * (kH - kT - kB); };
  for (int i = 0; i <= 4; ++i) {  // ticks
    const double xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    out += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:.6g}</text>\n", px(xv), kH - kB + 16, xv);
    out += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.4g}</text>\n", kL - 6, py(yv) + 4, yv);
    out += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"#eee\"/>\n", kL, py(yv), kW - kR, py(yv));
  }
  auto path = [&](const Series& pts, const char* colour, double width) {
    std::string d;
    for (const auto& [x, y] : pts) d += fmt::format("{}{:.1f},{:.1f}", d.empty() ? "M" : " L", px(x), py(y));
    return fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\"/>\n", d, colour, width);
  };
  if (s.size() == 1) {
    out += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"#1f77b4\"/>\n", px(s[0].first), py(s[0].second));
  } else if (s.size() >= 10) {
    Series ema;
    double v = s.front().second;
    for (const auto& [x, y] : s) ema.push_back({x, v = 0.9 * v + 0.1 * y});
    out += path(s, "#9ecae1", 1) + path(ema, "#1f77b4", 2);
  } else {
    out += path(s, "#1f77b4", 2);
  }
  return out + "</svg>\n";
}

std::string svg_heatmap(const std::string& title, const std::vector<std::vector<double>>& c) {
  std::string out = header(title);
  size_t E = 0;
  double mx = 0;
  for (const auto& row : c) {
    E = std::max(E, row.size());
    for (double v : row) mx = std::max(mx, v);
  }
  if (c.empty() || E == 0) return out + "<text x=\"320\" y=\"200\" text-anchor=\"middle\">no experts</text>\n</svg>\n";
  const double cw = (kW - kL - kR - 60) / double(E), ch = (kH - kT - kB) / double(c.size());
  for (size_t l = 0; l < c.size(); ++l) {
    out += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">layer {}</text>\n", kL - 6, kT + ch * (l + 0.5) + 4, l);
    for (size_t e = 0; e < c[l].size(); ++e) {
      const double f = mx > 0 ? c[l][e] / mx : 0;
      const int r = int(255 - 200 * f), g = int(255 - 120 * f), b = 255;
      out += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"rgb({},{},{})\"><title>layer {} expert {}: {:.0f}</title></rect>\n",
                         kL + cw * e, kT + ch * l, cw, ch, r, g, b, l, e, c[l][e]);
    }
  }
  for (size_t e = 0; e < E; e += std::max<size_t>(1, E / 16))
    out += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", kL + cw * (e + 0.5), kH - kB + 16, e);
  out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">expert (colour: tokens routed, max {:.0f})</text>\n",
                     (kL + kW - kR - 60) / 2, kH - 10, mx);
  return out + "</svg>\n";
}

}  // namespace moe::train
