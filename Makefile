# coopy: native helpers, tests, benchmarks.
#   make            build the native helpers into coopy/libexec/ (what `pip install` does):
#                   coopy-init (PID 1 of a box) and coopy (the front end, installed as the
#                   `coopy` command; the Python CLI is `coopy-py`)
#   make test       the whole test suite, as root and as an unprivileged user it creates
#   make bench      start-up and other benchmarks against bubblewrap/unshare/podman
CC      ?= cc
CFLAGS  ?= -O2
CFLAGS  += -std=gnu11 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong
# Static: PID 1 runs inside any image (musl, distroless) with no loader of its own.
LDFLAGS += -static
LIBEXEC := coopy/libexec
HELPERS := $(LIBEXEC)/coopy-init $(LIBEXEC)/coopy-keeper $(LIBEXEC)/coopy
PYTHON  ?= /usr/bin/python3
# The test environment lives outside the checkout so the unprivileged test user can use
# it even when the checkout is under /root.
TEST_VENV ?= /var/tmp/coopy-test-venv

.PHONY: all native test bench clean lint
all: native
native: $(HELPERS)

$(LIBEXEC)/%: native/%.c native/common.h
	@mkdir -p $(LIBEXEC)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS)

# The keeper's relay and the front end are several files each (their header says which
# does what).
KEEPER  := $(sort $(wildcard native/keeper/*.c))
$(LIBEXEC)/coopy-keeper: $(KEEPER) native/keeper/keeper.h native/common.h
	@mkdir -p $(LIBEXEC)
	$(CC) $(CFLAGS) -o $@ $(KEEPER) $(LDFLAGS)

FRONT   := $(sort $(wildcard native/front/*.c))
$(LIBEXEC)/coopy: $(FRONT) native/front/front.h native/common.h
	@mkdir -p $(LIBEXEC)
	$(CC) $(CFLAGS) -o $@ $(FRONT) $(LDFLAGS)

test:
	./tests/run.sh

bench:
	./bench/run.sh

lint:
	$(TEST_VENV)/bin/ruff check coopy tests bench
	$(TEST_VENV)/bin/mypy --strict coopy

clean:
	rm -rf $(LIBEXEC) build *.egg-info
