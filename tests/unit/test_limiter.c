/*
 * Unit tests for daemon/limiter.c: the in-flight cap, the token bucket (refill, burst,
 * no token spent on a refusal), independence of senders, forgetting idle senders (settled
 * buckets, idle_max), table growth and bad arguments. Time is passed in, so nothing sleeps.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "limiter.h"

static struct limiter *
new_limiter(uint32_t max_inflight, uint32_t rate, uint32_t burst, size_t idle_max)
{
	const struct limiter_options o = {
	        .max_inflight = max_inflight,
	        .rate = rate,
	        .burst = burst,
	        .idle_max = idle_max,
	};
	struct limiter *l = NULL;

	assert_int_equal(limiter_new(&o, &l), 0);
	assert_non_null(l);
	return l;
}

static int
acquire(struct limiter *l, const char *key, uint64_t now, struct limiter_sender **ret)
{
	return limiter_acquire(l, key, strlen(key), now, ret);
}

/* Admit and answer at once: one message that only spends a token. */
static int
send_one(struct limiter *l, const char *key, uint64_t now)
{
	struct limiter_sender *s = NULL;
	int r = acquire(l, key, now, &s);

	if (r == LIMITER_ADMIT) {
		limiter_release(l, s, now);
	}
	return r;
}

static void
test_inflight_cap_refuses_then_readmits(void **state)
{
	struct limiter *l = new_limiter(3, 0, 0, 0);
	struct limiter_sender *s[3], *extra = NULL;

	for (int i = 0; i < 3; i++) {
		assert_int_equal(acquire(l, "ra", 0, &s[i]), LIMITER_ADMIT);
	}
	assert_int_equal(limiter_inflight(l, "ra", 2), 3);
	assert_int_equal(acquire(l, "ra", 0, &extra), LIMITER_INFLIGHT);
	assert_null(extra);
	limiter_release(l, s[0], 1);
	assert_int_equal(limiter_inflight(l, "ra", 2), 2);
	assert_int_equal(acquire(l, "ra", 1, &extra), LIMITER_ADMIT);
	limiter_release(l, extra, 1);
	limiter_release(l, s[1], 1);
	limiter_release(l, s[2], 1);
	assert_int_equal(limiter_inflight(l, "ra", 2), 0);
	assert_null(limiter_free(l));
}

static void
test_senders_are_independent(void **state)
{
	struct limiter *l = new_limiter(1, 0, 0, 0);
	struct limiter_sender *a = NULL, *b = NULL, *x = NULL;

	assert_int_equal(acquire(l, "ra", 0, &a), LIMITER_ADMIT);
	assert_int_equal(acquire(l, "ra", 0, &x), LIMITER_INFLIGHT);
	assert_int_equal(acquire(l, "rb", 0, &b), LIMITER_ADMIT);
	/* Same bytes, other type byte: another sender. */
	assert_int_equal(acquire(l, "ua", 0, &x), LIMITER_ADMIT);
	limiter_release(l, x, 0);
	limiter_release(l, a, 0);
	limiter_release(l, b, 0);
	assert_null(limiter_free(l));
}

static void
test_bucket_allows_burst_then_refills_at_rate(void **state)
{
	/* 10 per second: one token per 100 ms; a burst of 5. */
	struct limiter *l = new_limiter(100, 10, 5, 0);

	for (int i = 0; i < 5; i++) {
		assert_int_equal(send_one(l, "rc", 1000), LIMITER_ADMIT);
	}
	assert_int_equal(send_one(l, "rc", 1000), LIMITER_RATE);
	assert_int_equal(send_one(l, "rc", 1099), LIMITER_RATE);
	assert_int_equal(send_one(l, "rc", 1100), LIMITER_ADMIT);
	assert_int_equal(send_one(l, "rc", 1100), LIMITER_RATE);
	/* Refills in small steps add up (millitokens, not whole tokens per step). */
	for (uint64_t t = 1101; t < 1200; t += 7) {
		assert_int_equal(send_one(l, "rc", t), LIMITER_RATE);
	}
	assert_int_equal(send_one(l, "rc", 1200), LIMITER_ADMIT);
	/* A long pause refills up to the burst, not beyond. */
	for (int i = 0; i < 5; i++) {
		assert_int_equal(send_one(l, "rc", 100000), LIMITER_ADMIT);
	}
	assert_int_equal(send_one(l, "rc", 100000), LIMITER_RATE);
	assert_null(limiter_free(l));
}

