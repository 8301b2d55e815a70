"""Low-level ctypes declarations of libkd's C API (include/kd/*.h).

Only what the Python layer uses is declared. Struct layouts mirror the C
headers field by field; every config struct is filled by its C
kd_X_default_sized() function first, passing this module's ctypes size of the
struct (what the C macro kd_X_default() passes as sizeof), so fields added
later by the library keep their defaults and are never written past the end.
"""
import ctypes
import ctypes.util
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_float, c_int,
                    c_int32, c_size_t, c_uint, c_uint32, c_uint64, c_void_p)

c_float_p = POINTER(c_float)
c_int32_p = POINTER(c_int32)
c_uint32_p = POINTER(c_uint32)
c_size_t_p = POINTER(c_size_t)
c_status = c_int  # kd_status is a C enum: int-sized


def _candidates():
    env = os.environ.get("LIBKD_PATH")
    if env:
        yield env
        return
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, "..", "..", ".."))
    for build in ("build", "build-test"):
        yield os.path.join(root, build, "lib", "libkd.so.0")
    found = ctypes.util.find_library("kd")
    if found:
        yield found
    yield "libkd.so.0"


def load_library():
    """Loads libkd: $LIBKD_PATH, else a build folder of this checkout, else the system's."""
    errors = []
    for path in _candidates():
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            errors.append("%s: %s" % (path, e))
    raise OSError("cannot load libkd (set LIBKD_PATH to libkd.so): " + "; ".join(errors))


lib, lib_path = load_library()

KD_TENSOR_MAX_RANK = 4
KD_STUDENT_MAX_TERMS = 8
KD_LOSS_IGNORE_INDEX = -100

LOG_FN = CFUNCTYPE(None, c_void_p, c_int, c_char_p)
TEACHER_FN = CFUNCTYPE(c_int, c_void_p, c_float_p, c_size_t, c_size_t, c_float_p, c_size_t)


class Allocator(Structure):
    _fields_ = [("alloc", c_void_p), ("free", c_void_p), ("opaque", c_void_p)]


class ContextConfig(Structure):
    _fields_ = [("struct_size", c_uint32), ("allocator", Allocator), ("arena", c_void_p),
                ("arena_size", c_size_t), ("threads", c_int), ("seed", c_uint64),
                ("log", c_void_p), ("log_user", c_void_p), ("log_level", c_int),
                ("gemm", c_int), ("blis_arch", c_char_p)]


class OptimizerConfig(Structure):
    _fields_ = [("struct_size", c_uint32), ("kind", c_int), ("lr", c_float),
                ("weight_decay", c_float), ("momentum", c_float), ("dampening", c_float),
                ("nesterov", c_int), ("beta1", c_float), ("beta2", c_float), ("eps", c_float)]


class CeConfig(Structure):
    _fields_ = [("struct_size", c_uint32), ("reduction", c_int), ("label_smoothing", c_float)]


class HintonConfig(Structure):
    _fields_ = [("struct_size", c_uint32), ("reduction", c_int), ("temperature", c_float),
                ("alpha", c_float), ("label_smoothing", c_float)]


class DivergenceConfig(Structure):
    _fields_ = [("struct_size", c_uint32), ("reduction", c_int), ("temperature", c_float),
                ("jsd_beta", c_float), ("skew_alpha", c_float)]


class LossBatch(Structure):
    _fields_ = [("struct_size", c_uint32), ("rows", c_size_t), ("classes", c_size_t),
                ("student_logits", c_float_p), ("teacher_logits", c_float_p),
                ("teacher_classes", c_size_t), ("teacher_sparse", c_void_p),
                ("student_dim", c_size_t), ("student_features", c_float_p),
                ("teacher_dim", c_size_t), ("teacher_features", c_float_p),
                ("candidates", c_size_t), ("student_scores", c_float_p),
                ("teacher_scores", c_float_p), ("labels", c_int32_p),
                ("ignore_index", c_int32), ("weights", c_float_p)]


