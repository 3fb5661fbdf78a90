#include "plan/layout.h"

#include <fmt/format.h>

#include <cctype>
#include <charconv>

#include "core/error.h"

namespace moe::plan {

std::string to_string(const Layout& l) {
  return fmt::format("tp{},pp{},vpp{},ep{},etp{},cp{},dp{},mbs{},recompute={}", l.tp, l.pp, l.vpp, l.ep, l.etp, l.cp,
                     l.dp, l.micro_batch_size, to_string(l.recompute));
}

Layout parse_layout(const std::string& text, const std::string& flag, int world, int default_mbs,
                    Recompute default_recompute) {
  static const char* kHelp = "expected comma-separated keys such as tp2,pp4,vpp1,ep8,etp1,cp1,dp4,mbs1,recompute=full";
  Layout l;
  l.micro_batch_size = default_mbs;
  l.recompute = default_recompute;
  bool has_etp = false, has_dp = false;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(pos, end - pos);
    pos = end + 1;
    while (!item.empty() && std::isspace(static_cast<unsigned char>(item.back()))) item.pop_back();
    while (!item.empty() && std::isspace(static_cast<unsigned char>(item.front()))) item.erase(0, 1);
    if (item.empty()) {
      if (end == text.size()) break;
      continue;
    }
    if (item.rfind("recompute", 0) == 0) {
      std::string v = item.substr(item.find('=') == std::string::npos ? item.size() : item.find('=') + 1);
      if (!parse_recompute(v, &l.recompute))
        throw_input("{} '{}': recompute must be none, selective or full, got '{}'", flag, text, v);
      continue;
    }
    size_t k = 0;
    while (k < item.size() && std::isalpha(static_cast<unsigned char>(item[k]))) ++k;
    std::string key = item.substr(0, k), num = item.substr(k);
    if (!num.empty() && num[0] == '=') num.erase(0, 1);
    int v = 0;
    auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), v);
    if (num.empty() || ec != std::errc() || p != num.data() + num.size() || v <= 0)
      throw_input("{} '{}': '{}' needs a positive integer after '{}' ({})", flag, text, item, key, kHelp);
    if (key == "tp") l.tp = v;
    else if (key == "pp") l.pp = v;
    else if (key == "vpp") l.vpp = v;
    else if (key == "ep") l.ep = v;
    else if (key == "etp") l.etp = v, has_etp = true;
    else if (key == "cp") l.cp = v;
    else if (key == "dp") l.dp = v, has_dp = true;
    else if (key == "mbs") l.micro_batch_size = v;
    else throw_input("{} '{}': unknown key '{}' ({})", flag, text, key, kHelp);
    if (end == text.size()) break;
  }
  if (!has_etp) l.etp = l.tp;
  if (!has_dp) {
    if (world <= 0) throw_input("{} '{}': give dp (no world size to derive it from)", flag, text);
    const int mp = l.tp * l.pp * l.cp;
    if (world % mp != 0)
      throw_input("{} '{}': tp x pp x cp = {} does not divide the {} GPUs of the cluster", flag, text, mp, world);
    l.dp = world / mp;
  }
  l.sequence_parallel = l.tp > 1;
  return l;
}

}  // namespace moe::plan