static void
test_inflight_refusal_spends_no_token(void **state)
{
	struct limiter *l = new_limiter(1, 1, 2, 0);
	struct limiter_sender *held = NULL, *x = NULL;

	assert_int_equal(acquire(l, "rd", 0, &held), LIMITER_ADMIT);
	for (int i = 0; i < 10; i++) {
		assert_int_equal(acquire(l, "rd", 0, &x), LIMITER_INFLIGHT);
	}
	limiter_release(l, held, 0);
	/* The second token of the burst is still there. */
	assert_int_equal(send_one(l, "rd", 0), LIMITER_ADMIT);
	assert_int_equal(send_one(l, "rd", 0), LIMITER_RATE);
	assert_null(limiter_free(l));
}

static void
test_rate_off_forgets_sender_when_answered(void **state)
{
	struct limiter *l = new_limiter(4, 0, 0, 0);
	struct limiter_sender *s = NULL;

	assert_int_equal(acquire(l, "re", 0, &s), LIMITER_ADMIT);
	assert_int_equal(limiter_senders(l), 1);
	limiter_release(l, s, 0);
	assert_int_equal(limiter_senders(l), 0);
	assert_null(limiter_free(l));
}

static void
test_idle_sender_kept_until_bucket_full(void **state)
{
	/* 1000 per second, burst 10: an empty bucket is full again after 10 ms. */
	struct limiter *l = new_limiter(100, 1000, 10, 0);

	for (int i = 0; i < 10; i++) {
		assert_int_equal(send_one(l, "rf", 0), LIMITER_ADMIT);
	}
	assert_int_equal(send_one(l, "rf", 0), LIMITER_RATE);
	assert_int_equal(limiter_senders(l), 1);
	/* Still refilling at 9 ms: another sender's message does not make it forget "rf". */
	assert_int_equal(send_one(l, "rg", 9), LIMITER_ADMIT);
	assert_int_equal(limiter_inflight(l, "rf", 2), 0);
	assert_int_equal(limiter_senders(l), 2);
	/* 9 ms at 1000 per second gave it 9 tokens. */
	for (int i = 0; i < 9; i++) {
		assert_int_equal(send_one(l, "rf", 9), LIMITER_ADMIT);
	}
	assert_int_equal(send_one(l, "rf", 9), LIMITER_RATE);
	/* Full again long after: both are forgotten by later traffic. */
	assert_int_equal(send_one(l, "rh", 1000), LIMITER_ADMIT);
	assert_int_equal(limiter_senders(l), 1);
	assert_null(limiter_free(l));
}

static void
test_idle_senders_bounded_by_idle_max(void **state)
{
	struct limiter *l = new_limiter(10, 1, 1, 4);
	char key[16];

	/* Every sender spends its only token and then stays idle with an empty bucket. */
	for (int i = 0; i < 1000; i++) {
		(void) snprintf(key, sizeof(key), "r%d", i);
		assert_int_equal(send_one(l, key, 0), LIMITER_ADMIT);
		assert_true(limiter_senders(l) <= 5);
	}
	/* The most recent ones are still limited. */
	assert_int_equal(send_one(l, key, 0), LIMITER_RATE);
	assert_null(limiter_free(l));
}

static void
test_senders_with_messages_in_flight_are_never_forgotten(void **state)
{
	struct limiter *l = new_limiter(2, 1, 1, 1);
	struct limiter_sender *held[5000];
	char key[16];

	for (int i = 0; i < 5000; i++) {
		(void) snprintf(key, sizeof(key), "r%d", i);
		assert_int_equal(acquire(l, key, 0, &held[i]), LIMITER_ADMIT);
	}
	assert_int_equal(limiter_senders(l), 5000);
	for (int i = 0; i < 5000; i++) {
		(void) snprintf(key, sizeof(key), "r%d", i);
		assert_int_equal(limiter_inflight(l, key, strlen(key)), 1);
		/* Each bucket is empty: the second message is refused by the rate. */
		struct limiter_sender *x = NULL;
		assert_int_equal(acquire(l, key, 0, &x), LIMITER_RATE);
	}
	for (int i = 0; i < 5000; i++) {
		limiter_release(l, held[i], 0);
	}
	assert_true(limiter_senders(l) <= 2);
	assert_null(limiter_free(l));
}

static void
test_long_idle_time_does_not_overflow(void **state)
{
	struct limiter *l = new_limiter(10, 10000000, 20000000, 0);

	assert_int_equal(send_one(l, "ri", 0), LIMITER_ADMIT);
	assert_int_equal(send_one(l, "ri", UINT64_MAX / 2), LIMITER_ADMIT);
	assert_int_equal(send_one(l, "ri", UINT64_MAX - 1), LIMITER_ADMIT);
	assert_null(limiter_free(l));
}

