#include "train/dataset.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <exception>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "core/mapped_file.h"
#include "text/chat_rows.h"

namespace moe::train {

namespace fs = std::filesystem;

namespace {

using text::Conversation;

struct Row {
  Conversation conv;
  std::string where;  // file:line, for errors
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void substitute(std::string& s, const std::string& key, const std::string& value) {
  for (size_t p = s.find(key); p != std::string::npos; p = s.find(key, p + value.size()))
    s.replace(p, key.size(), value);
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& x : v) out += (out.empty() ? "" : " / ") + x;
  return out;
}

// Rows of a .jsonl (one object per line) or .json text. A .json file is one array of rows, or
// JSON lines under a .json name (HF datasets reads both). Each row gets "__where" for errors.
std::vector<nlohmann::json> parse_rows(const std::string& text, const std::string& file) {
  std::vector<nlohmann::json> rows;
  if (ends_with(file, ".json")) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    // One object is JSON lines with a single line (QA #20 refused it), read below.
    if (!j.is_discarded() && !j.is_object()) {
      if (!j.is_array()) throw_input("{}: a .json dataset must be one JSON array of rows (or JSON lines)", file);
      for (size_t i = 0; i < j.size(); ++i) {
        if (j[i].is_object()) j[i]["__where"] = file + "[" + std::to_string(i) + "]";
        rows.push_back(std::move(j[i]));
      }
      return rows;
    }
  }
  std::istringstream in(text);
  std::string line;
  for (int ln = 1; std::getline(in, line); ++ln) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) throw_input("{}:{}: not valid JSON (each line must be one JSON object)", file, ln);
    if (!j.is_object()) throw_input("{}:{}: each line must be a JSON object", file, ln);
    j["__where"] = file + ":" + std::to_string(ln);
    rows.push_back(std::move(j));
  }
  return rows;
}

// #N: fewer rows sample without replacement; more repeat the whole set N / size times, then
// sample the remaining N % size without replacement (swift's rule).
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

[[noreturn]] void missing_dataset(const std::string& name) {
  std::string prefix = name.substr(0, 4);
  for (auto& ch : prefix) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  const bool hub = prefix == "ms::" || prefix == "hf::" ||
                   (name.find('/') != std::string::npos && !ends_with(name, ".jsonl") && !ends_with(name, ".json") &&
                    name.front() != '.' && name.front() != '/');
  if (hub)
    throw_input(
        "--dataset '{}' is not a local file, and moectl reads local files only (no hub downloads): download "
        "it first (e.g. `modelscope download --dataset {} --local_dir data/`) and pass the .jsonl/.json file",
        name, name);
  throw_input("--dataset '{}': no such file (moectl reads local .jsonl/.json files, self-cognition or dummy#N)", name);
}

// self-cognition's {{NAME}}/{{AUTHOR}}: zh rows take element 0, others element 1; one value serves both.
void fill_self_cognition(nlohmann::json& row, const DatasetOptions& o) {
  const bool zh = row.value("tag", "") == "zh";
  auto pick = [&](const std::vector<std::string>& v) { return v[zh || v.size() == 1 ? 0 : 1]; };
  for (const char* k : {"query", "response"}) {
    if (!row.contains(k) || !row[k].is_string()) continue;
    std::string s = row[k].get<std::string>();
    if (!o.model_name.empty()) substitute(s, "{{NAME}}", pick(o.model_name));
    if (!o.model_author.empty()) substitute(s, "{{AUTHOR}}", pick(o.model_author));
    row[k] = s;
  }
}

