// Dependency-free SVG plots of a training run, written by the trainer into OUT/images: line
// plots of a metric against the iteration (raw, plus TensorBoard's debiased 0.9 EMA, plus an
// optional second series such as eval loss) and a heatmap of tokens per expert per layer.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace moe::train {

using Series = std::vector<std::pair<double, double>>;  // (iteration, value)

struct LinePlot {
  std::string title, x_label = "iteration", y_label;
  Series series;
  std::string series_name;  // legend entry; the legend is drawn when `second` has points
  Series second;            // drawn in another colour over the first, markers when short
  std::string second_name;
  double smoothing = 0.9;  // TensorBoard's EMA weight over `series`; 0 draws only the raw line
};

// Always well-formed SVG: non-finite points are skipped, an empty plot says "no data", a single
// point is a marker, a constant series gets a non-degenerate y range.
std::string svg_line_plot(const LinePlot& plot);
std::string svg_line_plot(const std::string& title, const Series& s);

// counts[layer][expert], rows layers and columns experts, colour from 0 to the largest count
// with a legend; rows without experts (dense layers) are drawn empty. Non-finite counts draw grey.
std::string svg_heatmap(const std::string& title, const std::vector<std::vector<double>>& counts);

// What the trainer logged, for the plots.
struct PlotHistory {
  Series loss, eval_loss, lr, grad_norm;
  std::vector<std::vector<double>> expert_load;  // [layer][expert] tokens routed, summed
};

// Writes OUT/images/{train_loss,eval_loss,learning_rate,grad_norm,expert_load}.svg (creating
// images/), each replaced atomically so a reader never sees half a file.
void write_training_plots(const std::string& out_dir, const PlotHistory& h);

}  // namespace moe::train
