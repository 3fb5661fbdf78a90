#include "train/tensorboard.h"

#include <fmt/format.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moe::train {

namespace {

// Protobuf encoding, just what Event needs.
void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) out.push_back(char(v | 0x80)), v >>= 7;
  out.push_back(char(v));
}
void tag(std::string& out, int field, int wire) { varint(out, uint64_t(field) << 3 | uint64_t(wire)); }
template <class T>
void fixed(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian, as protobuf's fixed32/fixed64 and x86 are
  out.append(b, sizeof(T));
}
void bytes_field(std::string& out, int field, const std::string& s) {
  tag(out, field, 2), varint(out, s.size()), out += s;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Event{wall_time = 1, step = 2, file_version = 3 | summary = 5}.
std::string event(int64_t step, const std::string* file_version, const std::string* summary) {
  std::string e;
  tag(e, 1, 1), fixed(e, now_seconds());
  tag(e, 2, 0), varint(e, uint64_t(step));
  if (file_version) bytes_field(e, 3, *file_version);
  if (summary) bytes_field(e, 5, *summary);
  return e;
}

uint32_t masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

}  // namespace

uint32_t crc32c(const void* p, size_t n) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0x82f63b78u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xffffffffu;
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) c = table[(c ^ b[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  path_ = (std::filesystem::path(dir) /
           ("events.out.tfevents." + std::to_string(int64_t(now_seconds())) + "." + std::string(host)))
              .string();
  f_ = ec ? nullptr : std::fopen(path_.c_str(), "wb");
  if (!f_) throw_input("--tensorboard_dir {}: cannot write {} ({})", dir, path_, std::strerror(errno));
  const std::string version = "brain.Event:2";
  record(event(0, &version, nullptr));
  std::fflush(f_);
}

TensorBoardWriter::~TensorBoardWriter() {
  if (f_) std::fclose(f_);
}

void TensorBoardWriter::record(const std::string& data) {
  std::string r;
  const uint64_t n = data.size();
  fixed(r, n);
  fixed(r, masked(crc32c(&n, sizeof n)));
  r += data;
  fixed(r, masked(crc32c(data.data(), data.size())));
  if (std::fwrite(r.data(), 1, r.size(), f_) != r.size())
    throw_input("{}: write failed ({})", path_, std::strerror(errno));
}

void TensorBoardWriter::scalar(const std::string& name, int64_t step, double value) {
  std::string v;  // Summary.Value{tag = 1, simple_value = 2 (float)}
  bytes_field(v, 1, name);
  tag(v, 2, 5), fixed(v, float(value));
  std::string summary;  // Summary{value = 1 (repeated)}
  bytes_field(summary, 1, v);
  record(event(step, nullptr, &summary));
}

void TensorBoardWriter::line(const std::string& prefix, const nlohmann::json& line, int64_t step) {
  for (const auto& [k, v] : line.items()) {
    if (!v.is_number()) continue;
    const std::string key = k.rfind("eval_", 0) == 0 ? k.substr(5) : k;
    scalar(fmt::format("{}/{}", prefix, key), step, v.get<double>());
  }
  std::fflush(f_);
}

}  // namespace moe::train
