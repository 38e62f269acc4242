// Precompiled header shared by every target: LibTorch's headers dominate build time.
#pragma once
#include <torch/autograd.h>
#include <torch/script.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>
