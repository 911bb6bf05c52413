# taylorscope -- plain make. Outputs under build/ (build-sanitize/ for `make sanitize`).
#
# Sources are found by directory, so adding a file needs no edit here:
#   kernels/*.c kernels/ref/*.c kernels/cpu/*.c   -> libtk.a   (kernels)
#   kernels/cuda/*.cu                              -> libtkcuda.a (when nvcc is found)
#   agent/*.c                                      -> libta.a   (agent, protocol)
#   agent/sim/*.c (but main.c)                     -> libtsim.a (simulator)
#   agent/sim/*.cu                                 -> libtsim.a too (when nvcc is found)
#   console/*.c console/ui/*.c (but main.c)        -> libtc.a   (recorder, store, UI)
#   kernels/taylor-attn.c, agent/sim/main.c, console/main.c -> the three programs
#   **/*_test.c                                    -> one test binary each (build/tests/)
#   tests/integration/*.sh                         -> integration tests
#   tests/gpu/*_test.c                             -> GPU tests (skipped without a GPU)

BUILD ?= build
CC ?= cc
NVCC ?= $(shell command -v nvcc 2>/dev/null)
CUDA_HOME ?= $(if $(NVCC),$(patsubst %/bin/nvcc,%,$(NVCC)),/usr/local/cuda)

# OPT and SAN may be set on the command line; the rest is always added.
OPT ?= -O2 -g
SAN ?=
WARN := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -Wno-psabi
ALL_CFLAGS = $(OPT) $(SAN) -std=c11 -D_GNU_SOURCE $(WARN) -pthread -MMD -MP \
             -Ikernels -Iagent -Iconsole -Itests $(DEFS) $(CFLAGS)
ALL_LDFLAGS = $(SAN) -pthread $(LDFLAGS)
LDLIBS := -lnng -lmsgpackc -lsqlite3 -lncursesw -ltinfo -lopenblas -lm

ifneq ($(NVCC),)
  HAVE_CUDA := 1
  DEFS += -DTK_HAVE_CUDA=1
  NVOPT ?= -O3 -g -lineinfo
  NVCCFLAGS = $(NVOPT) -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Xcompiler -Wall,-Wextra,-Werror \
               -Werror all-warnings -MMD -MP -Ikernels -Iagent -DTK_HAVE_CUDA=1
  LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart_static -ldl -lrt -lstdc++
endif

