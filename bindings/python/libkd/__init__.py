"""libkd for Python: a thin ctypes layer over the C library.

    import numpy as np, libkd
    ctx = libkd.Context(seed=7)
    model = libkd.Model.from_spec(ctx, "input 4; linear 8; relu; linear 3")
    logits = model.forward(np.zeros((2, 4), np.float32))

Arrays cross the boundary without copies when they are already C-contiguous
float32 (int32 for labels); anything else is converted once per call.
Every failure raises libkd.Error with .status (the kd_status number),
.status_name and .reason (kd_context_last_error of the context involved).
Handles own their C objects and free them when garbage-collected or on
close(); each keeps the objects it borrows (context, model, losses) alive.
See docs/PYTHON.md.
"""
import ctypes
import sys
import weakref

import numpy as np

from . import _ffi
from ._ffi import c_float_p, c_int32_p, c_uint32_p, lib_path

__all__ = ["Error", "Context", "Model", "Optimizer", "Loss", "Teacher", "Student",
           "SparseIndex", "version", "lib_path", "MODE_INFER", "MODE_TRAIN"]

MODE_INFER = 0
MODE_TRAIN = 1
IGNORE_INDEX = _ffi.KD_LOSS_IGNORE_INDEX

STATUS_NAMES = ["OK", "INVALID", "NOMEM", "OVERFLOW", "SHAPE", "FORMAT", "IO", "UNSUPPORTED",
                "NUMERIC", "STATE", "VERSION", "NOT_FOUND", "CORRUPT", "CALLBACK", "INTERNAL"]


class Error(Exception):
    """A libkd call failed: status (int), status_name ('SHAPE', ...), reason (text)."""

    def __init__(self, status, reason, call=""):
        self.status = int(status)
        self.status_name = (STATUS_NAMES[self.status] if 0 <= self.status < len(STATUS_NAMES)
                            else str(self.status))
        self.reason = reason
        self.call = call
        super().__init__("%s: KD_E_%s: %s" % (call or "libkd", self.status_name, reason))


def version():
    """Version string of the loaded library."""
    return _ffi.version_string().decode()


def _check(ctx_ptr, status, call):
    if status != 0:
        reason = _ffi.context_last_error(ctx_ptr) if ctx_ptr else None
        reason = reason.decode("utf-8", "replace") if reason else \
            _ffi.status_string(status).decode()
        raise Error(status, reason, call)


