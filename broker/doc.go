// Package broker is foreman's NATS protocol and the only package of foreman that speaks
// NATS: subject names and headers, the Job record and its states, and the JetStream-backed
// Store that holds them. Every other package reads and writes job traffic through its
// typed API:
//
//   - a running job's answer (ADR-0018): StreamWriter publishes it on
//     foreman.job.<id>.stream (Foreman-Seq, Foreman-Content-Type on the first frame, frames
//     larger than a message in pieces, the final marker Foreman-Final done|failed|canceled
//     with Foreman-Error and Foreman-Status); JobFeed reads it together with the job's
//     state events as typed Events (frame, final with nil or a *JobError, state, gap);
//     a StreamWriter hands its messages to the JobFeeds of its own Store directly, ahead
//     of NATS (ADR-0035); for a sync caller on another foreman it holds them until that
//     foreman's JobFeed answers a ping on foreman.job.<id>.ping (AwaitReader, ADR-0072),
//     and sends its messages again to a feed that lost some and asks on
//     foreman.job.<id>.resend (ADR-0078);
//   - the queue: Lease is a queue message the worker took; OnQueued wakes an idle
//     worker with the published message (a submit of the same Store announces it before
//     it publishes, ADR-0034); OnDeliveryLimit reports the messages JetStream gives up on;
//   - a job's state changes: OnJobChange, WatchJob;
//   - NATS clients' submits (ServeSubmit, answering inboxes only) and the webhook
//     dispatcher's change consumer (ConsumeChanges) and redelivery (Redeliver,
//     ServeRedeliver).
//
// Layout (created or updated idempotently by Open):
//
//	stream FOREMAN_QUEUE      foreman.queue.<model-token>  work queue: a model's default jobs
//	                          foreman.queue.<model-token>.<load-opts>.<class>.<program-token>
//	                                                       the others (QueueKey, ADR-0027)
//	KV     FOREMAN_JOBS       job.<id>                     job records (with small results, ADR-0033), re-published to foreman.job.<id>.state
//	object FOREMAN_ARTIFACTS  <id>/<name>                  large results, artifacts, large request bodies
//	KV     FOREMAN_PRESENCE   boot.<boot-id>               running foreman processes (heartbeat, TTL)
//
// and on first use:
//
//	KV     FOREMAN_TARGETS       target.<name>   each target's inventory, for the other foremen (TTL: polls, aged on the server's clock, ADR-0029, ADR-0056)
//	KV     FOREMAN_KNOWN_MODELS  target.<name>   each target's last polled model list, kept across restarts (TTL: job TTL, ADR-0047)
//
// Storing a state and announcing it are one operation: the KV bucket re-publishes every
// write of job.<id> to foreman.job.<id>.state, so an event can never be lost between the two.
package broker
