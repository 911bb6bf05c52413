/* synthetic.h -- a deterministic made-up run (header plus `steps` steps of
 * `layers` layer rows), applied to a model through tc_model_apply, for the
 * draw benchmark and the panel tests. */
#ifndef TC_UI_SYNTHETIC_H
#define TC_UI_SYNTHETIC_H

#include "ui/model.h"

int tc_model_fill_synthetic(tc_model *m, int layers, int steps, char *err, size_t errlen);

#endif