static void
test_key_lengths(void **state)
{
	struct limiter *l = new_limiter(10, 0, 0, 0);
	struct limiter_sender *s = NULL;
	uint8_t key[LIMITER_KEY_MAX + 1];

	memset(key, 0xA5, sizeof(key));
	assert_int_equal(limiter_acquire(l, key, 0, 0, &s), -EINVAL);
	assert_int_equal(limiter_acquire(l, key, LIMITER_KEY_MAX + 1, 0, &s), -EINVAL);
	assert_null(s);
	assert_int_equal(limiter_acquire(l, key, LIMITER_KEY_MAX, 0, &s), LIMITER_ADMIT);
	assert_int_equal(limiter_inflight(l, key, LIMITER_KEY_MAX), 1);
	assert_int_equal(limiter_inflight(l, key, LIMITER_KEY_MAX + 1), 0);
	limiter_release(l, s, 0);
	assert_null(limiter_free(l));
}

static void
test_bad_options(void **state)
{
	struct limiter *l = NULL;
	const struct limiter_options no_inflight = {.max_inflight = 0};
	const struct limiter_options no_burst = {.max_inflight = 1, .rate = 5, .burst = 0};

	assert_int_equal(limiter_new(&no_inflight, &l), -EINVAL);
	assert_int_equal(limiter_new(&no_burst, &l), -EINVAL);
	assert_null(l);
	assert_null(limiter_free(NULL));
}

static void
test_set_options_applies_new_limits(void **state)
{
	struct limiter *l = new_limiter(2, 10, 4, 0);
	struct limiter_sender *a = NULL, *b = NULL, *x = NULL;

	assert_int_equal(acquire(l, "rd", 0, &a), LIMITER_ADMIT);
	assert_int_equal(acquire(l, "rd", 0, &b), LIMITER_ADMIT);
	assert_int_equal(acquire(l, "rd", 0, &x), LIMITER_INFLIGHT);
	/* A raised cap admits at once; bad options are refused and change nothing. */
	const struct limiter_options bad = {.max_inflight = 0};
	assert_int_equal(limiter_set_options(l, &bad), -EINVAL);
	assert_int_equal(acquire(l, "rd", 0, &x), LIMITER_INFLIGHT);
	const struct limiter_options wider = {.max_inflight = 3, .rate = 10, .burst = 1};
	assert_int_equal(limiter_set_options(l, &wider), 0);
	/* 2 tokens were left of 4; the new burst cuts them to 1. */
	assert_int_equal(acquire(l, "rd", 0, &x), LIMITER_ADMIT);
	struct limiter_sender *y = NULL;
	assert_int_equal(acquire(l, "rd", 0, &y), LIMITER_INFLIGHT);
	limiter_release(l, a, 0);
	assert_int_equal(acquire(l, "rd", 0, &y), LIMITER_RATE);
	limiter_release(l, b, 0);
	limiter_release(l, x, 0);
	/* After a long pause the bucket holds the new burst (1), not the old (4). */
	assert_int_equal(send_one(l, "rd", 100000), LIMITER_ADMIT);
	assert_int_equal(send_one(l, "rd", 100000), LIMITER_RATE);
	/* Rate off: only the in-flight cap is left. */
	const struct limiter_options off = {.max_inflight = 3};
	assert_int_equal(limiter_set_options(l, &off), 0);
	for (int i = 0; i < 10; i++) {
		assert_int_equal(send_one(l, "rd", 100001), LIMITER_ADMIT);
	}
	assert_null(limiter_free(l));
}

static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inflight_cap_refuses_then_readmits),
        cmocka_unit_test(test_senders_are_independent),
        cmocka_unit_test(test_bucket_allows_burst_then_refills_at_rate),
        cmocka_unit_test(test_inflight_refusal_spends_no_token),
        cmocka_unit_test(test_rate_off_forgets_sender_when_answered),
        cmocka_unit_test(test_idle_sender_kept_until_bucket_full),
        cmocka_unit_test(test_idle_senders_bounded_by_idle_max),
        cmocka_unit_test(test_senders_with_messages_in_flight_are_never_forgotten),
        cmocka_unit_test(test_long_idle_time_does_not_overflow),
        cmocka_unit_test(test_key_lengths),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_set_options_applies_new_limits),
};

int
main(void)
{
	return cmocka_run_group_tests(tests, NULL, NULL);
}
