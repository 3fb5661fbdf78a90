// The pipeline schedules of moectl's trainer (train/pipeline_schedule.cpp) as the planner needs
// them: how many micro-batches each model chunk of a stage keeps in flight (the activation slots
// its arenas are allocated for), and the step's time on a stage given every stage's compute.
#pragma once
#include <vector>

namespace moe::plan {

// Slots of each of the vpp chunks on stage `stage` of `pp`, for `micro_batches` per pipeline:
// 1F1B keeps min(pp - stage, m); the interleaved schedule's warm-up and steady order decides
// per chunk. Without pipeline parallelism: one.
std::vector<int> pipeline_slots(int pp, int vpp, int stage, int micro_batches);

// The pipeline's schedule time (seconds) when stage s computes `stage_s[s]` per micro-batch
// (forward + backward through all its vpp chunks): ((m v - 1) max + sum) / v, as the trainer's
// pipeline report reads its stages (apps/moectl/train.cpp): the slowest stage sets the steady
// pace, and every stage's chunk passes once while the pipeline fills and drains. With equal
// stages c that is c (m v + p - 1) / v: the 1F1B bubble (p - 1) / (m + p - 1), interleaved
// (p - 1) / (v m + p - 1).
double pipeline_step_s(const std::vector<double>& stage_s, int vpp, int micro_batches);

}  // namespace moe::plan
