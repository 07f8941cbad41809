EXTENSION = sluice
EXTVERSION = $(shell grep default_version $(EXTENSION).control | sed -e "s/default_version[[:space:]]*=[[:space:]]*'\([^']*\)'/\1/")
MODULE_big = sluice
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c src/sources/*.c src/sinks/*.c))
DATA = $(wildcard sql/$(EXTENSION)--*.sql) $(EXTENSION)--0.1.control

REGRESS = $(patsubst sql/%.sql,%,$(filter-out sql/$(EXTENSION)--%,$(wildcard sql/*.sql)))
REGRESS_OPTS = --temp-config=./test/sluice.conf --temp-instance=./tmp_check --inputdir=.

PG_CPPFLAGS = -Isrc -DSLUICE_VERSION='"$(EXTVERSION)"'
SHLIB_LINK = -lrdkafka
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# after PGXS, so that the default goal stays PGXS's: objects follow the headers
$(OBJS): $(wildcard src/*.h)
# the version the library is built for comes from the control file
src/catalog.o src/launcher.o: $(EXTENSION).control

# the tests' Kafka cluster (librdkafka's mock cluster, driven on stdin)
all: test/kafka_mock
test/kafka_mock: test/kafka_mock.c
	$(CC) $(CFLAGS) -Wall -Werror -o $@ $< -lrdkafka -lpthread
EXTRA_CLEAN = test/kafka_mock

# The tests write their files under $SLUICE_TEST_DIR, a new directory for each
# run (scripts/test makes it), so that two runs can go on side by side.
installcheck: sluice-test-dir
.PHONY: sluice-test-dir
sluice-test-dir:
	@[ -n "$$SLUICE_TEST_DIR" ] && [ -d "$$SLUICE_TEST_DIR" ] || \
	  { echo 'installcheck: set SLUICE_TEST_DIR to an empty directory the postgres OS user can write (scripts/test does)' >&2; exit 1; }
