/*
 * kd.h - umbrella header: include this to get all of libkd's public API.
 */
#ifndef KD_H
#define KD_H

#include "kd_core.h"
#include "kd_math.h"
#include "kd_data.h"
#include "kd_nn.h"
#include "kd_loss.h"
#include "kd_distill.h"
#include "kd_vocab.h"
#include "kd_cache.h"
#include "kd_safetensors.h"
#include "kd_checkpoint.h"
#include "kd_retrieval.h"
#include "kd_moe.h"

#endif /* KD_H */
