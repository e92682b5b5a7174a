// Package broker is foreman's NATS protocol: subject names and headers, the Job record and
// its states, and the JetStream-backed Store that holds them.
//
// Layout (created or updated idempotently by Open):
//
//	stream FOREMAN_QUEUE      foreman.queue.<model-token>  work queue: a model's default jobs
//	                          foreman.queue.<model-token>.<load-opts>.<class>.<program-token>
//	                                                       the others (QueueKey, ADR-0027)
//	KV     FOREMAN_JOBS       job.<id>                     job records, re-published to foreman.job.<id>.state
//	object FOREMAN_ARTIFACTS  <id>/<name>                  results, artifacts, large request bodies
//	KV     FOREMAN_PRESENCE   boot.<boot-id>               running foreman processes (heartbeat, TTL)
//
// Storing a state and announcing it are one operation: the KV bucket re-publishes every
// write of job.<id> to foreman.job.<id>.state, so an event can never be lost between the two.
package broker
