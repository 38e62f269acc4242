// Table-driven choices (as llama.cpp's quantize table): each enumerated option has one table of
// {name, value, help}, declared next to its enum and found through `choices(E)` (argument-dependent
// lookup). The table feeds the command-line validator and its help (cli/common.h), the names in
// messages, and the JSON written to files (formats/json.h).
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace ttq {

template <class E>
struct Choice {
  const char* name;
  E value;
  const char* help;
};

template <class E>
std::string choice_name(E value) {
  for (const auto& c : choices(value))
    if (c.value == value) return c.name;
  return "?";
}

template <class E>
std::optional<E> parse_choice(std::string_view name) {
  for (const auto& c : choices(E{}))
    if (name == c.name) return c.value;
  return std::nullopt;
}

// "mean, ones": the names, for messages.
template <class E>
std::string choice_names() {
  std::string out;
  for (const auto& c : choices(E{})) out += (out.empty() ? "" : ", ") + std::string(c.name);
  return out;
}

}  // namespace ttq
