// kd.hpp - a small header-only C++17 wrapper over libkd's C API (docs/CPP.md).
//
// Each class owns one libkd handle through std::unique_ptr with the matching
// destroy function: move-only, released in the destructor. Failures throw
// kd::error, which carries the kd_status and the context's reason
// (kd_context_last_error). Borrowing follows the C API: a model, optimizer,
// loss, teacher or student keeps a raw pointer to the context (and the
// student to its model, optimizer and losses), so those must outlive it:
// declare them first, destroy them last (C++ destroys locals in reverse
// order, which does exactly that).
//
// Only what the examples need is wrapped; .get() gives the raw handle for
// every other C call.
#ifndef KD_HPP
#define KD_HPP

#include <kd/kd.h>
#include <kd/kd_checkpoint.h>

#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace kd {

/** A failed libkd call: status() is the kd_status, what() names the call and the reason. */
class error : public std::runtime_error {
public:
    error(kd_status status, const std::string &what) : std::runtime_error(what), status_(status) {}
    kd_status status() const noexcept { return status_; }

private:
    kd_status status_;
};

namespace detail {
inline void check(const kd_context *ctx, kd_status st, const char *call)
{
    if (st == KD_OK) return;
    std::string reason = ctx ? kd_context_last_error(ctx) : "";
    if (reason.empty()) reason = kd_status_string(st);
    throw error(st, std::string(call) + ": " + kd_status_string(st) + ": " + reason);
}

template <class T, void (*Destroy)(T *)>
struct deleter {
    void operator()(T *p) const noexcept { Destroy(p); }
};
template <class T, void (*Destroy)(T *)>
using handle = std::unique_ptr<T, deleter<T, Destroy>>;
}  // namespace detail

/** kd_context: allocator, threads, seed, last error. */
class context {
public:
    explicit context(uint64_t seed = 0x6b64, int threads = 1)
    {
        kd_context_config cfg;
        kd_context_config_default(&cfg);
        cfg.seed = seed;
        cfg.threads = threads;
        kd_context *raw = nullptr;
        detail::check(nullptr, kd_context_create(&cfg, &raw), "kd_context_create");
        p_.reset(raw);
    }
    kd_context *get() const noexcept { return p_.get(); }
    std::string last_error() const { return kd_context_last_error(p_.get()); }

private:
    detail::handle<kd_context, kd_context_destroy> p_;
};

/** kd_model: built from a spec or loaded from a safetensors checkpoint. */
class model {
public:
    static model from_spec(context &ctx, const std::string &spec)
    {
        kd_model *raw = nullptr;
        detail::check(ctx.get(), kd_model_create_from_spec(ctx.get(), spec.c_str(), &raw),
                      "kd_model_create_from_spec");
        return model(ctx.get(), raw);
    }
    static model load(context &ctx, const std::string &path)
    {
        kd_model *raw = nullptr;
        detail::check(ctx.get(), kd_model_load(ctx.get(), path.c_str(), &raw), "kd_model_load");
        return model(ctx.get(), raw);
    }
    void save(const std::string &path) { detail::check(ctx_, kd_model_save(get(), path.c_str()), "kd_model_save"); }

    /** Floats per sample in and out. */
    std::size_t input_numel() const
    {
        std::size_t shape[KD_TENSOR_MAX_RANK];
        uint32_t rank = 0;
        detail::check(ctx_, kd_model_input_shape(get(), shape, &rank, nullptr), "kd_model_input_shape");
        std::size_t n = 1;
        for (uint32_t i = 0; i < rank; i++) n *= shape[i];
        return n;
    }
    std::size_t output_numel() const
    {
        std::size_t shape[KD_TENSOR_MAX_RANK], n = 0;
        uint32_t rank = 0;
        detail::check(ctx_, kd_model_output_shape(get(), shape, &rank, &n), "kd_model_output_shape");
        return n;
    }
    std::size_t param_count() const noexcept { return kd_model_param_count(get()); }

    /** Inference on batch rows of x (batch x input_numel floats); returns batch x output_numel. */
    std::vector<float> forward(const float *x, std::size_t batch) const
    {
        const float *y = nullptr;
        detail::check(ctx_, kd_model_forward(get(), KD_MODE_INFER, x, batch * input_numel(), batch, &y),
                      "kd_model_forward");
        return std::vector<float>(y, y + batch * output_numel());
    }

    kd_model *get() const noexcept { return p_.get(); }
    kd_context *context_ptr() const noexcept { return ctx_; }

private:
    model(kd_context *ctx, kd_model *raw) : ctx_(ctx), p_(raw) {}
    kd_context *ctx_;
    detail::handle<kd_model, kd_model_destroy> p_;
};

/** kd_optimizer over every parameter of a model (which must outlive it). */
class optimizer {
public:
    static optimizer adamw(model &m, float lr, float weight_decay = 0.01f)
    {
        kd_optimizer_config cfg;
        kd_optimizer_config_default(&cfg, KD_OPTIM_ADAMW);
        cfg.lr = lr;
        cfg.weight_decay = weight_decay;
        return optimizer(m, cfg);
    }
    static optimizer sgd(model &m, float lr, float momentum = 0.0f)
    {
        kd_optimizer_config cfg;
        kd_optimizer_config_default(&cfg, KD_OPTIM_SGD);
        cfg.lr = lr;
        cfg.momentum = momentum;
        return optimizer(m, cfg);
    }
    optimizer(model &m, const kd_optimizer_config &cfg)
    {
        kd_optimizer *raw = nullptr;
        detail::check(m.context_ptr(), kd_optimizer_create(m.get(), &cfg, &raw), "kd_optimizer_create");
        p_.reset(raw);
    }
    kd_optimizer *get() const noexcept { return p_.get(); }

private:
    detail::handle<kd_optimizer, kd_optimizer_destroy> p_;
};

