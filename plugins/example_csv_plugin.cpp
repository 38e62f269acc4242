// Example dataset plugin (see plugins/plugin_api.h): the kind "csv:FILE" reads rows of numbers
// separated by commas, the last one the integer label. Rows starting with '#' are comments;
// the last fifth of the rows is the test split. Built as plugins/libttq_csv_plugin.so.
#include <torch/types.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

#include "plugins/plugin_api.h"

namespace {

ttq::DataSplits load_csv(const std::string& path, const ttq::LoadOptions&) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot be read");
  std::vector<float> values;
  std::vector<int64_t> labels;
  size_t columns = 0;
  std::string line;
  for (int row = 1; std::getline(in, line); ++row) {
    if (line.empty() || line[0] == '#') continue;
    std::vector<float> fields;
    std::stringstream ss(line);
    for (std::string field; std::getline(ss, field, ',');) {
      try {
        fields.push_back(std::stof(field));
      } catch (const std::exception&) {
        throw std::runtime_error(path + ":" + std::to_string(row) + ": not a number: '" + field + "'");
      }
    }
    if (fields.size() < 2) throw std::runtime_error(path + ":" + std::to_string(row) + ": needs features and a label");
    if (columns && fields.size() != columns)
      throw std::runtime_error(path + ":" + std::to_string(row) + ": " + std::to_string(fields.size()) +
                               " columns, the first row has " + std::to_string(columns));
    columns = fields.size();
    labels.push_back(static_cast<int64_t>(fields.back()));
    values.insert(values.end(), fields.begin(), fields.end() - 1);
  }
  const auto n = static_cast<int64_t>(labels.size());
  if (n < 2) throw std::runtime_error(path + ": fewer than two rows");
  const auto x = torch::tensor(values).view({n, static_cast<int64_t>(columns - 1)});
  const auto y = torch::tensor(labels);
  const int64_t n_test = std::max<int64_t>(1, n / 5);
  ttq::DataSplits s;
  s.train = {x.narrow(0, 0, n - n_test), y.narrow(0, 0, n - n_test)};
  s.test = {x.narrow(0, n - n_test, n_test), y.narrow(0, n - n_test, n_test)};
  s.num_classes = y.max().item<int64_t>() + 1;
  return s;
}

}  // namespace

extern "C" void ttq_register_datasets(ttq::PluginRegistrar* registrar) {
  registrar->add("csv", "CSV rows: features..., label (example plugin)", load_csv);
}