def _f32(a, shape=None, name="array"):
    """C-contiguous float32 view (no copy when a already is one)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if shape is not None and a.shape != shape:
        a = a.reshape(shape)
    return a


def _i32(a):
    return np.ascontiguousarray(a, dtype=np.int32)


def _u32(a):
    return np.ascontiguousarray(a, dtype=np.uint32)


def _fp(a):
    return None if a is None else a.ctypes.data_as(c_float_p)


def _ip(a):
    return None if a is None else a.ctypes.data_as(c_int32_p)


def _up(a):
    return None if a is None or a.size == 0 else a.ctypes.data_as(c_uint32_p)


class _Handle:
    """Owns one C handle. A handle that others borrow (a context, a model
    under an optimizer) is destroyed only after all of them: close() on it
    is deferred until its last dependant closes. That keeps the C order
    (children first) even when Python's garbage collector finalizes a
    reference cycle in arbitrary order."""
    _destroy = None

    def __init__(self, ptr, parents=()):
        self._ptr = ptr
        self._dependants = 0
        self._close_pending = False
        self._parents = tuple(p for p in parents if p is not None)
        for p in self._parents:
            p._dependants += 1

    @property
    def ptr(self):
        if not self._ptr:
            raise ValueError("%s is closed" % type(self).__name__)
        return self._ptr

    def close(self):
        """Releases the C handle (later, if other handles still borrow it)."""
        if not self._ptr:
            return
        if self._dependants > 0:
            self._close_pending = True
            return
        ptr, self._ptr = self._ptr, None
        type(self)._destroy(ptr)
        for p in self._parents:
            p._dependants -= 1
            if p._close_pending and p._dependants == 0:
                p.close()
        self._parents = ()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Context(_Handle):
    """kd_context: allocator, threads, seed and the last error.

    gemm: 'auto', 'blis' or 'reference'.
    """
    _destroy = staticmethod(_ffi.context_destroy)

    def __init__(self, seed=None, threads=1, gemm="auto"):
        cfg = _ffi.ContextConfig()
        _ffi.context_config_default(ctypes.byref(cfg))
        if seed is not None:
            cfg.seed = seed
        cfg.threads = threads
        cfg.gemm = {"auto": 0, "blis": 1, "reference": 2}[gemm]
        out = ctypes.c_void_p()
        st = _ffi.context_create(ctypes.byref(cfg), ctypes.byref(out))
        if st != 0:
            raise Error(st, _ffi.status_string(st).decode(), "kd_context_create")
        super().__init__(out.value)

    @property
    def last_error(self):
        return _ffi.context_last_error(self.ptr).decode("utf-8", "replace")


class Model(_Handle):
    """kd_model. Create with Model.from_spec, Model.load or Model.from_bytes."""
    _destroy = staticmethod(_ffi.model_destroy)

    def __init__(self, ctx, ptr):
        super().__init__(ptr, (ctx,))
        self.ctx = ctx

    @classmethod
    def from_spec(cls, ctx, spec):
        out = ctypes.c_void_p()
        _check(ctx.ptr, _ffi.model_create_from_spec(ctx.ptr, spec.encode(), ctypes.byref(out)),
               "kd_model_create_from_spec")
        return cls(ctx, out.value)

    @classmethod
    def load(cls, ctx, path):
        """Rebuilds a model from a safetensors checkpoint written by save (or PyTorch)."""
        out = ctypes.c_void_p()
        _check(ctx.ptr, _ffi.model_load(ctx.ptr, str(path).encode(), ctypes.byref(out)),
               "kd_model_load")
        return cls(ctx, out.value)

    @classmethod
    def from_bytes(cls, ctx, data):
        buf = bytes(data)
        out = ctypes.c_void_p()
        _check(ctx.ptr, _ffi.model_load_memory(ctx.ptr, buf, len(buf), ctypes.byref(out)),
               "kd_model_load_memory")
        return cls(ctx, out.value)

    def save(self, path):
        _check(self.ctx.ptr, _ffi.model_save(self.ptr, str(path).encode()), "kd_model_save")

    def to_bytes(self):
        size = ctypes.c_size_t()
        _check(self.ctx.ptr, _ffi.model_save_size(self.ptr, ctypes.byref(size)),
               "kd_model_save_size")
        buf = ctypes.create_string_buffer(size.value)
        written = ctypes.c_size_t()
        _check(self.ctx.ptr, _ffi.model_save_memory(self.ptr, buf, size.value,
                                                   ctypes.byref(written)), "kd_model_save_memory")
        return buf.raw[:written.value]

    @property
    def spec(self):
        need = ctypes.c_size_t()
        _ffi.model_spec(self.ptr, None, 0, ctypes.byref(need))
        buf = ctypes.create_string_buffer(need.value + 1)
        _check(self.ctx.ptr, _ffi.model_spec(self.ptr, buf, need.value + 1, None), "kd_model_spec")
        return buf.value.decode()

    @property
    def input_shape(self):
        shape = (ctypes.c_size_t * 4)()
        rank = ctypes.c_uint32()
        _check(self.ctx.ptr, _ffi.model_input_shape(self.ptr, shape, ctypes.byref(rank), None),
               "kd_model_input_shape")
        return tuple(shape[:rank.value])

    @property
    def output_shape(self):
        shape = (ctypes.c_size_t * 4)()
        rank = ctypes.c_uint32()
        _check(self.ctx.ptr, _ffi.model_output_shape(self.ptr, shape, ctypes.byref(rank), None),
               "kd_model_output_shape")
        return tuple(shape[:rank.value])

    def _numel(self, shape):
        n = 1
        for d in shape:
            n *= d
        return n

    def forward(self, x, train=False):
        """Output for a batch x (batch x input shape, or batch x flattened input).

        Returns a new array (batch x output shape). The input is not copied
        when it is C-contiguous float32; in training mode it must stay
        unchanged until backward().
        """
        in_n = self._numel(self.input_shape)
        x = _f32(x)
        if x.size % in_n != 0 or x.size == 0:
            raise Error(4, "input has %d floats, not a multiple of %d" % (x.size, in_n),
                        "forward")
        batch = x.size // in_n
        y = c_float_p()
        _check(self.ctx.ptr, _ffi.model_forward(self.ptr, MODE_TRAIN if train else MODE_INFER,
                                                _fp(x), x.size, batch, ctypes.byref(y)),
               "kd_model_forward")
        if train:
            self._train_x = x  # keep alive for backward
        out_shape = (batch,) + self.output_shape
        return np.ctypeslib.as_array(y, shape=(batch * self._numel(self.output_shape),)) \
            .reshape(out_shape).copy()

    def infer_workspace(self, batch):
        """A workspace for infer() on up to batch samples: a zeroed bytearray of
        kd_model_infer_workspace_size bytes, reusable across calls by one thread.
        Raises Error (no reason beyond the status: the C function records none)
        when the model cannot be shared (KD_E_UNSUPPORTED: an MoE layer;
        KD_E_STATE: no weights yet)."""
        size = ctypes.c_size_t()
        _check(None, _ffi.model_infer_workspace_size(self.ptr, batch, ctypes.byref(size)),
               "kd_model_infer_workspace_size")
        return bytearray(size.value)

    def infer(self, x, ctx=None, workspace=None):
        """Inference output for x, computed by kd_model_infer: the model is only
        read, so several Python threads may call infer on one model at once
        (ctypes releases the GIL during the call), each with its own Context as
        ctx (default: the model's) and its own workspace. Bit-identical to
        forward(x) with the same GEMM backend and threads.

        x: (batch, *input_shape) or (batch, input numel); a 1-D x is taken as
        flattened samples, as forward does. workspace: a writable buffer
        (bytearray, NumPy array) from infer_workspace(n) with n >= batch, or
        None to allocate one for this call only. Returns a new array
        (batch, *output_shape). The model must have weights (loaded, run
        once, or parameters() called) and no MoE layer; violations, a wrong
        input size or a too small workspace raise Error with the library's
        status and reason.
        """
        ctx = self.ctx if ctx is None else ctx
        in_n = self._numel(self.input_shape)
        out_shape = self.output_shape
        x = _f32(x)
        batch = x.shape[0] if x.ndim >= 2 else max(x.size // in_n, 1)
        y = np.empty((batch,) + out_shape, np.float32)
        if workspace is None:
            size = ctypes.c_size_t()
            st = _ffi.model_infer_workspace_size(self.ptr, batch, ctypes.byref(size))
            # On failure kd_model_infer (with no workspace) runs the same checks
            # and records why in ctx; it reads neither x nor y when it fails.
            ws = np.zeros(size.value if st == 0 else 0, np.uint8)
        else:
            ws = np.frombuffer(workspace, dtype=np.uint8)
            if not ws.flags.writeable:
                raise ValueError("workspace must be writable (a bytearray or NumPy array)")
        _check(ctx.ptr, _ffi.model_infer(self.ptr, ctx.ptr, _fp(x), x.size, batch, _fp(y), y.size,
                                         ws.ctypes.data if ws.size else None, ws.size),
               "kd_model_infer")
        return y

    def backward(self, dy, want_dx=False):
        """Backward for the last training forward; accumulates parameter gradients."""
        dy = _f32(dy)
        dx = None
        if want_dx:
            dx = np.empty(self._train_x.shape, np.float32)
        _check(self.ctx.ptr, _ffi.model_backward(self.ptr, _fp(dy), dy.size, _fp(dx),
                                                 0 if dx is None else dx.size),
               "kd_model_backward")
        return dx

    def zero_grad(self):
        _check(self.ctx.ptr, _ffi.model_zero_grad(self.ptr), "kd_model_zero_grad")

    @property
    def param_count(self):
        return _ffi.model_param_count(self.ptr)

    def parameters(self):
        """The parameter block as a writable NumPy view (no copy; valid while the model lives)."""
        p = c_float_p()
        n = ctypes.c_size_t()
        _check(self.ctx.ptr, _ffi.model_blocks(self.ptr, ctypes.byref(p), None, ctypes.byref(n)),
               "kd_model_blocks")
        return np.ctypeslib.as_array(p, shape=(n.value,))

    def gradients(self):
        """The gradient block as a NumPy view (allocated zeroed on first use)."""
        p = c_float_p()
        g = c_float_p()
        n = ctypes.c_size_t()
        _check(self.ctx.ptr, _ffi.model_blocks(self.ptr, ctypes.byref(p), ctypes.byref(g),
                                               ctypes.byref(n)), "kd_model_blocks")
        return np.ctypeslib.as_array(g, shape=(n.value,))

    def state_dict(self):
        """{name: writable NumPy view} of every tensor, PyTorch state_dict names and shapes."""
        out = {}
        for i in range(_ffi.model_tensor_count(self.ptr)):
            name = ctypes.c_char_p()
            _check(self.ctx.ptr, _ffi.model_tensor_name(self.ptr, i, ctypes.byref(name)),
                   "kd_model_tensor_name")
            data = c_float_p()
            numel = ctypes.c_size_t()
            shape = (ctypes.c_size_t * 4)()
            rank = ctypes.c_uint32()
            _check(self.ctx.ptr, _ffi.model_tensor(self.ptr, i, ctypes.byref(data),
                                                   ctypes.byref(numel), shape,
                                                   ctypes.byref(rank), None), "kd_model_tensor")
            arr = np.ctypeslib.as_array(data, shape=(numel.value,))
            out[name.value.decode()] = arr.reshape(tuple(shape[:rank.value]))
        return out


class Optimizer(_Handle):
    """kd_optimizer over every parameter of model: kind 'adamw' or 'sgd'."""
    _destroy = staticmethod(_ffi.optimizer_destroy)

    def __init__(self, model, kind="adamw", lr=None, **kw):
        cfg = _ffi.OptimizerConfig()
        _ffi.optimizer_config_default(ctypes.byref(cfg), {"sgd": 0, "adamw": 1}[kind])
        if lr is not None:
            cfg.lr = lr
        for k, v in kw.items():
            if not hasattr(cfg, k):
                raise TypeError("unknown optimizer option %r" % k)
            setattr(cfg, k, v)
        out = ctypes.c_void_p()
        _check(model.ctx.ptr, _ffi.optimizer_create(model.ptr, ctypes.byref(cfg),
                                                    ctypes.byref(out)), "kd_optimizer_create")
        super().__init__(out.value, (model,))
        self.model = model

    def step(self):
        _check(self.model.ctx.ptr, _ffi.optimizer_step(self.ptr), "kd_optimizer_step")


_REDUCTIONS = {"mean": 0, "sum": 1}


class Loss(_Handle):
    """A built-in kd_loss. Loss(ctx, 'hinton', temperature=4, alpha=0.9), or
    'cross_entropy', 'reverse_kl', 'jsd', 'skew_kl', 'skew_reverse_kl'."""
    _destroy = staticmethod(_ffi.loss_destroy)

    def __init__(self, ctx, kind, reduction="mean", **kw):
        if kind == "cross_entropy":
            cfg = _ffi.CeConfig()
            _ffi.loss_ce_config_default(ctypes.byref(cfg))
        elif kind == "hinton":
            cfg = _ffi.HintonConfig()
            _ffi.loss_hinton_config_default(ctypes.byref(cfg))
        elif kind in ("reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"):
            cfg = _ffi.DivergenceConfig()
            _ffi.loss_divergence_config_default(ctypes.byref(cfg))
        else:
            raise ValueError("unknown loss %r" % kind)
        cfg.reduction = _REDUCTIONS[reduction]
        for k, v in kw.items():
            if not hasattr(cfg, k):
                raise TypeError("%s has no option %r" % (kind, k))
            setattr(cfg, k, v)
        out = ctypes.c_void_p()
        _check(ctx.ptr, _ffi.loss_create(ctx.ptr, _ffi.loss_vtables[kind](), ctypes.byref(cfg),
                                         ctypes.byref(out)), "kd_loss_create")
        super().__init__(out.value, (ctx,))
        self.ctx = ctx
        self.kind = kind

    def __call__(self, student_logits, teacher_logits=None, labels=None, weights=None,
                 grad=True, ignore_index=IGNORE_INDEX):
        """Value (float) and, when grad, d value / d student_logits (a new array).

        student_logits, teacher_logits: B x C float32 (no copy when
        C-contiguous float32); labels: B ints; weights: B floats.
        """
        s = _f32(student_logits)
        if s.ndim != 2:
            raise ValueError("student_logits must be B x C")
        t = None if teacher_logits is None else _f32(teacher_logits)
        if t is not None and t.shape != s.shape:
            raise Error(4, "teacher_logits %s != student_logits %s" % (t.shape, s.shape),
                        "loss")
        lab = None if labels is None else _i32(labels)
        w = None if weights is None else _f32(weights)
        for name, a in (("labels", lab), ("weights", w)):
            if a is not None and a.shape != (s.shape[0],):
                raise Error(4, "%s must have %d entries" % (name, s.shape[0]), "loss")
        b = _ffi.LossBatch()
        _ffi.loss_batch_default(ctypes.byref(b))
        b.rows, b.classes = s.shape
        b.student_logits = _fp(s)
        b.teacher_logits = _fp(t)
        b.labels = _ip(lab)
        b.weights = _fp(w)
        b.ignore_index = ignore_index
        value = ctypes.c_double()
        g = None
        gp = None
        if grad:
            g = np.zeros(s.shape, np.float32)
            gs = _ffi.LossGrad()
            _ffi.loss_grad_default(ctypes.byref(gs))
            gs.student_logits = _fp(g)
            gp = ctypes.byref(gs)
        _check(self.ctx.ptr, _ffi.loss_compute(self.ptr, ctypes.byref(b), ctypes.byref(value),
                                               gp), "kd_loss_compute")
        return (value.value, g) if grad else value.value


class Teacher(_Handle):
    """A kd_teacher. Teacher.from_callback(ctx, input_dim, classes, fn) runs fn(x)
    (x: batch x input_dim float32 view, read-only use) which returns batch x
    classes logits; Teacher.from_model(model) wraps a frozen libkd model."""
    _destroy = staticmethod(_ffi.teacher_destroy)

    def __init__(self, ctx, ptr, classes, keep=(), parents=()):
        super().__init__(ptr, (ctx,) + tuple(parents))
        self.ctx = ctx
        self.classes = classes
        self._keep = keep
        self.error = None  # the exception a callback raised, if any

    @classmethod
    def from_callback(cls, ctx, input_dim, classes, fn):
        holder = []

        def trampoline(user, x, batch, dim, logits, ncls):
            try:
                xin = np.ctypeslib.as_array(x, shape=(batch * dim,)).reshape(batch, dim)
                out = np.ctypeslib.as_array(logits, shape=(batch * ncls,)).reshape(batch, ncls)
                out[...] = np.asarray(fn(xin), dtype=np.float32).reshape(batch, ncls)
                return 0
            except BaseException:  # never let an exception unwind through C
                t = holder[0]() if holder else None
                if t is not None:
                    t.error = sys.exc_info()[1]
                return 1

        cb = _ffi.TEACHER_FN(trampoline)
        out = ctypes.c_void_p()
        _check(ctx.ptr, _ffi.teacher_from_callback(ctx.ptr, input_dim, classes, cb, None,
                                                   ctypes.byref(out)), "kd_teacher_from_callback")
        t = cls(ctx, out.value, classes, keep=(cb, fn))
        holder.append(weakref.ref(t))
        return t

    @classmethod
    def from_model(cls, model):
        out = ctypes.c_void_p()
        _check(model.ctx.ptr, _ffi.teacher_from_model(model.ctx.ptr, model.ptr,
                                                      ctypes.byref(out)), "kd_teacher_from_model")
        return cls(model.ctx, out.value, int(np.prod(model.output_shape)), parents=(model,))

    def logits(self, x):
        x = _f32(x)
        batch = x.shape[0]
        out = np.empty((batch, self.classes), np.float32)
        self.error = None
        st = _ffi.teacher_logits(self.ptr, _fp(x), batch, _fp(out))
        self._raise(st, "kd_teacher_logits")
        return out

    def _raise(self, st, call):
        if st != 0 and self.error is not None:
            err, self.error = self.error, None
            try:
                _check(self.ctx.ptr, st, call)
            except Error as e:
                raise e from err
        _check(self.ctx.ptr, st, call)


class Student(_Handle):
    """kd_student: model + optimizer + weighted loss terms; step() is one update."""
    _destroy = staticmethod(_ffi.student_destroy)

    def __init__(self, model, optimizer, max_grad_norm=0.0):
        cfg = _ffi.StudentConfig()
        _ffi.student_config_default(ctypes.byref(cfg))
        cfg.max_grad_norm = max_grad_norm
        out = ctypes.c_void_p()
        _check(model.ctx.ptr, _ffi.student_create(model.ctx.ptr, model.ptr, optimizer.ptr,
                                                  ctypes.byref(cfg), ctypes.byref(out)),
               "kd_student_create")
        super().__init__(out.value, (model, optimizer))
        self.model = model
        self.optimizer = optimizer
        self.losses = []

    def add_loss(self, loss, weight=1.0, no_labels=False):
        _check(self.model.ctx.ptr, _ffi.student_add_loss(self.ptr, loss.ptr, weight,
                                                         1 if no_labels else 0),
               "kd_student_add_loss")
        self.losses.append(loss)
        self._parents += (loss,)
        loss._dependants += 1

    def step(self, x, labels=None, teacher_logits=None):
        """One update; returns {'total', 'terms', 'grad_norm', 'lr', 'step'}."""
        x = _f32(x)
        batch = x.shape[0]
        lab = None if labels is None else _i32(labels)
        t = None if teacher_logits is None else _f32(teacher_logits)
        rep = _ffi.StepReport()
        rep.struct_size = ctypes.sizeof(rep)
        _check(self.model.ctx.ptr, _ffi.student_step(self.ptr, _fp(x), batch, _ip(lab), _fp(t),
                                                     ctypes.byref(rep)), "kd_student_step")
        return {"total": rep.total, "terms": list(rep.terms[:rep.n_terms]),
                "grad_norm": rep.grad_norm, "lr": rep.lr, "step": rep.step}


class SparseIndex(_Handle):
    """An inverted index over learned sparse vectors and BM25 tokens.

        idx = SparseIndex.build(ctx, [(doc_id, {term: weight}, [tokens]), ...])
        ids, scores = idx.search({term: weight}, tokens=[...], k=10)
    """
    _destroy = staticmethod(_ffi.sparse_index_destroy)

    def __init__(self, ctx, ptr):
        super().__init__(ptr, (ctx,))
        self.ctx = ctx

    @staticmethod
    def _sparse(vec):
        if vec is None:
            return np.zeros(0, np.uint32), np.zeros(0, np.float32)
        if isinstance(vec, dict):
            terms = np.fromiter(vec.keys(), np.uint32, len(vec))
            weights = np.fromiter(vec.values(), np.float32, len(vec))
            return terms, weights
        terms, weights = vec
        return _u32(terms), _f32(weights)

    @classmethod
    def build(cls, ctx, docs, quant_bits=8, quant_max=0.0):
        """docs: iterable of (doc_id, sparse, tokens); sparse is {term: weight} or
        (term_ids, weights); tokens a list of token ids or None."""
        cfg = _ffi.SparseIndexConfig()
        _ffi.sparse_index_config_default(ctypes.byref(cfg))
        cfg.quant_bits = quant_bits
        cfg.quant_max = quant_max
        b = ctypes.c_void_p()
        _check(ctx.ptr, _ffi.sparse_index_builder_create(ctx.ptr, ctypes.byref(cfg),
                                                         ctypes.byref(b)),
               "kd_sparse_index_builder_create")
        try:
            for doc_id, sparse, tokens in docs:
                terms, weights = cls._sparse(sparse)
                if terms.shape != weights.shape:
                    raise Error(4, "term ids and weights differ in length", "add")
                tok = _u32(tokens if tokens is not None else [])
                _check(ctx.ptr, _ffi.sparse_index_builder_add(
                    b, doc_id, _up(terms), _fp(weights) if weights.size else None, terms.size,
                    _up(tok), tok.size), "kd_sparse_index_builder_add")
            out = ctypes.c_void_p()
            _check(ctx.ptr, _ffi.sparse_index_build(b, ctypes.byref(out)),
                   "kd_sparse_index_build")
        finally:
            _ffi.sparse_index_builder_destroy(b)
        return cls(ctx, out.value)

    @classmethod
    def load(cls, ctx, path):
        out = ctypes.c_void_p()
        _check(ctx.ptr, _ffi.sparse_index_load(ctx.ptr, str(path).encode(), ctypes.byref(out)),
               "kd_sparse_index_load")
        return cls(ctx, out.value)

    def save(self, path):
        _check(self.ctx.ptr, _ffi.sparse_index_save(self.ptr, str(path).encode()),
               "kd_sparse_index_save")

    def search(self, query=None, tokens=None, k=10, algo="maxscore", weight_sparse=1.0,
               weight_bm25=1.0):
        """Top-k (doc ids uint32 array, scores float32 array), best first."""
        cfg = _ffi.SparseSearchConfig()
        _ffi.sparse_search_config_default(ctypes.byref(cfg))
        cfg.algo = {"maxscore": 0, "bmw": 1, "exhaustive": 2}[algo]
        cfg.weight_sparse = weight_sparse
        cfg.weight_bm25 = weight_bm25
        terms, weights = self._sparse(query)
        tok = _u32(tokens if tokens is not None else [])
        ids = np.zeros(max(k, 1), np.uint32)
        scores = np.zeros(max(k, 1), np.float32)
        count = ctypes.c_size_t()
        _check(self.ctx.ptr, _ffi.sparse_index_search(
            self.ctx.ptr, self.ptr, ctypes.byref(cfg), _up(terms),
            _fp(weights) if weights.size else None, terms.size, _up(tok), tok.size, k,
            _up(ids), _fp(scores), ctypes.byref(count)), "kd_sparse_index_search")
        return ids[:count.value].copy(), scores[:count.value].copy()
