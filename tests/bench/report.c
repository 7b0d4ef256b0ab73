/*
 * report: what a run measured, as text or as one JSON object, and the fan-out latencies
 * computed from the subscribers' samples and the councils' ack times.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* "echo" for ceiling-echo, "redis" for redis. */
static const char *
short_name(const struct bench_result *r)
{
	return strncmp(r->name, "ceiling-", 8) == 0 ? r->name + 8 : r->name;
}

static void
print_result_json(const struct bench_result *r)
{
	printf("{\"acked\":%" PRIu64 ",\"total\":%" PRIu64 ",\"accepted\":%" PRIu64
	       ",\"duplicate\":%" PRIu64 ",\"rejected\":%" PRIu64 ",\"retry_later\":%" PRIu64
	       ",\"seconds\":%.3f,\"acked_per_second\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
	       "\"p999_ms\":%.3f,\"max_ms\":%.3f,\"envelope_bytes\":%.1f,\"server_cpu_seconds\":%."
	       "3f,"
	       "\"server_cpu_folded_seconds\":%.3f,\"fold_messages\":%" PRIu64 ","
	       "\"avg_batch\":%.1f,\"avg_commit_ms\":%.3f,\"error\":%d}",
	       r->acked, r->total, r->status[1], r->status[2], r->status[3], r->status[4],
	       r->seconds, r->rate, r->p50, r->p99, r->p999, r->max, r->mean_bytes, r->server_cpu,
	       r->server_cpu_folded, r->fold_messages, r->avg_batch, r->avg_commit_ms, r->error);
}

static void
print_result_text(const struct bench_result *r)
{
	printf("%-11s %9.0f msgs/s  p50 %7.3f  p99 %7.3f  p99.9 %7.3f  max %7.3f ms", r->name,
	       r->rate, r->p50, r->p99, r->p999, r->max);
	if (r->server_cpu >= 0) {
		printf("  cpu %.2f s", r->server_cpu);
	}
	if (r->server_cpu_folded >= 0) {
		printf(" (%.2f s with its folds)", r->server_cpu_folded);
	}
	if (r->avg_batch >= 0) {
		printf("  batch %.1f", r->avg_batch);
	}
	if (r->avg_commit_ms >= 0) {
		printf("  commit %.2f ms", r->avg_commit_ms);
	}
	printf("\n%-11s acked %" PRIu64 " of %" PRIu64 " (accepted %" PRIu64 ", duplicate %" PRIu64
	       ", rejected %" PRIu64 ", retry later %" PRIu64 ") in %.3f s\n",
	       "", r->acked, r->total, r->status[1], r->status[2], r->status[3], r->status[4],
	       r->seconds);
}

static void
print_settle_json(const struct bench_settle *st)
{
	printf(",\"settle\":{\"settled\":%s,\"seconds\":%.3f,\"sync_seconds\":%.3f,"
	       "\"broker_cpu_seconds\":%.3f,\"messages\":%" PRIu64 ",\"digest_log_before\":%.0f,"
	       "\"digest_log_after\":%.0f,\"digest_log_limit\":%.0f,\"dirty_before_kib\":%ld,"
	       "\"dirty_after_kib\":%ld}",
	       st->settled ? "true" : "false", st->seconds, st->sync_seconds, st->broker_cpu,
	       st->messages, st->log_before, st->log_after, st->log_limit, st->dirty_before_kib,
	       st->dirty_after_kib);
}

static void
print_settle_text(const struct bench_settle *st)
{
	printf("%-11s %s after %.1f s: ", "settle", st->settled ? "settled" : "NOT SETTLED",
	       st->seconds);
	if (st->log_before >= 0) {
		printf("digest log %.0f -> %.0f contributions (limit %.0f), %" PRIu64
		       " messages trickled; ",
		       st->log_before, st->log_after, st->log_limit, st->messages);
	} else {
		printf("digest log unknown; ");
	}
	printf("dirty + writeback %.0f -> %.0f MiB, syncfs %.2f s",
	       (double) st->dirty_before_kib / 1024, (double) st->dirty_after_kib / 1024,
	       st->sync_seconds);
	if (st->broker_cpu >= 0) {
		printf("; broker cpu %.2f s", st->broker_cpu);
	}
	printf("\n");
}