std::vector<Row> load_spec(const std::string& raw, const DatasetOptions& o, std::mt19937_64& rng,
                           const text::Tokenizer& tok, std::vector<Sample>* dummies) {
  const DatasetSpec spec = parse_dataset_spec(raw);
  if (spec.name == "dummy") {
    if (spec.n <= 0) throw_input("--dataset dummy needs a row count, e.g. dummy#1000");
    std::uniform_int_distribution<int32_t> id(0, tok.vocab_size() - 1);
    for (int64_t r = 0; r < spec.n; ++r) {
      Sample s;
      s.tokens.resize(static_cast<size_t>(o.max_length));
      for (auto& t : s.tokens) t = id(rng);
      s.labels.assign(s.tokens.begin() + 1, s.tokens.end());
      s.labels.push_back(-100);
      dummies->push_back(std::move(s));
    }
    return {};
  }
  std::vector<nlohmann::json> rows;
  std::string file = spec.name;
  const bool self_cognition = spec.name == "self-cognition";
  if (self_cognition) {
    file = "self-cognition.jsonl";
    rows = parse_rows(self_cognition_jsonl(), file);
    if (o.model_name.empty() || o.model_author.empty())
      log().warn("{}",
                 "--dataset self-cognition without --model_name and --model_author: the {{NAME}} and "
                 "{{AUTHOR}} placeholders stay literal");
    else log().info("self-cognition: name {}, author {}", join(o.model_name), join(o.model_author));
  } else {
    if (!fs::is_regular_file(spec.name)) missing_dataset(spec.name);
    rows = parse_rows(read_text_file(spec.name), spec.name);
  }
  if (rows.empty()) throw_input("--dataset '{}' has no rows", raw);
  std::vector<Row> out;
  for (size_t i : sample_indices(rows.size(), spec.n, rng)) {
    nlohmann::json row = rows[i];
    std::string where = file;
    if (row.is_object() && row.contains("__where")) {
      where = row["__where"].get<std::string>();
      row.erase("__where");
    }
    if (self_cognition) fill_self_cognition(row, o);
    out.push_back({text::parse_conversation_row(row, where), where});
  }
  return out;
}

