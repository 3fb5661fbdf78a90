#include "train/dataset.h"

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "core/mapped_file.h"
#include "text/chat_rows.h"

namespace moe::train {

namespace fs = std::filesystem;

namespace {

using Conversation = std::vector<text::Message>;

struct Spec {
  std::string name;  // path, "self-cognition" or "dummy"
  int64_t n = -1;    // #N, -1 = all rows
};

Spec parse_spec(const std::string& s) {
  if (fs::exists(s)) return {s, -1};  // a path wins even if it contains '#'
  Spec spec{s, -1};
  if (auto h = s.rfind('#'); h != std::string::npos) {
    const std::string num = s.substr(h + 1);
    if (num.empty() || !std::all_of(num.begin(), num.end(), ::isdigit))
      throw_input("--dataset '{}': the part after '#' must be a row count", s);
    spec.name = s.substr(0, h), spec.n = std::stoll(num);
  }
  if (spec.name == "swift/self-cognition" || spec.name == "modelscope/self-cognition") spec.name = "self-cognition";
  return spec;
}

void substitute(std::string& s, const std::string& key, const std::string& value) {
  for (size_t p = s.find(key); p != std::string::npos; p = s.find(key, p + value.size())) s.replace(p, key.size(), value);
}

// Rows of a .jsonl (one object per line) or .json (an array of objects) text.
std::vector<nlohmann::json> parse_rows(const std::string& text, const std::string& file) {
  std::vector<nlohmann::json> rows;
  const bool array = file.size() >= 5 && file.compare(file.size() - 5, 5, ".json") == 0;
  if (array) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_array()) throw_input("{}: a .json dataset must be one JSON array of rows", file);
    for (auto& r : j) rows.push_back(std::move(r));
    return rows;
  }
  std::istringstream in(text);
  std::string line;
  for (int ln = 1; std::getline(in, line); ++ln) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) throw_input("{}:{}: not valid JSON", file, ln);
    j["__where"] = file + ":" + std::to_string(ln);
    rows.push_back(std::move(j));
  }
  return rows;
}

// #N: fewer rows sample without replacement; more repeat the whole set, then sample the rest.
std::vector<size_t> sample_indices(size_t size, int64_t n, std::mt19937_64& rng) {
  std::vector<size_t> all(size);
  std::iota(all.begin(), all.end(), size_t(0));
  if (n < 0) return all;
  std::vector<size_t> out;
  for (int64_t r = 0; r < n / int64_t(size); ++r) out.insert(out.end(), all.begin(), all.end());
  std::shuffle(all.begin(), all.end(), rng);
  out.insert(out.end(), all.begin(), all.begin() + (n % int64_t(size)));
  return out;
}

std::vector<Conversation> load_spec(const std::string& raw, const DatasetOptions& o, std::mt19937_64& rng,
                                    const text::Tokenizer& tok, std::vector<Sample>* dummies) {
  const Spec spec = parse_spec(raw);
  std::vector<nlohmann::json> rows;
  std::string file = spec.name;
  if (spec.name == "dummy") {
    if (spec.n <= 0) throw_input("--dataset dummy needs a row count, e.g. dummy#1000");
    std::uniform_int_distribution<int32_t> id(0, tok.vocab_size() - 1);
    for (int64_t r = 0; r < spec.n; ++r) {
      Sample s;
      s.tokens.resize(size_t(o.max_length));
      for (auto& t : s.tokens) t = id(rng);
      s.labels.assign(s.tokens.begin() + 1, s.tokens.end());
      s.labels.push_back(-100);
      dummies->push_back(std::move(s));
    }
    return {};
  }
  if (spec.name == "self-cognition") {
    rows = parse_rows(self_cognition_jsonl(), "self-cognition.jsonl");
  } else {
    if (!fs::exists(spec.name)) {
      if (spec.name.find('/') != std::string::npos && spec.name.find('.') == std::string::npos)
        throw_input("--dataset '{}' looks like a hub id; moectl reads local files only: download it (e.g. "
                    "`modelscope download --dataset {} --local_dir DIR`) and pass DIR's .jsonl file",
                    spec.name, spec.name);
      throw_input("--dataset '{}': no such file (moectl reads local .jsonl/.json files, or self-cognition, dummy#N)",
                  spec.name);
    }
    rows = parse_rows(read_text_file(spec.name), spec.name);
  }
  if (rows.empty()) throw_input("--dataset '{}' has no rows", raw);
  std::vector<Conversation> out;
  for (size_t i : sample_indices(rows.size(), spec.n, rng)) {
    nlohmann::json row = rows[i];
    const std::string where = row.contains("__where") ? row["__where"].get<std::string>() : file;
    row.erase("__where");
    if (spec.name == "self-cognition") {
      const bool zh = row.value("tag", "") == "zh";
      auto pick = [&](const std::vector<std::string>& v) { return v.empty() ? "" : v[zh || v.size() == 1 ? 0 : 1]; };
      for (const char* k : {"query", "response"}) {
        std::string s = row.value(k, "");
        if (!o.model_name.empty()) substitute(s, "{{NAME}}", pick(o.model_name));
        if (!o.model_author.empty()) substitute(s, "{{AUTHOR}}", pick(o.model_author));
        row[k] = s;
      }
    }
    out.push_back(text::parse_conversation(row, where));
  }
  return out;
}