void
bench_fanout_compute(const struct bench_phase *ph, const struct bench_sub_sample *s, size_t n,
                     struct bench_fanout *f)
{
	int64_t *newest = malloc((n ? n : 1) * sizeof(*newest));
	int64_t *oldest = malloc((n ? n : 1) * sizeof(*oldest));
	size_t k = 0, ko = 0;
	double bytes = 0;

	if (!newest || !oldest) {
		free(newest);
		free(oldest);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t last = s[i].last_seq, first = s[i].first_seq;
		if (last <= ph->seq_base || last - ph->seq_base > ph->seq_n) {
			continue;
		}
		int64_t t = ph->ack_by_seq[last - ph->seq_base - 1];
		if (t == 0) {
			continue; /* not acked ACCEPTED in this phase */
		}
		newest[k++] = s[i].recv_ns - t;
		bytes += (double) s[i].bytes;
		f->bytes[1] = (double) s[i].bytes > f->bytes[1] ? (double) s[i].bytes : f->bytes[1];
		f->before_ack += s[i].recv_ns < t;
		first = first > ph->seq_base ? first : ph->seq_base + 1;
		int64_t t0 = ph->ack_by_seq[first - ph->seq_base - 1];
		if (t0) {
			oldest[ko++] = s[i].recv_ns - t0;
		}
	}
	qsort(newest, k, sizeof(*newest), bench_cmp_i64);
	qsort(oldest, ko, sizeof(*oldest), bench_cmp_i64);
	static const double q[4] = {0.5, 0.99, 0.999, 1.0};
	for (int i = 0; i < 4; i++) {
		f->newest[i] = bench_quantile_ms(newest, k, q[i]);
		f->oldest[i] = bench_quantile_ms(oldest, ko, q[i]);
	}
	f->digests = k;
	f->bytes[0] = k ? bytes / (double) k : 0;
	free(newest);
	free(oldest);
}

void
bench_report_json(const struct bench_options *o, const struct bench_result *res, size_t n_res,
                  const struct bench_settle *settle, const struct bench_result *coordd,
                  const struct bench_snapshot *end, const struct bench_fanout *f)
{
	char mix[160];

	bench_mix_format(&o->mix, mix, sizeof(mix));
	printf("{\"councils\":%u,\"messages\":%u,\"window\":%u,\"size\":%u,\"mix\":\"%s\","
	       "\"preload\":%" PRIu64 ",",
	       o->councils, o->messages, o->window, o->size, mix, o->preload);
	/* coordd's figures also at the top level, as before the phases existed. */
	printf("\"acked\":%" PRIu64 ",\"acked_per_second\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
	       "\"p999_ms\":%.3f,\"phases\":{",
	       coordd->acked, coordd->rate, coordd->p50, coordd->p99, coordd->p999);
	for (size_t i = 0; i < n_res; i++) {
		printf("%s\"%s\":", i ? "," : "", res[i].name);
		print_result_json(&res[i]);
	}
	printf("}");
	if (settle->ran) {
		print_settle_json(settle);
	}
	for (size_t i = 0; i < n_res; i++) {
		if (res[i].reference && res[i].rate > 0) {
			printf(",\"ratio_to_%s\":%.3f", short_name(&res[i]),
			       coordd->rate / res[i].rate);
		}
	}
	const struct bench_usage *u = &end->usage;
	const struct bench_broker_stats *st = &end->stats;
	printf(",\"broker\":{\"peak_rss_kib\":%ld,\"rss_kib\":%ld,\"private_kib\":%ld,"
	       "\"lmdb_private_kib\":%ld,\"private_without_lmdb_kib\":%ld",
	       u->hwm_kib, u->rss_kib, u->private_kib, u->lmdb_private_kib,
	       u->private_kib >= 0 ? u->private_kib - u->lmdb_private_kib : -1);
	if (st->have_stats) {
		printf(",\"items\":%" PRIu64 ",\"records\":%" PRIu64 ",\"store_bytes\":%" PRIu64
		       ",\"store_bytes_per_item\":%.1f",
		       st->items, st->records, st->store_bytes,
		       st->items ? (double) st->store_bytes / (double) st->items : 0.0);
	}
	printf("}");
	if (f) {
		printf(",\"subscribers\":{\"count\":%u,\"ready\":%u,\"caught_up\":%u,\"digests\":%"
		       "zu,"
		       "\"before_ack\":%zu,\"dropped_samples\":%" PRIu64
		       ",\"ingest_ratio_to_no_subscribers\":%.3f,"
		       "\"fanout_newest_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f}"
		       ","
		       "\"fanout_oldest_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f}"
		       ",\"digest_bytes\":{\"mean\":%.0f,\"max\":%.0f}}",
		       f->subscribers, f->ready, f->caught_up, f->digests, f->before_ack,
		       f->dropped, f->ingest_ratio, f->newest[0], f->newest[1], f->newest[2],
		       f->newest[3], f->oldest[0], f->oldest[1], f->oldest[2], f->oldest[3],
		       f->bytes[0], f->bytes[1]);
	}
	printf("}\n");
}

