// consumer.cpp - the public headers compile as C++17 (-Wall -Wextra -Werror)
// and link through pkg-config; a minimal RAII holder shows idiomatic use.
#include <kd/kd.h>

#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>

namespace {
struct ContextDeleter {
    void operator()(kd_context *c) const noexcept { kd_context_destroy(c); }
};
using Context = std::unique_ptr<kd_context, ContextDeleter>;

Context make_context()
{
    kd_context *raw = nullptr;
    kd_status st = kd_context_create(nullptr, &raw);
    if (st != KD_OK) throw std::runtime_error(kd_status_string(st));
    return Context(raw);
}
}  // namespace

int main()
{
    Context ctx = make_context();
    const float a[4] = {1, 0, 0, 1}, b[4] = {2, 3, 4, 5};
    float c[4] = {};
    kd_status st = kd_gemm(ctx.get(), KD_NO_TRANS, KD_NO_TRANS, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2);
    if (st != KD_OK || c[0] != 2 || c[3] != 5) {
        std::fprintf(stderr, "gemm: %s\n", kd_context_last_error(ctx.get()));
        return 1;
    }
    std::printf("consumer (C++): libkd %s ok\n", kd_version_string());
    return 0;
}