class LossGrad(Structure):
    _fields_ = [("struct_size", c_uint32), ("scale", c_float), ("student_logits", c_float_p),
                ("student_features", c_float_p), ("student_scores", c_float_p)]


class StudentConfig(Structure):
    _fields_ = [("struct_size", c_uint32), ("max_grad_norm", c_float), ("schedule", c_void_p)]


class StepReport(Structure):
    _fields_ = [("struct_size", c_uint32), ("total", c_double),
                ("terms", c_double * KD_STUDENT_MAX_TERMS), ("n_terms", c_size_t),
                ("grad_norm", c_float), ("lr", c_float), ("step", c_uint64)]


class SparseIndexConfig(Structure):
    _fields_ = [("struct_size", c_uint32), ("quant_bits", c_uint32), ("quant_max", c_float)]


class SparseSearchConfig(Structure):
    _fields_ = [("struct_size", c_uint32), ("algo", c_int), ("weight_sparse", c_float),
                ("weight_bm25", c_float), ("bm25_k1", c_float), ("bm25_b", c_float),
                ("threads", c_int)]


def _fn(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


def _default(name, struct, *extra):
    """kd_<name>_default(p[, extra]) as the C macro expands it."""
    f = _fn("kd_" + name + "_default_sized", None, POINTER(struct), *extra, c_size_t)
    size = ctypes.sizeof(struct)
    return lambda p, *args: f(p, *args, size)


P = c_void_p  # opaque handles
PP = POINTER(c_void_p)

version_string = _fn("kd_version_string", c_char_p)
status_string = _fn("kd_status_string", c_char_p, c_int)
context_config_default = _default("context_config", ContextConfig)
context_create = _fn("kd_context_create", c_status, POINTER(ContextConfig), PP)
context_destroy = _fn("kd_context_destroy", None, P)
context_last_error = _fn("kd_context_last_error", c_char_p, P)
context_arena_usage = _fn("kd_context_arena_usage", c_status, P, c_size_t_p, c_size_t_p)

model_create_from_spec = _fn("kd_model_create_from_spec", c_status, P, c_char_p, PP)
model_destroy = _fn("kd_model_destroy", None, P)
model_spec = _fn("kd_model_spec", c_status, P, ctypes.c_char_p, c_size_t, c_size_t_p)
model_input_shape = _fn("kd_model_input_shape", c_status, P, c_size_t * KD_TENSOR_MAX_RANK,
                        c_uint32_p, POINTER(c_int))
model_output_shape = _fn("kd_model_output_shape", c_status, P, c_size_t * KD_TENSOR_MAX_RANK,
                         c_uint32_p, c_size_t_p)
model_param_count = _fn("kd_model_param_count", c_size_t, P)
model_blocks = _fn("kd_model_blocks", c_status, P, POINTER(c_float_p), POINTER(c_float_p),
                   c_size_t_p)
model_tensor_count = _fn("kd_model_tensor_count", c_size_t, P)
model_tensor_name = _fn("kd_model_tensor_name", c_status, P, c_size_t, POINTER(c_char_p))
model_tensor = _fn("kd_model_tensor", c_status, P, c_size_t, POINTER(c_float_p), c_size_t_p,
                   c_size_t * KD_TENSOR_MAX_RANK, c_uint32_p, POINTER(c_int))
model_zero_grad = _fn("kd_model_zero_grad", c_status, P)
model_forward = _fn("kd_model_forward", c_status, P, c_int, c_float_p, c_size_t, c_size_t,
                    POINTER(c_float_p))
model_infer_workspace_size = _fn("kd_model_infer_workspace_size", c_status, P, c_size_t,
                                 c_size_t_p)
model_infer = _fn("kd_model_infer", c_status, P, P, c_float_p, c_size_t, c_size_t, c_float_p,
                  c_size_t, c_void_p, c_size_t)
model_backward = _fn("kd_model_backward", c_status, P, c_float_p, c_size_t, c_float_p, c_size_t)
model_save = _fn("kd_model_save", c_status, P, c_char_p)
model_save_size = _fn("kd_model_save_size", c_status, P, c_size_t_p)
model_save_memory = _fn("kd_model_save_memory", c_status, P, c_void_p, c_size_t, c_size_t_p)
model_load = _fn("kd_model_load", c_status, P, c_char_p, PP)
model_load_memory = _fn("kd_model_load_memory", c_status, P, c_void_p, c_size_t, PP)

optimizer_config_default = _default("optimizer_config", OptimizerConfig, c_int)
optimizer_create = _fn("kd_optimizer_create", c_status, P, POINTER(OptimizerConfig), PP)
optimizer_destroy = _fn("kd_optimizer_destroy", None, P)
optimizer_step = _fn("kd_optimizer_step", c_status, P)

loss_create = _fn("kd_loss_create", c_status, P, P, c_void_p, PP)
loss_destroy = _fn("kd_loss_destroy", None, P)
loss_compute = _fn("kd_loss_compute", c_status, P, POINTER(LossBatch), POINTER(c_double),
                   POINTER(LossGrad))
loss_name = _fn("kd_loss_name", c_char_p, P)
loss_context = _fn("kd_loss_context", P, P)
loss_batch_default = _default("loss_batch", LossBatch)
loss_grad_default = _default("loss_grad", LossGrad)
loss_ce_config_default = _default("loss_ce_config", CeConfig)
loss_hinton_config_default = _default("loss_hinton_config", HintonConfig)
loss_divergence_config_default = _default("loss_divergence_config", DivergenceConfig)
loss_vtables = {name: _fn("kd_loss_" + name, P) for name in
                ("cross_entropy", "hinton", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")}

teacher_from_callback = _fn("kd_teacher_from_callback", c_status, P, c_size_t, c_size_t,
                            TEACHER_FN, c_void_p, PP)
teacher_from_model = _fn("kd_teacher_from_model", c_status, P, P, PP)
teacher_destroy = _fn("kd_teacher_destroy", None, P)
teacher_logits = _fn("kd_teacher_logits", c_status, P, c_float_p, c_size_t, c_float_p)

student_config_default = _default("student_config", StudentConfig)
student_create = _fn("kd_student_create", c_status, P, P, P, POINTER(StudentConfig), PP)
student_destroy = _fn("kd_student_destroy", None, P)
student_add_loss = _fn("kd_student_add_loss", c_status, P, P, c_float, c_uint32)
student_step = _fn("kd_student_step", c_status, P, c_float_p, c_size_t, c_int32_p, c_float_p,
                   POINTER(StepReport))

sparse_index_config_default = _default("sparse_index_config", SparseIndexConfig)
sparse_index_builder_create = _fn("kd_sparse_index_builder_create", c_status, P,
                                  POINTER(SparseIndexConfig), PP)
sparse_index_builder_add = _fn("kd_sparse_index_builder_add", c_status, P, c_uint32, c_uint32_p,
                               c_float_p, c_size_t, c_uint32_p, c_size_t)
sparse_index_build = _fn("kd_sparse_index_build", c_status, P, PP)
sparse_index_builder_destroy = _fn("kd_sparse_index_builder_destroy", None, P)
sparse_index_destroy = _fn("kd_sparse_index_destroy", None, P)
sparse_search_config_default = _default("sparse_search_config", SparseSearchConfig)
sparse_index_search = _fn("kd_sparse_index_search", c_status, P, P, POINTER(SparseSearchConfig),
                          c_uint32_p, c_float_p, c_size_t, c_uint32_p, c_size_t, c_size_t,
                          c_uint32_p, c_float_p, c_size_t_p)
sparse_index_save = _fn("kd_sparse_index_save", c_status, P, c_char_p)
sparse_index_load = _fn("kd_sparse_index_load", c_status, P, c_char_p, PP)