# ---- sources ----
TEST_SRC := $(wildcard kernels/*_test.c kernels/*/*_test.c agent/*_test.c agent/sim/*_test.c \
                       console/*_test.c console/ui/*_test.c tests/unit/*_test.c tests/gpu/*_test.c)
KERNELS_SRC := $(filter-out kernels/taylor-attn.c $(TEST_SRC),$(wildcard kernels/*.c kernels/ref/*.c kernels/cpu/*.c))
CUDA_SRC := $(wildcard kernels/cuda/*.cu)
AGENT_SRC := $(filter-out $(TEST_SRC),$(wildcard agent/*.c))
SIM_SRC := $(filter-out agent/sim/main.c $(TEST_SRC),$(wildcard agent/sim/*.c))
SIM_CU := $(if $(HAVE_CUDA),$(wildcard agent/sim/*.cu))
CONSOLE_SRC := $(filter-out console/main.c $(TEST_SRC),$(wildcard console/*.c console/ui/*.c))
SCHEMA_SQL := $(sort $(wildcard schema/*.sql))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

LIB_TK := $(BUILD)/lib/libtk.a
LIB_TKCUDA := $(if $(HAVE_CUDA),$(BUILD)/lib/libtkcuda.a)
LIB_TA := $(BUILD)/lib/libta.a
LIB_TSIM := $(BUILD)/lib/libtsim.a
LIB_TC := $(BUILD)/lib/libtc.a
# Link order: highest layer first.
LIBS_ALL := $(LIB_TC) $(LIB_TSIM) $(LIB_TA) $(LIB_TK) $(LIB_TKCUDA)

BENCH_SRC := $(wildcard bench/*.c)
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))
BINS := $(BUILD)/bin/taylor-attn $(BUILD)/bin/taylor-sim $(BUILD)/bin/taylorscope
TEST_BINS := $(patsubst %.c,$(BUILD)/tests/%,$(subst /,__,$(TEST_SRC)))
TOOLS := $(BUILD)/bin/gen-knobs-md

.SECONDARY:
.PHONY: all demo test sanitize bench bench-gpu gpu-test deps clean docs check-deps tests
all: $(BINS) $(TOOLS)

# ---- libraries ----
$(LIB_TK): $(call obj,$(KERNELS_SRC))
$(LIB_TA): $(call obj,$(AGENT_SRC))
$(LIB_TSIM): $(call obj,$(SIM_SRC)) $(patsubst %.cu,$(BUILD)/obj/%.o,$(SIM_CU))
$(LIB_TC): $(call obj,$(CONSOLE_SRC)) $(BUILD)/obj/schema/schema_sql.o
$(BUILD)/lib/%.a:
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

ifneq ($(HAVE_CUDA),)
$(LIB_TKCUDA): $(patsubst %.cu,$(BUILD)/obj/%.o,$(CUDA_SRC))
$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@
endif

# The numbered migrations, embedded into the binary at build time.
$(BUILD)/obj/schema/schema_sql.c: $(SCHEMA_SQL) scripts/embed-schema.sh
	@mkdir -p $(dir $@)
	sh scripts/embed-schema.sh $(SCHEMA_SQL) > $@
$(BUILD)/obj/schema/schema_sql.o: $(BUILD)/obj/schema/schema_sql.c
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# ---- programs ----
$(BUILD)/bin/taylor-attn: $(BUILD)/obj/kernels/taylor-attn.o $(LIB_TK) $(LIB_TKCUDA)
$(BUILD)/bin/taylor-sim: $(BUILD)/obj/agent/sim/main.o $(LIB_TSIM) $(LIB_TA) $(LIB_TK) $(LIB_TKCUDA)
$(BUILD)/bin/taylorscope: $(BUILD)/obj/console/main.o $(LIB_TC) $(LIB_TA) $(LIB_TK) $(LIB_TKCUDA)
$(BUILD)/bin/gen-knobs-md: $(BUILD)/obj/scripts/gen-knobs-md.o $(LIB_TK)
# The libraries refer to each other (libtkcuda needs libtk and back): one group.
link_libs = -Wl,--start-group $(filter %.a,$(1)) -Wl,--end-group
$(BUILD)/bin/%:
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) $(filter %.o,$^) $(call link_libs,$^) $(LDLIBS) -o $@

# ---- tests ----
$(BUILD)/tests/%: $(BUILD)/obj/tests/harness.o $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) $(BUILD)/obj/$(subst __,/,$*).o $(BUILD)/obj/tests/harness.o \
	  $(call link_libs,$(LIBS_ALL)) $(LDLIBS) -o $@
# each test binary also depends on its own object
define TEST_DEP
$(BUILD)/tests/$(subst /,__,$(basename $(1))): $(call obj,$(1))
endef
$(foreach t,$(TEST_SRC),$(eval $(call TEST_DEP,$(t))))

tests: all $(TEST_BINS)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) $(filter %.o,$^) $(call link_libs,$^) $(LDLIBS) -o $@

check-deps:
	@sh scripts/deps.sh --check >/dev/null 2>&1 || sh scripts/deps.sh

# `make test`: every unit and integration test, one summary line at the end.
test: check-deps
	@$(MAKE) -s --no-print-directory tests
	@BUILD=$(BUILD) sh tests/run.sh

# ASan + UBSan build running the same tests.
sanitize: check-deps
	@$(MAKE) -s --no-print-directory BUILD=build-sanitize OPT="-O1 -g -fno-omit-frame-pointer" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=all" tests
	@BUILD=build-sanitize ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:protect_shadow_gap=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 TS_SANITIZE=1 sh tests/run.sh

gpu-test: tests
	@BUILD=$(BUILD) sh tests/run-gpu.sh

bench: all $(BENCH_BINS)
	@BUILD=$(BUILD) sh bench/run.sh

bench-gpu: all $(BENCH_BINS)
	@BUILD=$(BUILD) sh bench/run-gpu.sh

demo: check-deps all
	@BUILD=$(BUILD) sh scripts/demo.sh

deps:
	@sh scripts/deps.sh

docs: $(BUILD)/bin/gen-knobs-md
	$(BUILD)/bin/gen-knobs-md > docs/KNOBS.md

clean:
	rm -rf build build-sanitize

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
