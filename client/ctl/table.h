#pragma once

// An aligned text table: the layout behind `-o table` and `-o wide`.

#include <ostream>
#include <string>
#include <vector>

namespace asyncd::ctl {

enum class Align { kLeft, kRight };

struct Column {
  std::string header;
  Align align = Align::kLeft;
};

/// Collects rows, then renders them with every column as wide as its widest
/// cell (widths in bytes: cells are expected to be ASCII), columns separated
/// by two spaces, no trailing spaces. Rows shorter than the header are padded
/// with empty cells; extra cells are dropped.
class Table {
 public:
  explicit Table(std::vector<Column> columns) : columns_(std::move(columns)) {}

  void AddRow(std::vector<std::string> cells);
  size_t rows() const { return rows_.size(); }

  /// Writes the header line and the rows.
  void Render(std::ostream& out) const;

 private:
  std::vector<Column> columns_;
  std::vector<std::vector<std::string>> rows_;
};

/// Key/value lines ("KEY:  value") with the values aligned, for single
/// objects (`ops get`, `stats`).
class KeyValues {
 public:
  void Add(std::string key, std::string value);
  void Render(std::ostream& out, const std::string& indent = "") const;

 private:
  std::vector<std::pair<std::string, std::string>> items_;
};

}  // namespace asyncd::ctl
