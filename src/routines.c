/*
 * routines.c
 *		The sources and sinks there are, by the type their catalog
 *		options name.  A new source or sink is a new file and a line here.
 */
#include "postgres.h"

#include "sink.h"
#include "source.h"

static const SourceRoutine *const sources[] = {&csv_source_routine, &kafka_source_routine};
static const SinkRoutine *const sinks[] = {
	&append_sink_routine, &merge_sink_routine, &function_sink_routine, &window_sink_routine
};

const SourceRoutine *
source_routine(const char *type)
{
	for (int i = 0; i < lengthof(sources); i++)
		if (type && strcmp(sources[i]->type, type) == 0)
			return sources[i];
	elog(ERROR, "unknown sluice source type \"%s\"", type ? type : "");
	return NULL;				/* keep the compiler quiet */
}

const SinkRoutine *
sink_routine(const char *type)
{
	for (int i = 0; i < lengthof(sinks); i++)
		if (type && strcmp(sinks[i]->type, type) == 0)
			return sinks[i];
	elog(ERROR, "unknown sluice sink type \"%s\"", type ? type : "");
	return NULL;				/* keep the compiler quiet */
}
