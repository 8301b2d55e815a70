/*
 * kd.h - umbrella header: include this to get all of libkd's public API.
 */
#ifndef KD_H
#define KD_H

#include "kd_core.h"
#include "kd_math.h"
#include "kd_data.h"

#endif /* KD_H */
