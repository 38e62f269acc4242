// Table-driven choices (as llama.cpp's quantize table): each enumerated option has one table of
// {name, value, help} that feeds the command-line validator and its help (cli/common.h), to_string,
// parsing, and the JSON written to files. Specialize ChoiceTable<E> next to the enum.
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
struct ChoiceTable;  // static constexpr Choice<E> values[] = {...}; static constexpr const char* what = "...";

template <class E, class = decltype(ChoiceTable<E>::values)>
std::string choice_name(E value) {
  for (const auto& c : ChoiceTable<E>::values)
    if (c.value == value) return c.name;
  return "?";
}

template <class E>
std::optional<E> parse_choice(std::string_view name) {
  for (const auto& c : ChoiceTable<E>::values)
    if (name == c.name) return c.value;
  return std::nullopt;
}

}  // namespace ttq