/** A kd_loss from one of the built-in vtables. */
class loss {
public:
    static loss hinton(context &ctx, float temperature, float alpha)
    {
        kd_loss_hinton_config cfg;
        kd_loss_hinton_config_default(&cfg);
        cfg.temperature = temperature;
        cfg.alpha = alpha;
        return loss(ctx, kd_loss_hinton(), &cfg);
    }
    static loss cross_entropy(context &ctx, float label_smoothing = 0.0f)
    {
        kd_loss_ce_config cfg;
        kd_loss_ce_config_default(&cfg);
        cfg.label_smoothing = label_smoothing;
        return loss(ctx, kd_loss_cross_entropy(), &cfg);
    }
    loss(context &ctx, const kd_loss_vtable *vt, const void *cfg) : ctx_(ctx.get())
    {
        kd_loss *raw = nullptr;
        detail::check(ctx_, kd_loss_create(ctx_, vt, cfg, &raw), "kd_loss_create");
        p_.reset(raw);
    }
    /** Value of the loss on rows x classes logits (labels may be null). */
    double value(const float *student, const float *teacher, const int32_t *labels, std::size_t rows,
                 std::size_t classes) const
    {
        kd_loss_batch b;
        kd_loss_batch_default(&b);
        b.rows = rows;
        b.classes = classes;
        b.student_logits = student;
        b.teacher_logits = teacher;
        b.labels = labels;
        double v = 0;
        detail::check(ctx_, kd_loss_compute(get(), &b, &v, nullptr), "kd_loss_compute");
        return v;
    }
    kd_loss *get() const noexcept { return p_.get(); }

private:
    kd_context *ctx_;
    detail::handle<kd_loss, kd_loss_destroy> p_;
};

/**
 * A teacher backed by any C++ callable
 *     void fn(const float *x, std::size_t batch, float *logits)
 * (x: batch x input_dim, logits: batch x classes to fill). An exception
 * thrown by fn does not cross the C library: libkd sees a failed callback
 * (KD_E_CALLBACK) and logits() rethrows the original exception.
 */
class teacher {
public:
    using fn_type = std::function<void(const float *x, std::size_t batch, float *logits)>;

    teacher(context &ctx, std::size_t input_dim, std::size_t classes, fn_type fn)
        : ctx_(ctx.get()), classes_(classes), state_(new state{std::move(fn), nullptr})
    {
        kd_teacher *raw = nullptr;
        detail::check(ctx_, kd_teacher_from_callback(ctx_, input_dim, classes, &trampoline, state_.get(), &raw),
                      "kd_teacher_from_callback");
        p_.reset(raw);
    }
    std::vector<float> logits(const float *x, std::size_t batch)
    {
        std::vector<float> out(batch * classes_);
        state_->pending = nullptr;
        kd_status st = kd_teacher_logits(get(), x, batch, out.data());
        if (st != KD_OK && state_->pending) std::rethrow_exception(state_->pending);
        detail::check(ctx_, st, "kd_teacher_logits");
        return out;
    }
    std::size_t classes() const noexcept { return classes_; }
    kd_teacher *get() const noexcept { return p_.get(); }

private:
    struct state {
        fn_type fn;
        std::exception_ptr pending;
    };
    static int trampoline(void *user, const float *x, std::size_t batch, std::size_t, float *logits,
                          std::size_t)
    {
        auto *s = static_cast<state *>(user);
        try {
            s->fn(x, batch, logits);
            return 0;
        } catch (...) {
            s->pending = std::current_exception();
            return 1;
        }
    }
    kd_context *ctx_;
    std::size_t classes_;
    std::unique_ptr<state> state_;  // stable address handed to the C callback
    detail::handle<kd_teacher, kd_teacher_destroy> p_;
};

/** kd_student: a model, its optimizer and weighted losses (all borrowed). */
class student {
public:
    student(context &ctx, model &m, optimizer &opt, float max_grad_norm = 0.0f) : ctx_(ctx.get())
    {
        kd_student_config cfg;
        kd_student_config_default(&cfg);
        cfg.max_grad_norm = max_grad_norm;
        kd_student *raw = nullptr;
        detail::check(ctx_, kd_student_create(ctx_, m.get(), opt.get(), &cfg, &raw), "kd_student_create");
        p_.reset(raw);
    }
    void add_loss(loss &l, float weight = 1.0f, uint32_t flags = 0)
    {
        detail::check(ctx_, kd_student_add_loss(get(), l.get(), weight, flags), "kd_student_add_loss");
    }
    /** One update; labels and teacher_logits may be null when no term needs them. */
    kd_step_report step(const float *x, std::size_t batch, const int32_t *labels, const float *teacher_logits)
    {
        kd_step_report r{};
        r.struct_size = sizeof r;
        detail::check(ctx_, kd_student_step(get(), x, batch, labels, teacher_logits, &r), "kd_student_step");
        return r;
    }
    kd_student *get() const noexcept { return p_.get(); }

private:
    kd_context *ctx_;
    detail::handle<kd_student, kd_student_destroy> p_;
};

}  // namespace kd

#endif  // KD_HPP