void
bench_report_text(const struct bench_options *o, const struct bench_result *res, size_t n_res,
                  const struct bench_settle *settle, const struct bench_result *coordd,
                  const struct bench_snapshot *end, const struct bench_fanout *f)
{
	char mix[160];

	bench_mix_format(&o->mix, mix, sizeof(mix));
	printf("coord-bench: %u councils x %u messages, window %u, ~%u-byte envelopes (mean %.0f)\n"
	       "mix %s%s",
	       o->councils, o->messages, o->window, o->size, coordd->mean_bytes, mix,
	       o->preload ? "" : "\n");
	if (o->preload) {
		printf(", after a preload of %" PRIu64 " records\n", o->preload);
	}
	for (size_t i = 0; i < n_res; i++) {
		print_result_text(&res[i]);
		if (settle->ran && strcmp(res[i].name, "preload") == 0) {
			print_settle_text(settle);
		}
	}
	for (size_t i = 0; i < n_res; i++) {
		if (res[i].reference && res[i].rate > 0) {
			printf("coordd / %-5s %.3f\n", short_name(&res[i]),
			       coordd->rate / res[i].rate);
		}
	}
	const struct bench_usage *u = &end->usage;
	if (u->hwm_kib >= 0) {
		printf("broker      peak RSS %ld KiB, RSS %ld KiB", u->hwm_kib, u->rss_kib);
		if (u->private_kib >= 0) {
			printf(", private %ld KiB of which data.mdb %ld KiB: %ld KiB without the "
			       "store "
			       "file",
			       u->private_kib, u->lmdb_private_kib,
			       u->private_kib - u->lmdb_private_kib);
		}
		printf("\n");
	}
	const struct bench_broker_stats *st = &end->stats;
	if (st->have_stats && st->items) {
		printf("store       %" PRIu64 " items, %" PRIu64 " bytes used: %.0f bytes per item "
		       "(%.2fx the mean Envelope)\n",
		       st->items, st->store_bytes, (double) st->store_bytes / (double) st->items,
		       coordd->mean_bytes > 0
		               ? (double) st->store_bytes / (double) st->items / coordd->mean_bytes
		               : 0.0);
	}
	if (f) {
		printf("subscribers %u on '%s' (%u answered at once, %u saw the last record); "
		       "ingest %.3fx of no subscribers\n",
		       f->subscribers, o->topic, f->ready, f->caught_up, f->ingest_ratio);
		printf("fan-out     %zu digests (%zu before the ack); from the newest record's "
		       "ack: "
		       "p50 %.3f p99 %.3f p99.9 %.3f max %.3f ms\n",
		       f->digests, f->before_ack, f->newest[0], f->newest[1], f->newest[2],
		       f->newest[3]);
		printf("            from the oldest record's ack: p50 %.3f p99 %.3f p99.9 %.3f max "
		       "%.3f ms\n",
		       f->oldest[0], f->oldest[1], f->oldest[2], f->oldest[3]);
		printf("            digest messages: mean %.0f bytes, largest %.0f bytes\n",
		       f->bytes[0], f->bytes[1]);
	}
}
