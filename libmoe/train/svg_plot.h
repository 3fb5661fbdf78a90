// Dependency-free SVG plots of a training run, written into OUT/images: line plots of a metric
// against the iteration (raw, plus a TensorBoard-style 0.9 EMA when there are enough points)
// and a heatmap of tokens per expert per layer.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace moe::train {

using Series = std::vector<std::pair<double, double>>;  // (iteration, value)

// Non-finite points are skipped; an empty series draws empty axes with "no data".
std::string svg_line_plot(const std::string& title, const Series& s);
// counts[layer][expert]; rows without experts (dense layers) are drawn empty.
std::string svg_heatmap(const std::string& title, const std::vector<std::vector<double>>& counts);

}  // namespace moe::train