// Token ids and labels of one conversation; nullopt-like empty sample if it has no loss token.
Sample tokenize(const Conversation& conv, const DatasetOptions& o, const text::Tokenizer& tok,
                const text::ChatTemplate& tmpl) {
  Conversation c = conv;
  // System precedence: the row's own > --system > the template's default.
  if (!o.pretrain && (c.empty() || c.front().role != "system")) {
    const std::string sys = o.system_given ? o.system : tmpl.default_system();
    if (!sys.empty()) c.insert(c.begin(), {"system", sys});
  }
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  if (o.pretrain && c.size() == 1 && c[0].role == "assistant") {
    // Generation template: [bos] text <eos>, every token trained.
    if (tok.bos_id() >= 0) ids.push_back(tok.bos_id());
    auto body = tok.encode(c[0].content);
    ids.insert(ids.end(), body.begin(), body.end());
    if (tok.eos_id() >= 0) ids.push_back(tok.eos_id());
    mask.assign(ids.size(), 1);
  } else {
    auto r = tmpl.render(c, tok, false);
    ids = std::move(r.ids);
    mask = o.pretrain ? std::vector<uint8_t>(ids.size(), 1) : std::move(r.loss_mask);
  }
  Sample s;
  s.tokens = ids;
  s.labels.assign(ids.size(), -100);
  for (size_t t = 0; t + 1 < ids.size(); ++t)
    if (mask[t + 1]) s.labels[t] = ids[t + 1];
  return s;
}

bool truncate(Sample& s, const DatasetOptions& o) {
  const size_t L = size_t(o.max_length);
  if (s.tokens.size() <= L) return true;
  if (o.truncation_strategy == "delete") return false;
  if (o.truncation_strategy == "left") {
    s.tokens.erase(s.tokens.begin(), s.tokens.end() - long(L));
    s.labels.erase(s.labels.begin(), s.labels.end() - long(L));
  } else {
    s.tokens.resize(L), s.labels.resize(L);
    s.labels.back() = -100;  // its target was cut off
  }
  return true;
}

std::vector<Sample> build(const std::vector<std::string>& specs, const DatasetOptions& o, std::mt19937_64& rng,
                          const text::Tokenizer& tok, const text::ChatTemplate& tmpl, Datasets& d) {
  std::vector<Sample> out;
  for (const auto& spec : specs) {
    std::vector<Sample> dummies;
    for (const auto& conv : load_spec(spec, o, rng, tok, &dummies)) {
      ++d.rows_read;
      Sample s = tokenize(conv, o, tok, tmpl);
      if (!truncate(s, o)) {
        ++d.dropped_too_long;
        continue;
      }
      if (std::none_of(s.labels.begin(), s.labels.end(), [](int32_t l) { return l >= 0; })) continue;
      out.push_back(std::move(s));
    }
    d.rows_read += int64_t(dummies.size());
    for (auto& s : dummies) out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

Datasets load_datasets(const DatasetOptions& o, const text::Tokenizer& tok, const text::ChatTemplate& tmpl) {
  if (o.specs.empty()) throw_input("--dataset is required (a .jsonl file, self-cognition#N or dummy#N)");
  if (o.max_length < 2) throw_input("--max_length must be at least 2, got {}", o.max_length);
  if (o.truncation_strategy != "delete" && o.truncation_strategy != "left" && o.truncation_strategy != "right")
    throw_input("--truncation_strategy '{}' is not one of delete, left, right", o.truncation_strategy);
  if (o.split_dataset_ratio < 0 || o.split_dataset_ratio >= 1)
    throw_input("--split_dataset_ratio must be in [0, 1), got {}", o.split_dataset_ratio);
  if (!o.val_specs.empty() && o.split_dataset_ratio > 0)
    throw_input("--val_dataset and --split_dataset_ratio are exclusive (set --split_dataset_ratio 0)");
  std::mt19937_64 rng(o.seed);
  Datasets d;
  d.train = build(o.specs, o, rng, tok, tmpl, d);
  if (!o.val_specs.empty()) d.val = build(o.val_specs, o, rng, tok, tmpl, d);
  if (o.split_dataset_ratio > 0 && d.train.size() > 1) {
    std::shuffle(d.train.begin(), d.train.end(), rng);
    const size_t nval = std::max<size_t>(1, size_t(double(d.train.size()) * o.split_dataset_ratio));
    d.val.assign(std::make_move_iterator(d.train.end() - long(nval)), std::make_move_iterator(d.train.end()));
    d.train.resize(d.train.size() - nval);
  }
  if (d.dropped_too_long > 0)
    log().warn("dropped {} of {} rows longer than --max_length {} (--truncation_strategy delete)", d.dropped_too_long,
               d.rows_read, o.max_length);
  if (d.train.empty()) throw_input("--dataset: no trainable rows left (all too long or without assistant turns)");
  return d;
}

}  // namespace moe::train
