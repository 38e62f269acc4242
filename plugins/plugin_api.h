// The registration API for dataset plugins (shared libraries given with --plugin FILE.so).
//
// A plugin defines one C function that ttq calls once after dlopen():
//
//   extern "C" void ttq_register_datasets(ttq::PluginRegistrar* registrar) {
//     registrar->add("mydata", "my data set: PATH is ...",
//                    [](const std::string& path, const ttq::LoadOptions& options) {
//       ttq::DataSplits splits;   // fill train/test inputs and labels, num_classes
//       return splits;
//     });
//   }
//
// Build it against the installed package (find_package(ttq); link ttq::ttq) with the same
// LibTorch as ttq. plugins/example_plugin.cpp is a complete, tested example.
#pragma once
#include "plugins/dataset.h"

namespace ttq {

struct PluginRegistrar {
  virtual ~PluginRegistrar() = default;
  virtual void add(const std::string& kind, const std::string& help, DatasetLoader loader) = 0;
};

inline constexpr const char* kPluginEntryPoint = "ttq_register_datasets";
using PluginEntryPoint = void (*)(PluginRegistrar*);

}  // namespace ttq
