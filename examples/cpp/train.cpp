// train.cpp - distils a small libkd student from a teacher written in C++
// (a fixed two-layer network behind a std::function, the way a teacher in
// another framework would be plugged in), using the RAII wrapper kd.hpp.
// Exits 0 when the student agrees with the teacher on > 90% of held-out
// inputs, the checkpoint round trip reproduces its outputs, and libkd's
// errors arrive as kd::error exceptions. See docs/CPP.md.
#include "kd.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace {
constexpr std::size_t kIn = 16, kHidden = 24, kClasses = 4;

std::size_t argmax(const float *row, std::size_t n)
{
    return static_cast<std::size_t>(std::max_element(row, row + n) - row);
}

std::vector<float> gaussian(kd_rng &rng, std::size_t n, float scale = 1.0f)
{
    std::vector<float> v(n);
    for (float &f : v) f = scale * kd_rng_normal(&rng);
    return v;
}
}  // namespace

int main(int argc, char **argv)
{
    const std::string ckpt = argc > 1 ? argv[1] : "train-cpp-student.safetensors";
    try {
        kd::context ctx(42);
        kd_rng rng;
        kd_rng_seed(&rng, 7, 0);

        // The teacher: logits = W2 tanh(W1 x), weights fixed at random.
        const std::vector<float> w1 = gaussian(rng, kHidden * kIn, 0.25f);
        const std::vector<float> w2 = gaussian(rng, kClasses * kHidden, 1.0f);
        kd::teacher teacher(ctx, kIn, kClasses, [&](const float *x, std::size_t batch, float *logits) {
            for (std::size_t b = 0; b < batch; b++) {
                float h[kHidden];
                for (std::size_t j = 0; j < kHidden; j++) {
                    float s = 0;
                    for (std::size_t i = 0; i < kIn; i++) s += w1[j * kIn + i] * x[b * kIn + i];
                    h[j] = std::tanh(s);
                }
                for (std::size_t c = 0; c < kClasses; c++) {
                    float s = 0;
                    for (std::size_t j = 0; j < kHidden; j++) s += w2[c * kHidden + j] * h[j];
                    logits[b * kClasses + c] = 4.0f * s;
                }
            }
        });

        kd::model student = kd::model::from_spec(ctx, "input 16; linear 128; relu; linear 4");
        kd::optimizer opt = kd::optimizer::adamw(student, 1e-2f, 0.0f);
        kd::loss kd_loss = kd::loss::hinton(ctx, 2.0f, 0.7f);
        kd::student trainer(ctx, student, opt);
        trainer.add_loss(kd_loss);

        // Train on fresh batches; labels are the teacher's own decisions.
        const std::size_t batch = 64, steps = 3000;
        double first = 0, last = 0;
        for (std::size_t s = 0; s < steps; s++) {
            std::vector<float> x = gaussian(rng, batch * kIn);
            std::vector<float> t = teacher.logits(x.data(), batch);
            std::vector<int32_t> labels(batch);
            for (std::size_t b = 0; b < batch; b++)
                labels[b] = static_cast<int32_t>(argmax(&t[b * kClasses], kClasses));
            kd_step_report r = trainer.step(x.data(), batch, labels.data(), t.data());
            if (s == 0) first = r.total;
            last = r.total;
        }

        // Held-out agreement with the teacher.
        const std::size_t n = 2000;
        std::vector<float> x = gaussian(rng, n * kIn);
        std::vector<float> t = teacher.logits(x.data(), n);
        std::vector<float> y = student.forward(x.data(), n);
        std::size_t agree = 0;
        for (std::size_t b = 0; b < n; b++)
            agree += argmax(&t[b * kClasses], kClasses) == argmax(&y[b * kClasses], kClasses);
        const double accuracy = static_cast<double>(agree) / n;
        std::printf("train (C++): loss %.4f -> %.4f over %zu steps, %zu parameters, "
                    "agreement with the teacher %.4f on %zu held-out inputs\n",
                    first, last, steps, student.param_count(), accuracy, n);

        // Checkpoint round trip.
        student.save(ckpt);
        kd::model again = kd::model::load(ctx, ckpt);
        std::remove(ckpt.c_str());
        if (again.forward(x.data(), n) != y) {
            std::fprintf(stderr, "train (C++): reloaded student answers differently\n");
            return 1;
        }

        // Errors are exceptions with the status and the context's reason.
        bool threw = false;
        try {
            kd::model::from_spec(ctx, "input 16; linear 0");
        } catch (const kd::error &e) {
            threw = e.status() == KD_E_FORMAT && std::string(e.what()).find("linear") != std::string::npos;
            std::printf("train (C++): expected error: %s\n", e.what());
        }
        // A throwing teacher surfaces its own exception.
        kd::teacher broken(ctx, kIn, kClasses, [](const float *, std::size_t, float *) {
            throw std::runtime_error("teacher offline");
        });
        bool rethrown = false;
        try {
            broken.logits(x.data(), 1);
        } catch (const std::runtime_error &e) {
            rethrown = std::string(e.what()) == "teacher offline";
        }
        if (!threw || !rethrown || accuracy <= 0.90 || !(last < first)) {
            std::fprintf(stderr, "train (C++): FAILED (error %d, rethrow %d, agreement %.4f)\n", threw,
                         rethrown, accuracy);
            return 1;
        }
        std::printf("train (C++): ok\n");
        return 0;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "train (C++): %s\n", e.what());
        return 1;
    }
}