// Token ids and labels of one conversation (labels all -100 when nothing is trained).
Sample tokenize(Row row, const DatasetOptions& o, const text::Tokenizer& tok, const text::ChatTemplate& tmpl) {
  auto& msgs = row.conv.messages;
  auto& loss = row.conv.loss;
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  if (o.pretrain && msgs.size() == 1 && msgs[0].role == "assistant") {
    // Generation template: [bos] text <eos>, every token trained.
    if (tok.bos_id() >= 0) ids.push_back(tok.bos_id());
    const auto body = tok.encode(msgs[0].content);
    ids.insert(ids.end(), body.begin(), body.end());
    if (tok.eos_id() >= 0) ids.push_back(tok.eos_id());
    mask.assign(ids.size(), loss[0] == 0 ? 0 : 1);
  } else {
    // System precedence: the row's own > --system > the template's default (sft only; pt
    // trains on the text as given).
    if (!o.pretrain && (msgs.empty() || msgs.front().role != "system")) {
      const std::string sys = o.system_given ? o.system : tmpl.default_system();
      if (!sys.empty()) msgs.insert(msgs.begin(), {"system", sys}), loss.insert(loss.begin(), int8_t(-1));
    }
    // A reply with no question (a text row in sft) gets an empty user turn, as swift does.
    const size_t first = !msgs.empty() && msgs[0].role == "system" ? 1 : 0;
    if (first < msgs.size() && msgs[first].role == "assistant") {
      msgs.insert(msgs.begin() + long(first), {"user", ""});
      loss.insert(loss.begin() + long(first), int8_t(-1));
    }
    auto r = tmpl.render(msgs, tok, false);
    ids = std::move(r.ids);
    mask = std::move(r.loss_mask);
    if (o.pretrain) {
      // Every token, except replies the row marks "loss": false.
      std::vector<uint8_t> kept = mask;
      text::apply_loss_overrides(row.conv, kept, row.where);
      for (size_t t = 0; t < mask.size(); ++t) mask[t] = mask[t] && !kept[t] ? 0 : 1;
    } else {
      text::apply_loss_overrides(row.conv, mask, row.where);
    }
  }
  // The target of position t is token t + 1; the first token is never a target.
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

// Every row tokenised, on --dataset_num_proc threads (each row is independent; the tokenizers
// are safe to share). The samples keep the rows' order, and a bad row fails with the error of
// the first bad row, so the result does not depend on the thread count.
std::vector<Sample> tokenize_all(std::vector<Row> rows, const DatasetOptions& o, const text::Tokenizer& tok,
                                 const text::ChatTemplate& tmpl) {
  std::vector<Sample> out(rows.size());
  const size_t threads = std::clamp<size_t>(size_t(std::max(o.num_proc, 1)), 1, std::max<size_t>(rows.size(), 1));
  std::vector<std::exception_ptr> error(rows.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < rows.size(); i = next++) {
      try {
        out[i] = tokenize(std::move(rows[i]), o, tok, tmpl);
      } catch (...) {
        error[i] = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  for (const auto& e : error)
    if (e) std::rethrow_exception(e);
  return out;
}

std::vector<Sample> build(const std::vector<std::string>& specs, const DatasetOptions& o, std::mt19937_64& rng,
                          const text::Tokenizer& tok, const text::ChatTemplate& tmpl, Datasets& d) {
  std::vector<Sample> out;
  for (const auto& spec : specs) {
    std::vector<Sample> dummies;
    std::vector<Row> rows = load_spec(spec, o, rng, tok, &dummies);
    std::vector<Sample> samples = tokenize_all(std::move(rows), o, tok, tmpl);
    for (auto& s : samples) {
      ++d.rows_read;
      if (!truncate(s, o)) {
        ++d.dropped_too_long;
        continue;
      }
      if (std::none_of(s.labels.begin(), s.labels.end(), [](int32_t l) { return l >= 0; })) {
        ++d.dropped_no_loss;
        continue;
      }
      out.push_back(std::move(s));
    }
    d.rows_read += int64_t(dummies.size());
    for (auto& s : dummies) out.push_back(std::move(s));
  }
  return out;
}

// A dummy#N sample: max_length random ids, each the next one's label.
Sample dummy_sample(const DatasetOptions& o, const text::Tokenizer& tok, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> id(0, tok.vocab_size() - 1);
  Sample s;
  s.tokens.resize(static_cast<size_t>(o.max_length));
  for (auto& t : s.tokens) t = id(rng);
  s.labels.assign(s.tokens.begin() + 1, s.tokens.end());
  s.labels.push_back(-100);
  return s;
}

bool trainable(const Sample& s) {
  return std::any_of(s.labels.begin(), s.labels.end(), [](int32_t l) { return l >= 0; });
}

}  // namespace

// One spec of a stream as it is read: a .jsonl file line by line, or rows parsed whole.
struct SampleStream::Source {
  std::string raw;  // the spec as given
  DatasetSpec spec;
  bool self_cognition = false, dummy = false;
  std::ifstream in;  // .jsonl (and other non-.json names): read lazily
  int line = 0;
  std::vector<nlohmann::json> rows;  // self-cognition and .json files
  size_t index = 0;
  int64_t taken = 0;  // rows given from this spec (#N counts them)
  bool any = false;   // the spec has given a row
  std::mt19937_64 rng;

  Source(const std::string& r, const DatasetOptions& o) : raw(r), spec(parse_dataset_spec(r)), rng(o.seed) {
    if (spec.name == "dummy") {
      if (spec.n <= 0) throw_input("--dataset dummy needs a row count, e.g. dummy#1000");
      dummy = true;
    } else if (spec.name == "self-cognition") {
      self_cognition = true;
      rows = parse_rows(self_cognition_jsonl(), "self-cognition.jsonl");
    } else if (!fs::is_regular_file(spec.name)) {
      missing_dataset(spec.name);
    } else if (ends_with(spec.name, ".json")) {
      rows = parse_rows(read_text_file(spec.name), spec.name);
    } else {
      in.open(spec.name);
      if (!in) throw_input("--dataset '{}': cannot open the file", spec.name);
    }
  }

  // The next row and where it is from; false when the spec is done (#N rows given, or the file's
  // end without #N). With #N a shorter file is read again from its start.
  bool next(nlohmann::json& row, std::string& where) {
    if (spec.n >= 0 && taken >= spec.n) return false;
    for (;;) {
      if (in.is_open()) {
        std::string text;
        while (std::getline(in, text)) {
          ++line;
          if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
          row = nlohmann::json::parse(text, nullptr, false);
          if (row.is_discarded())
            throw_input("{}:{}: not valid JSON (each line must be one JSON object)", spec.name, line);
          if (!row.is_object()) throw_input("{}:{}: each line must be a JSON object", spec.name, line);
          where = spec.name + ":" + std::to_string(line);
          ++taken, any = true;
          return true;
        }
      } else if (index < rows.size()) {
        row = rows[index++];
        where = row.is_object() && row.contains("__where") ? row["__where"].get<std::string>() : spec.name;
        if (row.is_object()) row.erase("__where");
        ++taken, any = true;
        return true;
      }
      if (!any) throw_input("--dataset '{}' has no rows", raw);
      if (spec.n < 0) return false;
      if (in.is_open()) in.clear(), in.seekg(0), line = 0;  // #N past the file's end: from its start again
      else index = 0;
    }
  }
};

SampleStream::SampleStream(DatasetOptions o, const text::Tokenizer& tok, const text::ChatTemplate& tmpl)
    : o_(std::move(o)), tok_(tok), tmpl_(tmpl) {
  if (o_.specs.empty()) throw_input("--dataset is required (a .jsonl file, self-cognition#N or dummy#N)");
  for (const auto& raw : o_.specs) {  // every name checked before training starts
    const DatasetSpec spec = parse_dataset_spec(raw);
    if (spec.name == "dummy" && spec.n <= 0) throw_input("--dataset dummy needs a row count, e.g. dummy#1000");
    if (spec.name != "dummy" && spec.name != "self-cognition" && !fs::is_regular_file(spec.name))
      missing_dataset(spec.name);
    if (spec.name == "self-cognition" && (o_.model_name.empty() || o_.model_author.empty()))
      log().warn("{}",
                 "--dataset self-cognition without --model_name and --model_author: the {{NAME}} and "
                 "{{AUTHOR}} placeholders stay literal");
  }
}

SampleStream::~SampleStream() = default;

void SampleStream::restart() {
  src_.reset();
  spec_ = 0, rows_read_ = 0;
}

bool SampleStream::next_row(Sample& s) {
  while (spec_ < o_.specs.size()) {
    if (!src_) src_ = std::make_unique<Source>(o_.specs[spec_], o_);
    if (src_->dummy) {
      if (src_->taken < src_->spec.n) {
        ++src_->taken;
        s = dummy_sample(o_, tok_, src_->rng);
        return true;
      }
    } else {
      nlohmann::json row;
      std::string where;
      if (src_->next(row, where)) {
        if (src_->self_cognition) fill_self_cognition(row, o_);
        s = tokenize({text::parse_conversation_row(row, where), where}, o_, tok_, tmpl_);
        return true;
      }
    }
    src_.reset();
    ++spec_;
  }
  return false;
}

bool SampleStream::next(Sample& s) {
  while (next_row(s)) {
    ++rows_read_;
    if (truncate(s, o_) && trainable(s)) return true;  // otherwise skipped, as without streaming
  }
  return false;
}

DatasetSpec parse_dataset_spec(const std::string& s) {
  if (fs::exists(s)) return {s, -1};  // a path wins even if it contains '#'
  DatasetSpec spec{s, -1};
  if (auto h = s.rfind('#'); h != std::string::npos) {
    const std::string num = s.substr(h + 1);
    if (num.empty() || num.size() > 15 || !std::all_of(num.begin(), num.end(), ::isdigit) || std::stoll(num) == 0)
      throw_input("--dataset '{}': the part after '#' must be a positive row count", s);
    spec.name = s.substr(0, h), spec.n = std::stoll(num);
  }
  if (spec.name == "swift/self-cognition" || spec.name == "modelscope/self-cognition" ||
      spec.name == "ms::swift/self-cognition" || spec.name == "hf::modelscope/self-cognition")
    spec.name = "self-cognition";
  return spec;
}

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
  if (o.streaming) {
    if (o.split_dataset_ratio > 0)
      throw_input(
          "--streaming true with --split_dataset_ratio {}: a stream is read once, in order, and holds no rows back; "
          "pass --val_dataset FILE for evaluation (or --split_dataset_ratio 0)",
          o.split_dataset_ratio);
    d.stream = std::make_shared<SampleStream>(o, tok, tmpl);
    if (!o.val_specs.empty()) d.val = build(o.val_specs, o, rng, tok, tmpl, d);
    return d;
  }
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
  if (d.dropped_no_loss > 0)
    log().warn("dropped {} of {} rows with no token to train on (no assistant reply, or every reply \"loss\": false)",
               d.dropped_no_loss, d.rows_read);
  if (d.train.empty()) throw_input("--dataset: no trainable rows left (all too long or without assistant turns)");
  return d;
}

}  // namespace moe::train
