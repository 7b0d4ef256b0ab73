/*
 * example: a complete libcoord program (docs/CLIENTS.md walks through it).
 *
 * Pushes one rally and one letter for a council, waits until the broker has answered both,
 * and prints each answer. Build it against an installed libcoord with
 *
 *     cc -o example example.c $(pkg-config --cflags --libs libcoord)
 *
 * and run it as: example [ENDPOINT [COUNCIL [OUTBOX_DIR]]]
 * (defaults: tcp://127.0.0.1:7701, fr, ./outbox-fr). With COORD_SERVER_KEY (the broker's
 * public key, Z85 or its .public file) and COORD_KEY (this council's NAME.secret from
 * `coordctl keygen NAME`) set, it connects with CURVE. Exit status 0 when every record was
 * ACCEPTED or DUPLICATE, 1 when one was REJECTED, 2 when the broker did not answer within
 * 30 seconds (the records stay in the outbox; run again to send them).
 */
#include <stdio.h>
#include <stdlib.h>

#include <coord.h>

/* Runs on libcoord's sender thread; `userdata` is ours. */
static void
on_ack(void *userdata, const struct coord_ack *ack)
{
	int *rejected = userdata;

	printf("%s revision %u: %s", ack->msg_id, ack->revision, coord_status_name(ack->status));
	if (ack->seq != 0) {
		printf(" (seq %llu)", (unsigned long long) ack->seq);
	}
	if (ack->status == COORD_STATUS_REJECTED) {
		printf(": %s: %s", coord_reason_name(ack->reason), ack->message);
		(*rejected)++;
	}
	printf("\n");
	fflush(stdout);
}

/* Build one record from text fields and queue it in the outbox. */
static int
push_record(struct coord_client *client, const char *council, const char *category,
            const struct coord_field *fields, size_t n)
{
	struct coord_envelope env;
	struct coord_error err;
	int r = coord_envelope_build(council, category, fields, n, 0, &env, &err);

	if (r < 0) {
		fprintf(stderr, "%s: %s: %s\n", category, err.field, err.message);
		return r;
	}
	r = coord_push(client, env.bytes, env.len);
	if (r < 0) {
		fprintf(stderr, "push %s: %s\n", env.msg_id, coord_strerror(r));
	} else {
		printf("queued %s %s\n", category, env.msg_id);
	}
	coord_envelope_done(&env);
	return r;
}

int
main(int argc, char **argv)
{
	const char *endpoint = argc > 1 ? argv[1] : COORD_ENDPOINT_DEFAULT;
	const char *council = argc > 2 ? argv[2] : "fr";
	const char *outbox = argc > 3 ? argv[3] : "./outbox-fr";
	int rejected = 0;

	struct coord_options opts;
	coord_options_init(&opts);
	opts.endpoint = endpoint;
	opts.council = council;
	opts.outbox_path = outbox;
	opts.on_ack = on_ack;
	opts.userdata = &rejected;

	/* CURVE, for a broker that requires keys: both variables or neither. */
	struct coord_keys keys = {.server_key = ""};
	const char *server_key = getenv("COORD_SERVER_KEY"), *key_file = getenv("COORD_KEY");
	if (server_key != NULL || key_file != NULL) {
		struct coord_error err;
		if (coord_keys_load(server_key, key_file, &keys, &err) < 0) {
			fprintf(stderr, "%s: %s\n", err.field, err.message);
			return 2;
		}
		opts.curve_server_key = keys.server_key;
		opts.curve_public_key = keys.public_key;
		opts.curve_secret_key = keys.secret_key;
	}

	struct coord_client *client;
	int r = coord_client_new(&opts, &client);
	coord_keys_done(&keys); /* the client keeps its own copy */
	if (r < 0) {
		fprintf(stderr, "cannot open the outbox %s: %s\n", outbox, coord_strerror(r));
		return 2;
	}

	const struct coord_field rally[] = {
	        {"kind", "rally"},
	        {"country", "FR"},
	        {"city", "Paris"},
	        {"date", "2020-10-04"},
	        {"title", "Rally for recognition"},
	        {"participants", "2500"},
	        {"languages", "fr, hy"},
	};
	const struct coord_field letter[] = {
	        {"recipient_kind", "parliament"},
	        {"recipient", "Assemblée nationale"},
	        {"recipient_country", "FR"},
	        {"language", "fr"},
	        {"subject", "Appeal for recognition"},
	        {"sent_at", "2020-10-05"},
	        {"channel", "post"},
	};
	int status = 0;
	if (push_record(client, council, "event", rally, sizeof(rally) / sizeof(rally[0])) < 0 ||
	    push_record(client, council, "letter", letter, sizeof(letter) / sizeof(letter[0])) <
	            0) {
		status = 1;
	}

	/* Wait for the answers. Whatever is not answered stays in the outbox for next time. */
	r = coord_flush(client, 30000);
	if (r < 0) {
		fprintf(stderr, "not all records answered: %s\n", coord_strerror(r));
		status = 2;
	}
	client = coord_client_free(client);
	if (status == 0 && rejected > 0) {
		status = 1;
	}
	return status;
}
