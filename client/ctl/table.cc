#include "client/ctl/table.h"

#include <algorithm>

namespace asyncd::ctl {

void Table::AddRow(std::vector<std::string> cells) {
  cells.resize(columns_.size());
  rows_.push_back(std::move(cells));
}

void Table::Render(std::ostream& out) const {
  std::vector<size_t> widths(columns_.size());
  for (size_t c = 0; c < columns_.size(); ++c) {
    widths[c] = columns_[c].header.size();
    for (const auto& row : rows_) widths[c] = std::max(widths[c], row[c].size());
  }
  auto line = [&](auto cell_of) {
    std::string text;
    for (size_t c = 0; c < columns_.size(); ++c) {
      const std::string& cell = cell_of(c);
      size_t pad = widths[c] - cell.size();
      if (c > 0) text += "  ";
      if (columns_[c].align == Align::kRight) text.append(pad, ' ');
      text += cell;
      if (columns_[c].align == Align::kLeft) text.append(pad, ' ');
    }
    text.erase(text.find_last_not_of(' ') + 1);
    out << text << '\n';
  };
  line([&](size_t c) -> const std::string& { return columns_[c].header; });
  for (const auto& row : rows_) line([&](size_t c) -> const std::string& { return row[c]; });
}

void KeyValues::Add(std::string key, std::string value) {
  items_.emplace_back(std::move(key), std::move(value));
}

void KeyValues::Render(std::ostream& out, const std::string& indent) const {
  size_t width = 0;
  for (const auto& [k, v] : items_) width = std::max(width, k.size() + 1);
  for (const auto& [k, v] : items_) {
    std::string key = k + ":";
    key.append(width - key.size(), ' ');
    std::string text = indent + key + "  " + v;
    text.erase(text.find_last_not_of(' ') + 1);
    out << text << '\n';
  }
}

}  // namespace asyncd::ctl
