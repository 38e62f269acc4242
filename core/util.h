// Small helpers every layer uses: regexes from flags, shapes in messages, whole-file reads, cores.
#pragma once
#include <cstdint>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

namespace ttq {

// An ECMAScript regex from a flag; a usage error names it when it is invalid.
std::regex compile_regex(const std::string& pattern);
std::vector<std::regex> compile_regexes(const std::vector<std::string>& patterns);
// Whether one of the regexes is found in `name`.
bool matches_any(const std::string& name, const std::vector<std::regex>& regexes);

// "8x1x5x5" (tables; "scalar" for no dimensions), or with separator ", " inside brackets for messages:
// "[2, 1, 28, 28]".
std::string join_shape(const std::vector<int64_t>& shape, std::string_view separator = "x");
inline std::string bracketed_shape(const std::vector<int64_t>& shape) { return "[" + join_shape(shape, ", ") + "]"; }

// Input error unless `path` is an existing, readable regular file ("PATH: no such file", ...).
void check_readable(const std::string& path);
// The whole file in memory, with the same clear errors.
std::vector<uint8_t> read_file(const std::string& path);

// The LibTorch ttq was built against and runs on ("2.6.0"): --version, the TTQ metadata, run logs.
std::string libtorch_version();

// The machine's cores (std::thread::hardware_concurrency(), at least 1).
int cpu_cores();

// Hands the heap's free pages back to the system, which glibc would otherwise keep resident.
// Loading TorchScript compiles the program and frees most of what compiling took: a packed
// transformer encoder leaves 10 MiB freed but resident, more than its program keeps.
void release_free_memory();

// Has glibc keep freed memory for reuse instead of handing it back after every large free: a run of
// a model frees and allocates the same activations again, which glibc's adaptive thresholds could
// return to the system and fault back in on every run (a packed int8 ResNet-18: 2,500 page faults
// and 30% of its time per inference), depending on what ran before (a float model alternated with
// it raised them). The fixed thresholds make runs independent of one another; release_free_memory
// still hands back what a load freed. PyTorch's CPU tuning guides recommend a caching allocator
// (jemalloc, tcmalloc) for the same reason.
void keep_freed_memory_for_reuse();

}  // namespace ttq
